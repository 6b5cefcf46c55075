"""Evaluation with the split's protocol: videos and query captions embedded in batches, scored a
block of queries at a time, ranked by `train.metrics`.

`python -m train.evaluate` evaluates a finished run on any dataset's split without training: the
zero-shot transfer of MMT Table 1 and support-set Table 10. It prints the protocol's table and
writes it into the run directory as eval/DATASET_SPLIT_PART.{md,json} (the run's own results stay
as they are):

    python -m train.evaluate --run runs/mmt-howto100m-pretrain --dataset msrvtt --split 1k-A --stop-words remove
    python -m train.evaluate --run runs/ce-demo-official --part val
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from pathlib import Path

import numpy as np
import torch

from shared.config import DATA_ROOT_HELP, FEATURES_ROOT_HELP, ConfigError, data_root_default, features_root_default
from shared.datasets import DatasetError, Manifest, load_manifest
from shared.device import DEVICE_HELP, pick_device
from shared.files import atomic_write_text
from shared.logs import setup_logging
from shared.store import StoreError, is_store, store_path
from train.captions import CaptionEncoder, build_caption_encoder
from train.config import saved_run_cfg
from train.data import SplitData, load_split
from train.metrics import format_results, retrieval_metrics
from train.models.base import RetrievalModel, TextEmbedding, VideoEmbedding
from train.runs import LoadedRun, load_run, run_seeds

#: the errors a user's input causes: the commands that read a finished run print them as one line
USER_ERRORS = (ConfigError, DatasetError, StoreError, FileNotFoundError, ValueError)

__all__ = ['USER_ERRORS', 'embed_videos', 'embed_texts', 'evaluate', 'evaluate_run', 'run_split', 'add_target_args',
           'resolve_target', 'file_stem', 'main']


@torch.no_grad()
def embed_videos(model: RetrievalModel, data: SplitData, device: torch.device, batch: int = 256) -> VideoEmbedding:
    parts = [model.encode_video({k: v.to(device) for k, v in videos.items()}) for videos in data.video_batches(batch)]
    return VideoEmbedding(torch.cat([p.emb for p in parts]), torch.cat([p.available for p in parts]))


@torch.no_grad()
def embed_texts(model: RetrievalModel, data: SplitData, captions: np.ndarray, device: torch.device,
                batch: int = 512) -> TextEmbedding:
    parts = [model.encode_text(data.captions.batch(captions[s:s + batch]).to(device))
             for s in range(0, len(captions), batch)]
    return TextEmbedding(torch.cat([p.emb for p in parts]), torch.cat([p.weights for p in parts]))


class _Scores:
    """The [queries x videos] similarity, scored a block of queries at a time (bounded memory)."""

    def __init__(self, model: RetrievalModel, text: TextEmbedding, video: VideoEmbedding) -> None:
        self.model, self.text, self.video = model, text, video
        self.shape = (text.emb.shape[0], video.emb.shape[0])

    def __getitem__(self, rows: slice) -> torch.Tensor:
        t = TextEmbedding(self.text.emb[rows], self.text.weights[rows])
        return self.model.similarity(t, self.video).float()


@torch.no_grad()
def evaluate(model: RetrievalModel, data: SplitData, device: torch.device,
             video: VideoEmbedding | None = None) -> dict[str, dict[str, float]]:
    """The split part's protocol: its query captions against all its videos (embedded here unless given)."""
    model.eval()
    video = video if video is not None else embed_videos(model, data, device)
    text = embed_texts(model, data, data.query, device)
    return retrieval_metrics(_Scores(model, text, video), data.caption_video[data.query], chunk_size=1024)


def file_stem(dataset: str, split: str, part: str) -> str:
    """eval/ file name of a dataset split part (``folder:PATH`` datasets hold slashes)."""
    return re.sub(r'[^A-Za-z0-9._-]+', '_', f'{dataset}_{split}_{part}')


def _eval_stem(dataset: str, split: str, part: str, stop_words: str | None, own: str) -> str:
    """eval/ file name of an evaluation; with the stop-words setting other than the run's `own`,
    one of its own beside the run's."""
    return file_stem(dataset, split, part) + (f'_stop_words-{stop_words}' if stop_words not in (None, own) else '')


def run_split(run: Path, manifest: Manifest, split: str, part: str, features_root: Path, data_root: Path,
              device: torch.device, test_queries: bool = True,
              stop_words: str | None = None) -> tuple[LoadedRun, CaptionEncoder, SplitData]:
    """A finished run's tested checkpoint, its own caption encoder, and `manifest`'s `split`/`part`
    read for it (`test_queries`: as `train.data.load_split`). `stop_words`: keep or remove them from
    the captions in place of the run's own ``data.stop_words`` (MMT Table 1 evaluates one pretrained
    model both ways).

    Raises:
        ConfigError: not a finished run; StoreError: the dataset lacks a store of the run's experts.
    """
    loaded = load_run(run, device)
    cfg = loaded.cfg
    missing = [e.name for e in cfg.model.experts if not is_store(store_path(features_root, manifest.name, e.name))]
    if missing:  # all of them in one line: another dataset often lacks several
        raise StoreError(f'{manifest.name} has no store of {", ".join(missing)} in {features_root / manifest.name} '
                         f'(the run {run} reads them): extract them first: python -m extract --dataset '
                         f'{manifest.name} --expert {",".join(missing)}')
    if stop_words is not None:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, stop_words=stop_words))
    captions = build_caption_encoder(cfg.model.text, cfg.data, data_root, run, None)
    return loaded, captions, load_split(manifest, split, part, features_root, cfg.model.experts, captions, test_queries)


