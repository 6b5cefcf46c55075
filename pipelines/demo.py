"""`make demo`: the project's main job on its embedded demo data, stage by stage.

Each stage reuses what an earlier run finished, so a rerun only does what is left.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from shared.config import data_root_default, features_root_default
from shared.datasets import load_manifest
from shared.datasets.demo import MANIFEST_FILE, DemoCfg, generate

__all__ = ['main', 'ensure_demo_data']


def ensure_demo_data(data_root: Path, cfg: DemoCfg) -> Path:
    """Generate the demo dataset under ``data_root/demo`` unless the same one is already there."""
    out = data_root / 'demo'
    manifest = out / MANIFEST_FILE
    if manifest.is_file():
        try:
            old = json.loads(manifest.read_text(encoding='utf-8')).get('config', {})
        except json.JSONDecodeError:
            old = {}
        if old == json.loads(json.dumps(dataclasses.asdict(cfg))):
            print(f'[data] reusing {out} ({cfg.videos} videos, seed {cfg.seed})')
            return out
    print(f'[data] generating {cfg.videos} demo videos in {out}')
    generate(out, cfg)
    return out


def main(argv: list[str] | None = None) -> int:
    d = DemoCfg()
    parser = argparse.ArgumentParser(prog='python -m pipelines.demo', description=__doc__.split('\n\n')[0])
    parser.add_argument('--data-root', type=Path, default=data_root_default())
    parser.add_argument('--features-root', type=Path, default=features_root_default())
    parser.add_argument('--videos', type=int, default=d.videos)
    parser.add_argument('--seed', type=int, default=d.seed)
    args = parser.parse_args(argv)
    t0 = time.time()
    ensure_demo_data(args.data_root, DemoCfg(videos=args.videos, seed=args.seed))
    manifest = load_manifest('demo', args.data_root)
    print(manifest.describe())
    print(f'demo finished in {time.time() - t0:.0f} s')
    return 0


if __name__ == '__main__':
    sys.exit(main())
