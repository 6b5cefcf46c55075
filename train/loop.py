"""The training loop (open_clip style: small functions, a plain loop) and the run configs.

A run directory holds the resolved config (config.yaml), per-epoch metrics (metrics.jsonl), the
results table (results.md), TensorBoard logs (tb/), checkpoints (checkpoints/last.pt every epoch,
best.pt for the selected epoch, frozen feature extractors once in frozen.pt) and the test
gallery's video embeddings (gallery.pt, for search).
A run resumes exactly from last.pt: data order comes from a generator seeded by (seed, epoch).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from shared.config import ConfigError, from_dict, load_yaml, read_yaml, to_dict
from shared.datasets import Manifest
from shared.files import atomic_save, make_dir
from train.captions import build_caption_encoder
from train.checkpoints import FROZEN, GALLERY, load_model, save_checkpoint
from train.data import SplitData, TrainFeed, load_split, split_captions
from train.losses import LOSSES, build_loss
from train.metrics import format_results, geometric_mean, retrieval_metrics
from train.models import ModelCfg, RetrievalModel, check_fits, create_model
from train.models.config import upgrade_saved
from train.models.base import ExpertInput, TextEmbedding, TextInput, VideoEmbedding
from train.step import TrainStep

__all__ = ['DataCfg', 'TrainCfg', 'RunCfg', 'saved_run_cfg', 'train_run', 'train_epoch', 'evaluate', 'embed_videos', 'embed_texts',
           'Lookahead', 'build_optimizer', 'load_run_cfg', 'device_budget']

_logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DataCfg:
    """What to train on.

    Args:
        dataset, split: a registered dataset and one of its splits.
        word_vectors: word2vec file for captions (models with ``text.encoder: word2vec``): a path,
            ``{data_root}/...``, or a file name in the weights directory.
        max_words: caption length in words (word2vec) or in tokens, specials included (BERT, T5).
    """

    dataset: str = 'demo'
    split: str = 'official'
    word_vectors: str = 'GoogleNews-vectors-negative300.bin'
    max_words: int = 30


@dataclasses.dataclass(frozen=True)
class TrainCfg:
    """Optimisation.

    Args:
        optimizer: ``adam``, ``adamw`` or ``ranger`` (RAdam + Lookahead, k=6, alpha=0.5, as CE).
        lr, weight_decay, epochs, batch_size: as usual.
        loss: ``max_margin``, ``hard_negative`` or ``info_nce``; margin / temperature for them.
        lr_step, lr_gamma: multiply the learning rate by gamma every lr_step epochs, or every lr_step
            optimisation steps with ``lr_step_unit: step`` (MMT: 0.95 every 1,000 steps); 0: constant.
        grad_clip: max gradient norm (0: none).
        selection: ``geometric_mean`` of val R1/R5/R10 (CE), or ``last`` (a fixed epoch count, for
            protocols without a validation set such as 1k-A).
        compile: capture the training step with torch.compile (`train.step.TrainStep`; on CUDA its
            ``reduce-overhead`` mode, CUDA graphs); ``null``: on CUDA devices only (on a CPU,
            inductor's compile costs more than it saves on the small models trained there). A
            compile failure warns once and the run continues eager. Same results within float
            noise; dropout draws other random numbers.
        log_every: read the running loss (a wait for the device) every this many steps, for the
            progress bar; the loss is otherwise summed on the device and read at the epoch's end.
        device_data: the training split moves to the GPU once when it takes at most this fraction
            of the device's free memory (0: never); otherwise each batch is copied from pinned host
            memory without waiting.
    """

    optimizer: str = 'ranger'
    lr: float = 0.01
    weight_decay: float = 1e-3
    epochs: int = 20
    batch_size: int = 64
    loss: str = 'max_margin'
    margin: float = 0.09
    temperature: float = 0.05
    lr_step: int = 0
    lr_gamma: float = 0.95
    lr_step_unit: str = 'epoch'
    grad_clip: float = 0.0
    selection: str = 'geometric_mean'
    compile: bool | None = None
    log_every: int = 50
    device_data: float = 0.5

    def __post_init__(self) -> None:
        for name in ('epochs', 'batch_size', 'log_every'):
            if getattr(self, name) < 1:
                raise ValueError(f'train.{name} must be at least 1, got {getattr(self, name)}')
        if self.lr_step < 0:
            raise ValueError(f'train.lr_step must be 0 (constant) or more, got {self.lr_step}')
        if self.loss not in LOSSES:
            raise ValueError(f'unknown train.loss {self.loss!r} (known: {", ".join(LOSSES.names())})')
        # a NaN or infinite setting makes every loss non-finite: refused here, not found after training
        for name in ('lr', 'weight_decay', 'margin', 'temperature', 'lr_gamma', 'grad_clip'):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f'train.{name} must be a finite number, got {value!r}')
        if self.lr <= 0:
            raise ValueError(f'train.lr must be positive, got {self.lr}')
        if self.temperature <= 0:
            raise ValueError(f'train.temperature must be positive, got {self.temperature}')
        if not 0.0 <= self.device_data <= 1.0:
            raise ValueError('train.device_data must be in [0, 1]')
        if self.lr_step_unit not in ('epoch', 'step'):
            raise ValueError('train.lr_step_unit must be epoch or step')
        if self.selection not in ('geometric_mean', 'last'):
            raise ValueError('train.selection must be geometric_mean or last')


@dataclasses.dataclass(frozen=True)
class RunCfg:
    data: DataCfg
    model: ModelCfg
    train: TrainCfg


def load_run_cfg(path: str | Path, overrides: dict[str, Any] | None = None) -> RunCfg:
    """A run config from YAML (`yaml.safe_load`), with dotted-key overrides."""
    return load_yaml(RunCfg, path, overrides)


def read_saved(path: Path) -> dict[str, Any]:
    """A run directory's config.yaml as plain data, as today's configs write it (`upgrade_saved`)."""
    saved = read_yaml(path) or {}
    if not isinstance(saved, dict):
        raise ConfigError(f'{path}: not a run config (expected a mapping)')
    if isinstance(saved.get('model'), dict):
        saved['model'] = upgrade_saved(saved['model'])
    return saved


def saved_run_cfg(run_dir: Path) -> RunCfg:
    """The config a run directory was trained with (its config.yaml; the seed left out)."""
    raw = read_saved(run_dir / 'config.yaml')
    raw.pop('seed', None)
    return from_dict(RunCfg, raw, where=str(run_dir / 'config.yaml'))


class Lookahead:
    """Lookahead (Zhang et al. 2019) around an optimiser: every k steps the slow weights move
    alpha of the way to the fast ones, and the fast weights restart from there."""

    def __init__(self, base: torch.optim.Optimizer, k: int = 6, alpha: float = 0.5) -> None:
        self.base, self.k, self.alpha, self.steps = base, k, alpha, 0
        self.slow = [p.detach().clone() for g in base.param_groups for p in g['params']]

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.base.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def step(self) -> None:
        self.base.step()
        self.steps += 1
        if self.steps % self.k == 0:
            for p, slow in zip((p for g in self.base.param_groups for p in g['params']), self.slow):
                slow.add_(p - slow, alpha=self.alpha)
                p.copy_(slow)

    def state_dict(self) -> dict[str, Any]:
        return {'base': self.base.state_dict(), 'slow': self.slow, 'steps': self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base.load_state_dict(state['base'])
        self.steps = state['steps']
        for s, v in zip(self.slow, state['slow']):
            s.copy_(v)


def build_optimizer(cfg: TrainCfg, model: torch.nn.Module) -> tuple[Any, torch.optim.Optimizer]:
    """(the optimiser a step calls, the torch optimiser under it that schedulers drive)."""
    params = [p for p in model.parameters() if p.requires_grad]
    # on CUDA, Adam's fused kernels: a handful of launches for all parameters (RAdam has none)
    fused = {'fused': True} if params and params[0].device.type == 'cuda' else {}
    if cfg.optimizer == 'adam':
        base = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)
    elif cfg.optimizer == 'adamw':
        base = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)
    elif cfg.optimizer == 'ranger':
        base = torch.optim.RAdam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        return Lookahead(base, k=6, alpha=0.5), base
    else:
        raise ValueError(f'unknown optimizer {cfg.optimizer!r} (adam, adamw, ranger)')
    return base, base


@torch.no_grad()
def embed_videos(model: RetrievalModel, data: SplitData, device: torch.device, batch: int = 256) -> VideoEmbedding:
    parts = [model.encode_video({k: v.to(device) for k, v in data.videos(np.arange(s, min(s + batch, len(data)))).items()})
             for s in range(0, len(data), batch)]
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


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


#: settings a resumed run may change: more epochs continue the same run; how the step runs and
#: how often the loss is read leave the results as they were
RESUME_MAY_CHANGE = ('train.epochs', 'train.compile', 'train.log_every', 'train.device_data')


def _check_resumable(run_dir: Path, settings: dict[str, Any]) -> None:
    """A run with a checkpoint is resumed only with the settings it was trained with, so that one
    run never mixes two configs (its config.yaml and results would name only the second)."""
    saved = run_dir / 'config.yaml'
    if not (saved.is_file() and (run_dir / 'checkpoints' / 'last.pt').is_file()):
        return
    before, now = _flat(_with_defaults(read_saved(saved))), _flat(settings)
    diff = [f'{k}: {before.get(k)!r} there, {now.get(k)!r} now' for k in sorted(set(before) | set(now))
            if k not in RESUME_MAY_CHANGE and before.get(k) != now.get(k)]
    if diff:
        raise ConfigError(f'{run_dir} holds a run trained with other settings ({"; ".join(diff[:5])}'
                          f'{f"; and {len(diff) - 5} more" if len(diff) > 5 else ""}): rerun with its config to '
                          'resume it, or pass another --run-dir to start a new run')


def _with_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved run config with the settings added to RunCfg since then at their defaults (which
    keep the earlier behaviour), so that those runs still resume; as saved if it no longer loads."""
    rest = {k: v for k, v in saved.items() if k != 'seed'}
    try:
        full = yaml.safe_load(yaml.safe_dump(to_dict(from_dict(RunCfg, rest)), sort_keys=False))
    except (ValueError, TypeError):  # ConfigError included: a setting since removed or renamed
        return saved
    return {**full, **({'seed': saved['seed']} if 'seed' in saved else {})}


def _flat(d: dict[str, Any], prefix: str = '') -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f'{prefix}{k}.'))
        else:
            out[f'{prefix}{k}'] = v
    return out


