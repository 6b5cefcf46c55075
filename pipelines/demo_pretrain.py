"""`make demo-pretrain`: pretrain, then fine-tune (MMT sec. 4.2, support-set appendix 6.3), on demo data.

1. generate the demo videos and a narrated set in HowTo100M's own files (`NarratedCfg`: videos
that chain demo scenes, one timed ASR-like caption per scene), read by the real `howto100m`
adapter; 2. extract only the experts pretraining uses (MMT: motion + audio, plus object, which alone
carries the photo that the captions name when the weights are random; support-set: action + object)
from both, RANDOM weights and the settings of `make demo` (whose stores are reused), the narrated
set's object frames at `NARRATED_OBJECT_FPS`; 3. pretrain MMT (window sampling) and the
support-set model (segment sampling) on the narrated set with two torchrun processes; 4. for both
models, evaluate the pretrained run on the demo test split (zero-shot), train from scratch on the
demo, and fine-tune the pretrained run on it (--init-from); print the three rows and chart them.
Each stage reuses what an earlier run finished; a run trained with other settings than its config's
now, or fine-tuned from a pretrained run trained again since, is moved to RUN.old and trained again.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from extract.presets import dataset_settings
from extract.run import exit_cli, main as extract_main
from pipelines.demo import ensure_demo_data, ensure_generated, set_aside_stale
from shared.config import (DATA_ROOT_HELP, FEATURES_ROOT_HELP, ConfigError, data_root_default, features_root_default,
                           parse_overrides)
from shared.datasets import load_manifest
from shared.datasets.demo import NARRATED_FILE, DemoCfg, NarratedCfg, generate_narrated
from shared.files import atomic_write_text
from train.checkpoints import FINAL
from train.evaluate import evaluate_run
from train.main import CONFIG_DIR
from train.main import main as train_main
from train.metrics import format_results

__all__ = ['main', 'MODELS', 'EXPERTS', 'ROWS']

#: the models pretrained, with the sampling of their pretraining configs
MODELS = {'mmt': 'window', 'ssb': 'segment'}
#: every expert the two pretraining configs read (MMT: object + motion + audio; support-set: action + object)
EXPERTS = ('action', 'audio', 'object')
ROWS = ('zero-shot', 'from scratch', 'pretrained + fine-tuned')
#: the narrated set's object frames: one each 2 s, not 1 s. A scene (3-6 s) shows one photo, so every
#: scene keeps a frame, and the SENet-154 forward passes that most of the extraction time goes to halve
NARRATED_OBJECT_FPS = 0.5
_REPO = Path(__file__).resolve().parents[1]


def _extract(dataset: str, data_root: Path, features_root: Path, extra: tuple[str, ...] = ()) -> int:
    """`EXPERTS` of `dataset`, at the demo's lighter settings (the narrated set's scenes are demo
    scenes: the same inputs give features a model can carry from one set to the other), then `extra`
    settings (KEY=VALUE). The demo's settings are those of `make demo`, so its stores are reused."""
    settings = [f'{k}={json.dumps(v)}' for k, v in dataset_settings('demo', data_root).items()
                if k.split('.')[0] in EXPERTS] + list(extra)
    return extract_main(['--dataset', dataset, '--expert', ','.join(EXPERTS), '--weights', 'random',
                         '--data-root', str(data_root), '--features-root', str(features_root),
                         *(a for s in settings for a in ('--set', s))])


def _pretrain(model: str, data_root: Path, features_root: Path, run: Path, processes: int, settings: list[str]) -> int:
    """Pretrain `model` with torchrun's `processes` (gloo on a CPU); rank 0 writes the run."""
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc-per-node', str(processes),
           '-m', 'train', '--config', str(CONFIG_DIR / f'{model}_demo_pretrain.yaml'), '--data-root', str(data_root),
           '--features-root', str(features_root), '--run-dir', str(run), '--no-progress',
           *(a for s in settings for a in ('--set', s))]
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join(filter(None, [str(_REPO), os.environ.get('PYTHONPATH')])),
           'OMP_NUM_THREADS': os.environ.get('OMP_NUM_THREADS', '1')}  # one thread a process: no oversubscription
    print('  ' + ' '.join(cmd[1:]))
    return subprocess.run(cmd, env=env, check=False).returncode


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Torch on one intra-op thread while the block runs, then as before. The demo's models are so
    small that a step is hundreds of tiny ops: a second thread only adds a wait at each op for its
    partner, and when other processes share the cores that partner is often descheduled (measured
    on the 2-core machine at load 15-20: 6 support-set epochs took 78 CPU seconds on two threads
    and 10 on one, and the wall time followed)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _Stopped(Exception):
    """A fine-tuning run ended with exit code `args[0]` (1, or 130 for Ctrl-C); it said why itself."""