def evaluate_run(run: Path, manifest: Manifest, split: str, part: str, features_root: Path, data_root: Path,
                 device: torch.device, stop_words: str | None = None) -> dict[str, dict[str, float]]:
    """A finished run's tested checkpoint on `manifest`'s `split`/`part`, with the run's own caption
    encoder; the metrics are written to run/eval/DATASET_SPLIT_PART.{json,md}, or with `stop_words`
    other than the run's own (`run_split`) to DATASET_SPLIT_PART_stop_words-SETTING.*.

    Raises:
        ConfigError: not a finished run; StoreError: the dataset lacks a store of the run's experts.
    """
    loaded, _, data = run_split(run, manifest, split, part, features_root, data_root, device, stop_words=stop_words)
    cfg = loaded.cfg
    stem = _eval_stem(manifest.name, split, part, stop_words, cfg.data.stop_words)
    result = evaluate(loaded.model, data, device)
    out = run / 'eval'
    out.mkdir(exist_ok=True)
    atomic_write_text(out / f'{stem}.json', json.dumps(result, indent=1))
    atomic_write_text(out / f'{stem}.md', f'# {cfg.model.model} trained on {cfg.data.dataset} ({cfg.data.split}), '
                      f'evaluated on {manifest.name} {split}/{part}\n\nCheckpoint: {loaded.checkpoint.name}\n\n'
                      + format_results({cfg.model.model: [result]}) + '\n')
    return result


def add_target_args(p: argparse.ArgumentParser) -> None:
    """The options naming a finished run and the dataset split part to read for it."""
    p.add_argument('--run', type=Path, required=True, help='a finished run directory (runs/MODEL-DATASET-SPLIT[/seedN]); '
                   'every seed of it is read')
    p.add_argument('--dataset', help="a registered dataset or folder:PATH (default: the run's)")
    p.add_argument('--split', help="the dataset's split (default: the run's, on its own dataset)")
    p.add_argument('--part', default='test', choices=('train', 'val', 'test'), help='default: test')
    p.add_argument('--stop-words', choices=('keep', 'remove'), default=None,
                   help="keep or remove HowTo100M's stop words from the captions (default: as the run was trained)")
    p.add_argument('--data-root', type=Path, default=data_root_default(),
                   help=f'dataset folders (default: {DATA_ROOT_HELP})')
    p.add_argument('--features-root', type=Path, default=features_root_default(),
                   help=f'expert stores (default: {FEATURES_ROOT_HELP})')
    p.add_argument('--device', default='auto', help=DEVICE_HELP)


def resolve_target(args: argparse.Namespace) -> tuple[list[Path], Manifest, str]:
    """(the run's seed directories, the dataset's manifest, the split) of `add_target_args`' options.

    Raises:
        ConfigError, DatasetError: not a run, an unknown dataset or split (one line, before any model loads).
    """
    seeds = run_seeds(args.run)
    own = saved_run_cfg(seeds[0]).data
    dataset = args.dataset if args.dataset is not None else own.dataset
    manifest = load_manifest(dataset, args.data_root, **(own.dataset_options if dataset == own.dataset else {}))
    split = args.split or (own.split if dataset == own.dataset else _only_split(manifest))
    manifest.split(split)
    return seeds, manifest, split


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog='python -m train.evaluate', description=__doc__.split('\n\n')[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split('\n\n', 2)[2])
    add_target_args(p)
    args = p.parse_args(argv)
    setup_logging()
    try:
        seeds, manifest, split = resolve_target(args)
        own = saved_run_cfg(seeds[0]).data
        device = torch.device(pick_device(args.device))
        results, written = [], []
        stem = _eval_stem(manifest.name, split, args.part, args.stop_words, own.stop_words)  # evaluate_run's
        for run in seeds:
            print(f'evaluating {run} on {manifest.name} {split}/{args.part}, {device}')
            results.append(evaluate_run(run, manifest, split, args.part, args.features_root, args.data_root, device,
                                        args.stop_words))
            written += [run / 'eval' / f'{stem}.json', run / 'eval' / f'{stem}.md']
        saved = saved_run_cfg(seeds[0])
        model = saved.model.model
        table = format_results({model: results}, std=saved.train.seed_std)
        if len(seeds) > 1:  # the seeds' mean +- std beside them
            out = args.run / 'eval'
            out.mkdir(exist_ok=True)
            atomic_write_text(out / f'{stem}.md', f'# {model} of {args.run}, seeds {", ".join(s.name for s in seeds)}, '
                              f'evaluated on {manifest.name} {split}/{args.part}\n\n{table}\n')
            written.append(out / f'{stem}.md')
        print(table)
        print('\n'.join(f'-> {path}' for path in written))  # where the results are, as `python -m train` says
        return 0
    except USER_ERRORS as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C: a traceback before; each seed's files are written whole, once it is done
        print('\ninterrupted: rerun the same command to evaluate; the seeds done so far wrote their results '
              '(SEED/eval/)', file=sys.stderr)
        return 130


def _only_split(manifest: Manifest) -> str:
    if len(manifest.splits) != 1:
        raise ConfigError(f'{manifest.name} has splits {", ".join(manifest.splits)}: pass --split')
    return next(iter(manifest.splits))


if __name__ == '__main__':
    sys.exit(main())
