"""Action recognition with a linear probe on a run's video representation (support-set appendix 6.6, Table 11).

Each video's per-second features (the experts concatenated, as the support-set model sees them)
are pooled into one vector, by averaging (``mean``) or with the run's trained video pooling head
(``head``), and a linear classifier is trained on them, on each fold of the dataset; the top-1
accuracy on the fold's test videos is reported, and its mean over the folds. The classifier
follows the appendix: "a linear classifier for 1500 epochs for HMDB-51 (500 for UCF-101) ...
using Adam optimizer with learning rate of 1e-4 and weight decay 1e-4 with early stopping. We also
drop the learning rate by 10 at epochs 200, 400 for UCF-101 and 1000, 1200 for HMDB-51."

    python -m train.probe --run runs/ssb-howto100m --dataset hmdb51
    python -m train.probe --run runs/demo/ssb --dataset demo --pooling mean

Results are written beside the run as probe/DATASET_POOLING.json.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from shared.config import DATA_ROOT_HELP, FEATURES_ROOT_HELP, ConfigError, data_root_default, features_root_default
from shared.datasets import DatasetError, Manifest, load_manifest
from shared.device import DEVICE_HELP, pick_device
from shared.files import atomic_write_text
from shared.logs import setup_logging
from train.data import SplitData, load_split
from train.evaluate import USER_ERRORS, embed_videos, run_split
from train.models.base import RetrievalModel

__all__ = ['ProbeCfg', 'SCHEDULES', 'pooled_features', 'train_linear', 'probe_run', 'result_line', 'main']


@dataclasses.dataclass(frozen=True)
class ProbeCfg:
    """The linear classifier (appendix 6.6; defaults: UCF-101's schedule).

    Args:
        lr, weight_decay: Adam's (1e-4 and 1e-4).
        epochs: passes over the fold's training videos (UCF-101 500, HMDB-51 1500).
        milestones: epochs at which the learning rate drops by `gamma` (UCF-101 200, 400; HMDB-51 1000, 1200).
        gamma: the drop (/10).
        batch_size: videos per step (the paper gives none: ours).
        val_fraction: early stopping, which the paper names without saying on what: this share of a
            fold's training videos is held out, and the classifier of the epoch with the best
            accuracy on them is the one tested (0: no early stopping, the last epoch's).
        patience: stop after this many epochs without a better held-out accuracy (0: never stop early).
        seed: the held-out videos, the initial weights and the batch order.
    """

    lr: float = 1e-4
    weight_decay: float = 1e-4
    epochs: int = 500
    milestones: tuple[int, ...] = (200, 400)
    gamma: float = 0.1
    batch_size: int = 256
    val_fraction: float = 0.1
    patience: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or not 0 <= self.val_fraction < 1:
            raise ConfigError('probe: epochs and batch_size must be >= 1 and val_fraction in [0, 1)')


#: the appendix's schedule per dataset where it differs from ProbeCfg's defaults (UCF-101's)
SCHEDULES: dict[str, dict[str, Any]] = {'hmdb51': {'epochs': 1500, 'milestones': (1000, 1200)}}


@torch.no_grad()
def pooled_features(model: RetrievalModel, data: SplitData, pooling: str, device: torch.device,
                    batch: int = 256) -> torch.Tensor:
    """(N, D) one vector per video: its per-second features averaged (``mean``; the support-set
    model's e_v over its valid seconds), or the run's video embedding (``head``, flattened).

    Raises:
        ConfigError: ``mean`` for a model without per-second features (only the support-set model has them).
    """
    model.eval()
    if pooling == 'head':
        return embed_videos(model, data, device, batch).emb.flatten(1).float()
    if not hasattr(model, 'video_features'):
        raise ConfigError(f'{type(model).__name__} has no per-second features to average: use --pooling head')
    parts = []
    for videos in data.video_batches(batch):
        e, mask = model.video_features({k: v.to(device) for k, v in videos.items()})
        w = mask.to(e.dtype)[..., None]
        parts.append((e * w).sum(1) / w.sum(1).clamp(min=1))
    return torch.cat(parts).float()


def _accuracy(layer: nn.Linear, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((layer(x).argmax(1) == y).float().mean()) if len(y) else 0.0


def train_linear(x: torch.Tensor, y: torch.Tensor, classes: int, cfg: ProbeCfg) -> nn.Linear:
    """A linear classifier of features `x` (N, D) into labels `y` (N,), trained as appendix 6.6 says."""
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    layer = nn.Linear(x.shape[1], classes).to(x.device)
    # zero-initialised (the paper does not say): at lr 1e-4 the weights move little, and a random
    # start would stay a large part of what the classifier predicts
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    order = torch.randperm(len(y), generator=gen).to(x.device)
    n_val = int(round(cfg.val_fraction * len(y)))
    val, fit = order[:n_val], order[n_val:]
    opt = torch.optim.Adam(layer.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(cfg.milestones), cfg.gamma)
    best, best_state, since = -1.0, None, 0
    for _ in range(cfg.epochs):
        perm = fit[torch.randperm(len(fit), generator=gen).to(x.device)]
        for s in range(0, len(perm), cfg.batch_size):
            idx = perm[s:s + cfg.batch_size]
            opt.zero_grad()
            F.cross_entropy(layer(x[idx]), y[idx]).backward()
            opt.step()
        sched.step()
        if n_val:
            acc = _accuracy(layer, x[val], y[val])
            if acc > best:
                best, best_state, since = acc, copy.deepcopy(layer.state_dict()), 0
            else:
                since += 1
                if cfg.patience and since >= cfg.patience:
                    break
    if best_state is not None:
        layer.load_state_dict(best_state)
    return layer


def probe_run(run: Path, manifest: Manifest, folds: list[str], pooling: str, features_root: Path, data_root: Path,
              device: torch.device, cfg: ProbeCfg) -> dict[str, Any]:
    """Top-1 accuracy (%) of the linear probe on each fold's test videos and their mean, written to
    run/probe/DATASET_POOLING.json.

    Raises:
        DatasetError: the dataset has no class labels; ConfigError, StoreError: as `train.evaluate.run_split`.
    """
    if not manifest.labels:
        raise DatasetError(f'{manifest.name} has no class labels to recognise: the probe reads an action-recognition '
                           'dataset (hmdb51, ucf101) or the demo')
    names = sorted(set(manifest.labels.values()))
    label = {c: i for i, c in enumerate(names)}
    loaded = None
    accuracy = {}
    for fold in folds:
        sides = {}
        for part in ('train', 'test'):
            if loaded is None:
                loaded, encoder, data = run_split(run, manifest, fold, part, features_root, data_root, device)
            else:
                data = load_split(manifest, fold, part, features_root, loaded.cfg.model.experts, encoder)
            y = torch.tensor([label[manifest.labels[v]] for v in data.video_ids], device=device)
            sides[part] = (pooled_features(loaded.model, data, pooling, device), y)
        layer = train_linear(*sides['train'], len(names), cfg)
        accuracy[fold] = 100.0 * _accuracy(layer, *sides['test'])
    record = {'run': str(run), 'dataset': manifest.name, 'pooling': pooling, 'classes': len(names),
              'top1': accuracy, 'mean_top1': float(np.mean(list(accuracy.values()))), 'cfg': dataclasses.asdict(cfg)}
    out = run / 'probe'
    out.mkdir(exist_ok=True)
    atomic_write_text(out / f'{manifest.name}_{pooling}.json', json.dumps(record, indent=1))
    return record


def result_line(record: dict[str, Any]) -> str:
    """One line of a probe record: each fold's top-1, then their mean ('over 1 fold', 'over 3 folds')."""
    folds = len(record['top1'])
    return (' '.join(f'{f} {a:.1f}' for f, a in record['top1'].items())
            + f'; top-1 mean {record["mean_top1"]:.1f}% over {folds} fold{"s" * (folds != 1)} ({record["classes"]} classes)')


def main(argv: list[str] | None = None) -> int:
    from train.runs import run_seeds

    p = argparse.ArgumentParser(prog='python -m train.probe', description=__doc__.split('\n\n')[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split('\n\n', 2)[2])
    p.add_argument('--run', type=Path, required=True, help='a finished run directory; every seed of it is probed')
    p.add_argument('--dataset', required=True, help='hmdb51, ucf101, or any dataset with class labels (demo)')
    p.add_argument('--folds', help="comma list of the dataset's splits (default: all of them: fold1,fold2,fold3)")
    p.add_argument('--pooling', default='head', choices=('head', 'mean'),
                   help="the run's trained video pooling head (default), or the per-second features averaged")
    p.add_argument('--epochs', type=int, help="default: the appendix's for the dataset (HMDB-51 1500, else 500)")
    p.add_argument('--data-root', type=Path, default=data_root_default(),
                   help=f'dataset folders (default: {DATA_ROOT_HELP})')
    p.add_argument('--features-root', type=Path, default=features_root_default(),
                   help=f'expert stores (default: {FEATURES_ROOT_HELP})')
    p.add_argument('--device', default='auto', help=DEVICE_HELP)
    args = p.parse_args(argv)
    setup_logging()
    try:
        seeds = run_seeds(args.run)
        manifest = load_manifest(args.dataset, args.data_root)
        folds = args.folds.split(',') if args.folds else list(manifest.splits)
        for fold in folds:
            manifest.split(fold)  # an unknown fold: one line before any model loads
        schedule = dict(SCHEDULES.get(manifest.name, {}))
        if args.epochs is not None:
            schedule['epochs'] = args.epochs
        cfg = ProbeCfg(**schedule)
        device = torch.device(pick_device(args.device))
        for run in seeds:
            print(f'probing {run} on {manifest.name} ({", ".join(folds)}), {args.pooling} pooling, {device}')
            record = probe_run(run, manifest, folds, args.pooling, args.features_root, args.data_root, device, cfg)
            print(result_line(record))
        return 0
    except USER_ERRORS as err:
        print(f'error: {err}', file=sys.stderr)
        return 1


if __name__ == '__main__':
    sys.exit(main())