def _finetune(model: str, data_root: Path, features_root: Path, run: Path, init: Path | None,
              settings: list[str]) -> dict:
    """Train `model` on the demo from scratch, or from `init`; its test metrics (reused when done)."""
    metrics = run / 'seed0' / 'test_metrics.json'
    config = CONFIG_DIR / f'{model}_demo_finetune.yaml'
    set_aside_stale(run, config, '[4/5 evaluate]',
                    {**parse_overrides(settings), **({'train.init_from': str(init)} if init is not None else {})})
    if not metrics.is_file():
        code = train_main(['--config', str(config), '--data-root', str(data_root),
                           '--features-root', str(features_root), '--run-dir', str(run), '--no-progress',
                           *(['--init-from', str(init)] if init is not None else []),
                           *(a for s in settings for a in ('--set', s))])
        if code:
            raise _Stopped(code)
    return json.loads(metrics.read_text())


def _chart(results: dict[str, dict[str, dict]], chance: float, out: Path) -> None:
    """t2v R@1 of the three rows per model, with chance as a line."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(8, 3.4))
    x = np.arange(len(results))
    width = 0.8 / len(ROWS)
    for k, row in enumerate(ROWS):
        values = [results[m][row]['t2v']['R1'] for m in results]
        bars = ax.bar(x + (k - (len(ROWS) - 1) / 2) * width, values, width, label=row)
        ax.bar_label(bars, fmt='%.1f', fontsize=7)
    ax.axhline(chance, color='grey', linestyle='--', linewidth=1, label=f'chance ({chance:.1f})')
    ax.set_xticks(x, [m.upper() for m in results])
    ax.set_ylabel('demo test t2v R@1 (%)')
    ax.set_title('Narrated pretraining, then fine-tuning on the demo')
    ax.set_ylim(0, max(chance, *(r[row]['t2v']['R1'] for r in results.values() for row in ROWS)) * 1.15 + 1)
    ax.legend(fontsize=8, loc='upper left', bbox_to_anchor=(1.01, 1.0))  # beside the bars, never over them
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


EXAMPLES = '''examples:
  python -m pipelines.demo_pretrain
  make demo-pretrain                   # the same, through the Makefile (its DATA_ROOT, FEATURES_ROOT)
  python -m pipelines.demo_pretrain --data-root /tmp/demo/data --features-root /tmp/demo/features \\
      --runs /tmp/demo/runs --report /tmp/demo/report'''


def main(argv: list[str] | None = None) -> int:
    d, n = DemoCfg(), NarratedCfg()
    parser = argparse.ArgumentParser(prog='python -m pipelines.demo_pretrain', description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES)
    parser.add_argument('--data-root', type=Path, default=data_root_default(),
                        help=f'data root: demo/ and narrated/howto100m/ are generated there (default: {DATA_ROOT_HELP})')
    parser.add_argument('--features-root', type=Path, default=features_root_default(),
                        help=f'stores: demo/ and narrated/howto100m/ (default: {FEATURES_ROOT_HELP})')
    parser.add_argument('--runs', type=Path, default=Path('runs/demo_pretrain'),
                        help='run directories (default: runs/demo_pretrain)')
    parser.add_argument('--report', type=Path, default=Path('reports/demo_pretrain'),
                        help='report directory (default: reports/demo_pretrain)')
    parser.add_argument('--videos', type=int, default=d.videos, help=f'demo videos (default: {d.videos})')
    parser.add_argument('--narrated-videos', type=int, default=n.videos, help=f'narrated videos (default: {n.videos})')
    parser.add_argument('--seed', type=int, default=d.seed, help=f'seed of both generated sets (default: {d.seed})')
    parser.add_argument('--processes', type=int, default=2, help='torchrun processes for pretraining (default: 2)')
    parser.add_argument('--set', dest='settings', action='append', default=[], metavar='KEY=VALUE',
                        help='a setting of every training run, e.g. train.epochs=2 (tests)')
    parser.add_argument('--narrated-seconds', type=float, nargs=2, default=(n.min_duration, n.max_duration),
                        metavar=('MIN', 'MAX'), help='narrated video durations (default: %(default)s)')
    args = parser.parse_args(argv)
    try:  # a malformed --set: one line now, not a traceback where a stage first reads it
        parse_overrides(args.settings)
    except ConfigError as err:
        parser.error(str(err))
    t0 = time.time()
    try:
        narrated_cfg = NarratedCfg(args.narrated_videos, args.seed, *args.narrated_seconds)
    except ValueError as err:
        parser.error(str(err))
    # the narrated set is dataset howto100m under a root of its own: never mixed with a real download
    narrated_data, narrated_features = args.data_root / 'narrated', args.features_root / 'narrated'
    pre_runs = {m: args.runs / f'{m}_pretrain' for m in MODELS}
    ensure_demo_data(args.data_root, DemoCfg(videos=args.videos, seed=args.seed),
                     derived=(args.features_root / 'demo', args.runs), step='[1/5 data]')
    ensure_generated(narrated_data / 'howto100m', NARRATED_FILE, narrated_cfg, generate_narrated,
                     (narrated_features, args.runs), '[1/5 data]')
    print(load_manifest('howto100m', narrated_data, captions='raw_caption.json').describe())

    print(f'[2/5 extract] {", ".join(EXPERTS)} of the demo and of the narrated set; RANDOM weights')
    for dataset, data_root, features_root, extra in (
            ('demo', args.data_root, args.features_root, ()),
            ('howto100m', narrated_data, narrated_features, (f'object.fps={NARRATED_OBJECT_FPS}',))):
        code = _extract(dataset, data_root, features_root, extra)
        if code:
            return code

    for model, sample in MODELS.items():
        run = pre_runs[model]
        set_aside_stale(run, CONFIG_DIR / f'{model}_demo_pretrain.yaml', '[3/5 pretrain]',
                        parse_overrides(args.settings))
        if (run / 'seed0' / FINAL).is_file():  # a run of a split without a test part records its end there
            print(f'[3/5 pretrain] reusing {run}')
            continue
        print(f'[3/5 pretrain] {model} on the narrated set ({sample} sampling), {args.processes} torchrun processes')
        code = _pretrain(model, narrated_data, narrated_features, run, args.processes, args.settings)
        if code:
            return code

    manifest = load_manifest('demo', args.data_root)
    results: dict[str, dict[str, dict]] = {}
    for model in MODELS:
        source = pre_runs[model] / 'seed0'
        print(f'[4/5 evaluate] {model}: zero-shot on the demo test split, from scratch, pretrained + fine-tuned')
        with _one_thread():
            try:
                results[model] = {
                    ROWS[0]: evaluate_run(source, manifest, 'official', 'test', args.features_root, args.data_root,
                                          torch.device('cpu')),
                    ROWS[1]: _finetune(model, args.data_root, args.features_root, args.runs / f'{model}_scratch',
                                       None, args.settings),
                    ROWS[2]: _finetune(model, args.data_root, args.features_root, args.runs / f'{model}_finetuned',
                                       source, args.settings),
                }
            except _Stopped as stopped:
                return stopped.args[0]
    chance = 100.0 / len(manifest.split('official').test)
    table = format_results({f'{m} {row}': [r] for m, rows in results.items() for row, r in rows.items()},
                           keys=('R1', 'R5', 'R10', 'MdR'))
    print(f'[5/5 report] demo test split ({len(manifest.split("official").test)} videos, R@1 by chance {chance:.1f}); '
          'RANDOM-weight experts: the rows compare where the weights start, not the papers\' numbers')
    print(table)
    args.report.mkdir(parents=True, exist_ok=True)
    _chart(results, chance, args.report / 'pretrain.png')
    elapsed = time.time() - t0
    atomic_write_text(
        args.report / 'results.md',
        '# Narrated pretraining, then fine-tuning, on the demo\n\n'
        f'Pretrained on {narrated_cfg.videos} narrated videos in HowTo100M\'s files ({narrated_data / "howto100m"}), '
        f'two torchrun processes; evaluated on the demo test split ({len(manifest.split("official").test)} videos; '
        f'R@1 by chance {chance:.1f}). Experts {", ".join(EXPERTS)} with RANDOM weights.\n\n{table}\n\n'
        '![t2v R@1](pretrain.png)\n\n'
        f'Narrated set: {json.dumps(dataclasses.asdict(narrated_cfg))}\n\nFinished in {elapsed:.0f} s.\n')
    print(f'report: {args.report} (results.md, pretrain.png)')
    print(f'demo-pretrain finished in {elapsed:.0f} s')
    return 0


if __name__ == '__main__':
    exit_cli(main())  # a second Ctrl-C in its extraction: see exit_cli