def device_budget(device: torch.device, fraction: float) -> int:
    """Bytes of training data that may move to `device`: `fraction` of its free memory (CUDA only)."""
    if device.type != 'cuda' or fraction <= 0:
        return 0
    return int(torch.cuda.mem_get_info(device)[0] * fraction)


def train_epoch(step: TrainStep, batches: Iterable[tuple[dict[str, ExpertInput], TextInput]], log_every: int,
                log: Callable[[int, float], None] | None = None) -> float:
    """One epoch of `step` over `batches`; returns the mean loss.

    The losses are summed on the device, in float64 as the Python float sum this replaces (the same
    numbers), and read only every `log_every` steps, for `log(steps done, running mean)`, and once at
    the end: reading a device value makes the host wait for every queued step.

    A non-finite loss stops the epoch at the first read that sees it (the sum of the losses is
    non-finite once one of them is): `NonFiniteLoss`, naming the steps read so far.
    """
    total, n, read = None, 0, 0
    for n, (video, text) in enumerate(batches, 1):
        loss = step(video, text)
        total = loss.to(torch.float64) if total is None else total.add_(loss)
        if n % log_every == 0:
            mean = _finite(total.item() / n, read, n)
            read = n
            if log is not None:
                log(n, mean)
    if total is None:
        raise ValueError('an epoch without a batch')
    return _finite(total.item() / n, read, n)


