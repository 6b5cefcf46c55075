"""Video captioning with the support-set model's T5 decoder (support-set eq. 2, appendix 6.4, Tables 7-9).

`python -m train.caption` captions every video of a dataset split part with a finished support-set
run: the decoder is conditioned on the video's own per-second features (identity support), and
decodes greedily or with beam search. The captions are scored against all reference captions of
each video (`train.caption_metrics`: BLEU-1..4, METEOR, ROUGE-L, CIDEr, x 100) and written beside
the run as captions/DATASET_SPLIT_PART_{greedy,beamN}.json:

    python -m train.caption --run runs/demo/ssb
    python -m train.caption --run runs/ssb-msrvtt-full --dataset msrvtt --split full --beam 5
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shared.config import ConfigError
from shared.datasets import Manifest
from shared.device import pick_device
from shared.files import atomic_write_text
from shared.logs import setup_logging
from train.caption_metrics import METRICS, caption_metrics
from train.captions import CaptionEncoder
from train.data import SplitData, split_captions
from train.evaluate import USER_ERRORS, add_target_args, file_stem, resolve_target, run_split
from train.models.base import RetrievalModel

__all__ = ['generate_captions', 'caption_run', 'caption_path', 'format_captions', 'main']


@torch.no_grad()
def generate_captions(model: RetrievalModel, data: SplitData, encoder: CaptionEncoder, device: torch.device,
                      beam: int = 1, max_tokens: int = 20, batch: int = 64) -> list[str]:
    """A caption for each video of `data`, in its order.

    Raises:
        ConfigError: the model has no caption decoder (only the support-set model has one).
    """
    if not hasattr(model, 'caption'):
        raise ConfigError(f'{type(model).__name__} has no caption decoder: only support-set runs (model ssb) caption')
    model.eval()
    out = []
    for videos in data.video_batches(batch):
        ids = model.caption({k: v.to(device) for k, v in videos.items()}, beam=beam, max_tokens=max_tokens)
        out += [encoder.decode(row[1:]) for row in ids.tolist()]  # row[0]: the decoder's start token
    return out


def _references(manifest: Manifest, split: str, part: str) -> dict[str, list[str]]:
    """Every reference caption of each video of the part (all of them, not the retrieval queries)."""
    ids, texts, owner, _ = split_captions(manifest, split, part, test_queries=False)
    refs: dict[str, list[str]] = {v: [] for v in ids}
    for text, v in zip(texts, np.asarray(owner).tolist()):
        refs[ids[v]].append(text)
    return refs


def caption_run(run: Path, manifest: Manifest, split: str, part: str, features_root: Path, data_root: Path,
                device: torch.device, beam: int = 1) -> dict[str, Any]:
    """Caption `manifest`'s `split`/`part` with the finished run `run`, score the captions and write
    them with their scores to run/captions/DATASET_SPLIT_PART_{greedy,beamN}.json.

    Returns:
        the written record: checkpoint, decoding, metrics, unavailable metrics (with why),
        captions {video: caption} and references {video: [captions]}.

    Raises:
        ConfigError: not a finished support-set run; StoreError: the dataset lacks a store of its experts.
    """
    loaded, encoder, data = run_split(run, manifest, split, part, features_root, data_root, device)
    texts = generate_captions(loaded.model, data, encoder, device, beam, loaded.cfg.data.max_words)
    captions = dict(zip(data.video_ids, texts))
    references = _references(manifest, split, part)
    metrics, unavailable = caption_metrics(captions, references)
    decoding = 'greedy' if beam == 1 else f'beam{beam}'
    record = {'run': str(run), 'checkpoint': loaded.checkpoint.name, 'dataset': manifest.name, 'split': split,
              'part': part, 'decoding': decoding, 'metrics': metrics, 'unavailable': unavailable,
              'captions': captions, 'references': references}
    path = caption_path(run, record)
    path.parent.mkdir(exist_ok=True)
    atomic_write_text(path, json.dumps(record, indent=1))
    return record


def caption_path(run: Path, record: dict[str, Any]) -> Path:
    """Where `caption_run` writes `record`: run/captions/DATASET_SPLIT_PART_{greedy,beamN}.json."""
    stem = file_stem(record['dataset'], record['split'], record['part'])
    return run / 'captions' / f'{stem}_{record["decoding"]}.json'


def format_captions(record: dict[str, Any], examples: int = 3) -> str:
    """The record's metrics as a table row, the unavailable ones with why, and the first `examples`
    videos' captions beside their references."""
    shown = [k for k in METRICS if k in record['metrics']]
    lines = ['| ' + ' | '.join(shown) + ' |', '|' + '---|' * len(shown),
             '| ' + ' | '.join(f'{record["metrics"][k]:.1f}' for k in shown) + ' |']
    lines += [f'{k} unavailable: {why}' for k, why in record['unavailable'].items()]
    for vid in list(record['captions'])[:examples]:
        lines.append(f'- {vid}: "{record["captions"][vid]}"; references: '
                     + ' | '.join(f'"{r}"' for r in record['references'][vid]))
    return '\n'.join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog='python -m train.caption', description=__doc__.split('\n\n')[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split('\n\n', 2)[2])
    add_target_args(p)
    p.add_argument('--beam', type=int, default=1, help='beam width (default: 1, greedy decoding)')
    args = p.parse_args(argv)
    if args.beam < 1:
        p.error(f'--beam must be at least 1 (1: greedy decoding), got {args.beam}')
    setup_logging()
    try:
        seeds, manifest, split = resolve_target(args)
        device = torch.device(pick_device(args.device))
        for run in seeds:
            print(f'captioning {manifest.name} {split}/{args.part} with {run} ({device}, '
                  f'{"greedy" if args.beam == 1 else f"beam {args.beam}"})')
            record = caption_run(run, manifest, split, args.part, args.features_root, args.data_root, device, args.beam)
            print(format_captions(record))
            print(f'-> {caption_path(run, record)}')  # where the captions are, as `python -m train` says
        return 0
    except USER_ERRORS as err:
        print(f'error: {err}', file=sys.stderr)
        return 1


if __name__ == '__main__':
    sys.exit(main())