class NonFiniteLoss(ValueError):
    """The training loss became NaN or infinite between steps `after` (exclusive) and `step`."""

    def __init__(self, after: int, step: int) -> None:
        super().__init__(after, step)
        self.after, self.step = after, step

    def where(self) -> str:
        return f'step {self.step}' if self.step == self.after + 1 else f'steps {self.after + 1}-{self.step}'


def _finite(mean: float, after: int, step: int) -> float:
    if not math.isfinite(mean):
        raise NonFiniteLoss(after, step)
    return mean


def train_run(cfg: RunCfg, manifest: Manifest, features_root: Path, data_root: Path, run_dir: Path, seed: int,
              device: str = 'cpu', progress: bool = True) -> dict[str, dict[str, float]]:
    """Train (or resume) one seed in `run_dir`; returns the test metrics of the selected epoch."""
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    dev = torch.device(device)
    check_fits(cfg.model, dev)  # before anything is made
    make_dir(run_dir, 'run directory', 'pass another --run-dir')
    settings = yaml.safe_dump({**to_dict(cfg), 'seed': seed}, sort_keys=False)
    _check_resumable(run_dir, yaml.safe_load(settings))
    experts = cfg.model.experts
    split = manifest.split(cfg.data.split)
    captions = build_caption_encoder(cfg.model.text, cfg.data.word_vectors, cfg.data.max_words, data_root, run_dir,
                                     lambda: split_captions(manifest, cfg.data.split, 'train', False)[1])
    train = load_split(manifest, cfg.data.split, 'train', features_root, experts, captions, False)
    val = (load_split(manifest, cfg.data.split, 'val', features_root, experts, captions)
           if split.val and cfg.train.selection == 'geometric_mean' else None)
    test = load_split(manifest, cfg.data.split, 'test', features_root, experts, captions)
    if train.random_weights:
        _logger.warning('stores of %s were extracted with RANDOM weights', ', '.join(train.random_weights))
    _seed_all(seed)
    model = create_model(cfg.model).to(dev)
    opt, base = build_optimizer(cfg.train, model)
    sched = torch.optim.lr_scheduler.StepLR(base, cfg.train.lr_step, cfg.train.lr_gamma) if cfg.train.lr_step else None
    loss = build_loss(cfg.train.loss, cfg.train.margin, cfg.train.temperature)
    ckpt_dir = run_dir / 'checkpoints'
    ckpt_dir.mkdir(exist_ok=True)
    start, best = 0, -math.inf
    if not (ckpt_dir / 'last.pt').is_file():  # a fresh start: frozen weights of an earlier attempt may differ
        (ckpt_dir / FROZEN).unlink(missing_ok=True)
    if (ckpt_dir / 'last.pt').is_file():  # resume exactly where the last finished epoch left off
        state = load_model(model, ckpt_dir / 'last.pt', dev)
        opt.load_state_dict(state['optimizer'])
        if sched is not None:
            sched.load_state_dict(state['scheduler'])
        torch.set_rng_state(state['torch_rng'])
        start, best = state['epoch'] + 1, state['best']
        if start > cfg.train.epochs:  # its results, config.yaml and metrics.jsonl are of `start` epochs
            raise ConfigError(f'{run_dir} holds a run that has trained {start} epochs, more than '
                              f'train.epochs={cfg.train.epochs}: refused, and the run is left as it was. Pass '
                              f'another --run-dir to train a new run of {cfg.train.epochs} epochs, or '
                              f'train.epochs={start} (or more, to continue it) to use this one')
        print(f'resuming {run_dir} at epoch {start + 1}')
    (run_dir / 'config.yaml').write_text(settings)  # once a resumed run is known to be this config's
    tb = SummaryWriter(str(run_dir / 'tb'))
    steps_per_epoch = len(train) // cfg.train.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f'batch_size {cfg.train.batch_size} is larger than the {len(train)} training videos')
    feed = TrainFeed(train, dev, device_budget(dev, cfg.train.device_data))
    if dev.type == 'cuda':
        _logger.info('training features (%.2f GB) %s', train.train_nbytes() / 1e9,
                     'moved to the device once' if feed.on_device else 'copied a batch at a time from pinned memory')
    step = TrainStep(model, opt, loss, cfg.train.grad_clip, dev,
                     cfg.train.compile if cfg.train.compile is not None else dev.type == 'cuda',
                     sched if cfg.train.lr_step_unit == 'step' else None)
    for epoch in range(start, cfg.train.epochs):
        model.train()
        rng = np.random.default_rng([seed, epoch])
        t0 = time.time()
        bar = tqdm(feed.epoch(cfg.train.batch_size, rng), total=steps_per_epoch, disable=not progress,
                   desc=f'epoch {epoch + 1}/{cfg.train.epochs}', unit='batch', leave=False)
        shown = lambda n, loss: bar.set_postfix(  # noqa: E731
            loss=f'{loss:.4f}', pairs_s=f'{cfg.train.batch_size * n / max(time.time() - t0, 1e-6):.0f}')
        try:
            mean_loss = train_epoch(step, bar, cfg.train.log_every, shown if progress else None)
        except NonFiniteLoss as err:
            bar.close()
            tb.close()
            raise ConfigError(f'the training loss became non-finite (NaN or infinite) in epoch {epoch + 1}, '
                              f'{err.where()} (read every train.log_every={cfg.train.log_every} steps); the run '
                              f'stops without results: check train.lr and the loss settings ({run_dir})') from None
        if sched is not None and cfg.train.lr_step_unit == 'epoch':
            sched.step()
        record: dict[str, Any] = {'epoch': epoch + 1, 'train/loss': mean_loss,
                                  'train/seconds': time.time() - t0, 'lr': base.param_groups[0]['lr']}
        tb.add_scalar('train/loss', record['train/loss'], epoch + 1)
        if val is not None:
            m = evaluate(model, val, dev)
            score = geometric_mean([m['t2v']['R1'], m['t2v']['R5'], m['t2v']['R10']])
            record.update({f'val/{d}/{k}': v for d in m for k, v in m[d].items()}, **{'val/selection': score})
            for d in m:
                for k in ('R1', 'R5', 'R10', 'MdR'):
                    tb.add_scalar(f'val/{d}/{k}', m[d][k], epoch + 1)
            if score > best:
                best = score
                save_checkpoint(model, ckpt_dir / 'best.pt', epoch=epoch)
        save_checkpoint(model, ckpt_dir / 'last.pt', optimizer=opt.state_dict(), epoch=epoch, best=best,
                        scheduler=sched.state_dict() if sched is not None else None, torch_rng=torch.get_rng_state())
        with open(run_dir / 'metrics.jsonl', 'a', encoding='utf-8') as f:
            f.write(json.dumps(record) + '\n')
        if progress:
            shown = f', val geometric mean {record["val/selection"]:.2f}' if val is not None else ''
            print(f'epoch {epoch + 1}/{cfg.train.epochs}: loss {record["train/loss"]:.4f}{shown} '
                  f'({record["train/seconds"]:.1f} s)')
    tb.close()
    chosen = 'best.pt' if val is not None and (ckpt_dir / 'best.pt').is_file() else 'last.pt'
    load_model(model, ckpt_dir / chosen, dev)
    model.eval()
    video = embed_videos(model, test, dev)  # once: for the test metrics and for the search gallery
    result = evaluate(model, test, dev, video)
    atomic_save({'video_ids': test.video_ids, 'emb': video.emb.cpu(), 'available': video.available.cpu(),
                 'checkpoint': chosen}, run_dir / GALLERY)  # whole or absent, as the checkpoints
    (run_dir / 'test_metrics.json').write_text(json.dumps(result, indent=1))
    (run_dir / 'results.md').write_text(f'# {cfg.model.model} on {cfg.data.dataset} ({cfg.data.split}), seed {seed}\n\n'
                                        f'Checkpoint: {chosen}\n\n' + format_results({cfg.model.model: [result]}) + '\n')
    return result
