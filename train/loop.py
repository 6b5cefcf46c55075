"""The training loop (open_clip style): a `TrainState`, `train_one_epoch`, and `train_run`, which
loads the data, trains, selects and tests.

A run directory holds the resolved config (config.yaml), per-epoch metrics (metrics.jsonl), the
results table (results.md), TensorBoard logs (tb/), checkpoints (checkpoints/last.pt every epoch,
best.pt for the selected epoch, frozen feature extractors once in frozen.pt) and the test
gallery's video embeddings (gallery.pt, for search).
A run resumes exactly from last.pt: data order comes from a generator seeded by (seed, epoch).
With ``train.steps`` the run stops after that many optimisation steps, part way through its last
epoch; last.pt then records the steps done in that epoch, and a resumed run with more steps
continues the epoch from the next batch.
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import logging
import math
import random
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from shared.config import ConfigError, to_dict
from shared.datasets import Manifest
from shared.files import (append_text, atomic_save, atomic_write, atomic_write_text, held_lock, make_dir,
                          raise_if_stopping, sha256_file)
from train.captions import CaptionData, build_caption_encoder
from train.checkpoints import FINAL, FROZEN, GALLERY, load_checkpoint, load_model, save_checkpoint
from train.config import RunCfg, TrainCfg, check_resumable
from train.data import SplitData, TrainFeed, split_captions
from train.distributed import (SINGLE, Dist, average, check_world, convert_batch_norm, gather_floats, main_first,
                               restore_rng, rng_states, seed_rank, wrap_model)
from train.evaluate import embed_videos, evaluate
from train.extra import extra_manifests, extra_train_texts, load_extra, load_source, mix_in, token_widths
from train.init import init_weights, resolve_init
from train.losses import build_loss
from train.metrics import format_results, geometric_mean
from train.models import RetrievalModel, check_fits, create_model
from train.models.text_encoders import text_positions
from train.models.base import ExpertInput, TextInput
from train.optim import build_optimizer
from train.sampling import make_sampler
from train.step import TrainStep
from train.stream import StreamedPart, StreamFeed, load_part, step_threads
from train.stream_cache import cache_path

__all__ = ['TrainState', 'build_state', 'train_one_epoch', 'train_epoch', 'train_run', 'device_budget', 'NonFiniteLoss']

_logger = logging.getLogger(__name__)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def device_budget(device: torch.device, fraction: float) -> int:
    """Bytes of training data that may move to `device`: `fraction` of its free memory (CUDA only)."""
    if device.type != 'cuda' or fraction <= 0:
        return 0
    return int(torch.cuda.mem_get_info(device)[0] * fraction)


def train_epoch(step: TrainStep, batches: Iterable[tuple[dict[str, ExpertInput], TextInput]], log_every: int,
                log: Callable[[int, float], None] | None = None,
                between: Callable[[int, torch.Tensor], bool] | None = None,
                before: tuple[float, int] = (0.0, 0)) -> tuple[float, float]:
    """One epoch of `step` over `batches`, or the rest of one whose first steps (`before`: the sum
    of their losses and their count) were trained before a checkpoint; returns the mean loss over
    the epoch's steps and their sum. `between(n, sum)` is called after step n when another step
    follows (a checkpoint part way through the epoch; its end has its own), with the sum so far;
    it returns whether it read the sum (found finite, else it raises `NonFiniteLoss`).

    The losses are summed on the device, in float64 as the Python float sum this replaces (the same
    numbers), and read only every `log_every` steps, for `log(steps done, running mean)`, and once at
    the end: reading a device value makes the host wait for every queued step.

    A non-finite loss (`TrainStep` gives NaN for a step whose gradients were non-finite) stops the
    epoch at the first read that sees it (the sum of the losses is non-finite once one of them is):
    `NonFiniteLoss`, naming the steps read so far.
    """
    total, n, read = None, 0, 0
    carried, done = before
    for n, (video, text) in enumerate(batches, 1):
        raise_if_stopping()  # a Ctrl-C lost in a finaliser: else the run trained on, all its epochs
        if between is not None and n > 1:
            try:
                read = n - 1 if between(n - 1, total) else read
            except NonFiniteLoss:  # a checkpoint's read of the sum: named as the epoch's own reads are
                raise NonFiniteLoss(done + read, done + n - 1) from None
        loss = step(video, text)
        total = loss.to(torch.float64) + carried if total is None else total.add_(loss)
        if n % log_every == 0:  # the steps a NonFiniteLoss names are the epoch's, those before a resume too
            mean = _finite(total.item() / (done + n), done + read, done + n)
            read = n
            if log is not None:
                log(n, mean)
    if total is None:
        raise ValueError('an epoch without a batch')
    summed = total.item()
    return _finite(summed / (done + n), done + read, done + n), summed


class NonFiniteLoss(ValueError):
    """The training loss became NaN or infinite between steps `after` (exclusive) and `step`."""

    def __init__(self, after: int, step: int) -> None:
        super().__init__(after, step)
        self.after, self.step = after, step

    def where(self) -> str:
        return f'step {self.step}' if self.step == self.after + 1 else f'steps {self.after + 1}-{self.step}'


def _non_finite_weight(model: torch.nn.Module) -> str | None:
    """The name of a weight (or buffer) of `model` that holds NaN or inf, or None (one wait for the device)."""
    weights = {k: v for k, v in model.state_dict().items() if v.is_floating_point()}
    if not weights or bool(torch.stack([torch.isfinite(v).all() for v in weights.values()]).all()):
        return None
    return next(k for k, v in weights.items() if not torch.isfinite(v).all())


def _check_weights(state: TrainState, steps: int) -> None:
    """The weights are finite before anything is saved of them (ConfigError): an update can overflow
    though the loss and its gradients were finite (`TrainStep` flags those), and the step that
    overflowed was the last one before a checkpoint; its loss, computed before it, was finite."""
    bad = _non_finite_weight(state.model)
    if bad is not None:
        raise ConfigError(f'the weights became non-finite (NaN or infinite) in epoch {state.epoch + 1}, by step '
                          f'{steps} (first: {bad}), though the loss and its gradients were finite: an update '
                          'overflowed. The run stops without results, its checkpoints as they were: check train.lr '
                          'and train.weight_decay')


def _finite(mean: float, after: int, step: int) -> float:
    if not math.isfinite(mean):
        raise NonFiniteLoss(after, step)
    return mean


@dataclasses.dataclass
class TrainState:
    """What a run trains and where it stands (open_clip's ``TrainState``).

    Attributes:
        model: the retrieval model.
        optimizer: what a step calls (`optim.Lookahead` around `base` for ranger).
        base: the torch optimiser under it, which the scheduler drives.
        scheduler: the learning-rate schedule, or None.
        step: one optimisation step (`train.step.TrainStep`).
        epoch: the next epoch to train (0-based).
        best: the best validation selection score so far.
        steps: optimisation steps done in all.
        epoch_steps: steps of `epoch` done already: ``train.steps`` stopped the run part way
            through it (0: the epoch starts afresh).
        epoch_loss: the sum of this rank's losses over those steps, for the epoch's mean (None:
            unknown, a checkpoint written before it was kept: the mean of the steps after it).
    """

    model: RetrievalModel
    optimizer: Any
    base: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    step: TrainStep
    epoch: int = 0
    best: float = -math.inf
    steps: int = 0
    epoch_steps: int = 0
    epoch_loss: float | None = 0.0


def build_state(cfg: RunCfg, device: torch.device, ranks: Dist = SINGLE) -> TrainState:
    """A fresh model, its optimiser, schedule, loss and step (seed the generators first); of many
    `ranks`, the step trains the model in DistributedDataParallel (`train.distributed`)."""
    t = cfg.train
    model = create_model(cfg.model)
    positions = text_positions(getattr(model, 'text_model', None))
    if positions is not None and cfg.data.max_words > positions:  # a random one's is checked as the config loads
        raise ConfigError(f'data.max_words {cfg.data.max_words} is more than the {positions} positions of the '
                          f'text model {cfg.model.text.name!r}: give data.max_words {positions} or fewer')
    model = convert_batch_norm(model, ranks, device).to(device)
    opt, base = build_optimizer(t, model)
    sched = torch.optim.lr_scheduler.StepLR(base, t.lr_step, t.lr_gamma) if t.lr_step else None
    step = TrainStep(wrap_model(model, ranks, device), opt, build_loss(t.loss, t.margin, t.temperature), t.grad_clip,
                     device, t.compile if t.compile is not None else device.type == 'cuda',
                     sched if t.lr_step_unit == 'step' else None)
    return TrainState(model, opt, base, sched, step)


def _resume(state: TrainState, last: Path, cfg: TrainCfg, run_dir: Path, device: torch.device, seed: int,
            ranks: Dist = SINGLE, pairs: int = 0, per_epoch: int = 0) -> None:
    """Continue from `last` exactly where it left off, at an epoch's end or, when ``train.steps``
    stopped it, at its step (weights, optimiser, schedule, every rank's generators; every rank from
    the same file). `per_epoch`: steps in an epoch, for the message."""
    # the settings matched (check_resumable): what does not fit was saved by an earlier version of the model
    fresh = f'Pass another --run-dir to train a new run, or start one from its weights with --init-from {run_dir}'
    saved = load_model(state.model, last, device, misfit=f'saved by an earlier version of the model, it cannot be '
                                                         f'resumed. {fresh}')
    try:
        state.optimizer.load_state_dict(saved['optimizer'])
    except ValueError as err:  # weights that loaded into a model that has more or other parameters since
        raise ConfigError(f'{run_dir} holds a run whose optimiser state does not fit this model\'s parameters '
                          f'(saved by an earlier version of the model: {err}): it cannot be resumed. {fresh}'
                          ) from None
    if state.scheduler is not None:
        state.scheduler.load_state_dict(saved['scheduler'])
    state.epoch_steps = saved.get('epoch_steps', 0)  # checkpoints before train.steps: whole epochs
    state.epoch, state.best = saved['epoch'] + (0 if state.epoch_steps else 1), saved['best']
    rngs = saved.get('rng') or [saved['torch_rng']]  # 'torch_rng': rank 0's alone, before every rank's was kept
    losses = saved.get('epoch_loss')  # each rank's loss sum over the epoch's steps done (absent: older checkpoints)
    if len(rngs) == ranks.world:
        restore_rng(rngs[ranks.rank], device)
    else:  # another number of processes: rank 0 goes on, the others take new streams of their own
        restore_rng(rngs[0], device)
        seed_rank(ranks, seed, state.epoch, state.epoch_steps)
    if losses is None or any(math.isnan(x) for x in losses):  # not kept, or not known when it was saved
        state.epoch_loss = None if state.epoch_steps else 0.0
    else:  # of another number of processes, their mean: rank 0's record is the mean over the ranks
        state.epoch_loss = float(losses[ranks.rank]) if len(losses) == ranks.world else float(np.mean(losses))
    if cfg.steps and 'steps' not in saved:
        raise ConfigError(f'{run_dir} holds a run saved before train.steps existed (its checkpoint does not '
                          'count steps): resume it with train.steps=0 and train.epochs, or pass another --run-dir')
    state.steps = saved.get('steps', 0)
    # its results, config.yaml and metrics.jsonl are of that many epochs (steps)
    if cfg.steps and state.steps > cfg.steps:
        # train.epoch_unit pairs (`pairs` of them) made cfg.steps from the epochs: advice in epochs
        asked = (f'the {cfg.steps} steps of train.epochs={cfg.epochs} over its pairs' if pairs
                 else f'train.steps={cfg.steps}')
        enough = (f'train.epochs={math.ceil(state.steps * cfg.batch_size / pairs)}' if pairs
                  else f'train.steps={state.steps}')
        raise ConfigError(f'{run_dir} holds a run that has trained {state.steps} steps, more than {asked}: '
                          f'refused, and the run is left as it was. Pass another --run-dir to train a new run of '
                          f'{cfg.steps} steps, or {enough} (or more, to continue it) to use this one')
    if not cfg.steps and state.epoch + (1 if state.epoch_steps else 0) > cfg.epochs:
        done = state.epoch + (1 if state.epoch_steps else 0)
        raise ConfigError(f'{run_dir} holds a run that has trained {done} epochs, more than '
                          f'train.epochs={cfg.epochs}: refused, and the run is left as it was. Pass '
                          f'another --run-dir to train a new run of {cfg.epochs} epochs, or '
                          f'train.epochs={done} (or more, to continue it) to use this one')
    if ranks.main:
        _adopt_best(state, last.parent / 'best.pt')
        if not _more(state, cfg):  # killed after its last checkpoint, or run again: "resuming at epoch 31" of 30
            done = f'{cfg.steps} steps' if cfg.steps else f'{cfg.epochs} epoch{"s" if cfg.epochs > 1 else ""}'
            print(f'resuming {run_dir}: it has trained all its {done}, nothing is left to train; only the test runs '
                  f'(without a test part: {FINAL})')
        elif state.epoch_steps and state.epoch_steps == per_epoch:  # train.steps stopped at the epoch's last step
            print(f'resuming {run_dir} at epoch {state.epoch + 2}, step {state.steps + 1}')
        else:
            print(f'resuming {run_dir} at epoch {state.epoch + 1}'
                  + (f', step {state.steps + 1} (step {state.epoch_steps + 1} of the epoch)' if state.epoch_steps else ''))
        _say_world_changed(saved.get('world_size', 1), ranks.world)


def _adopt_best(state: TrainState, path: Path) -> None:
    """best.pt is written before last.pt: a run stopped between them left a best.pt of a score that
    last.pt does not know. It stays the best unless a resumed epoch beats it (compared with last.pt's
    score, a lower one would overwrite it)."""
    if not path.is_file():
        return
    saved = load_checkpoint(path, mmap=True)
    score = saved.get('best')  # absent: saved before best.pt kept its score
    if score is not None and score > state.best:
        print(f'{path} (epoch {saved["epoch"] + 1}, validation score {score:.2f}) was saved after last.pt '
              'by the attempt that stopped: it stays the best unless an epoch scores higher')
        state.best = score


def _say_world_changed(before: int, now: int) -> None:
    if before != now:  # the global batches stay; which process reads which part of them does not
        print(f'the run was trained by {before} process(es) and continues with {now}: the data order changed '
              f'(each process reads another share of every batch), so the run will not match one trained by '
              f'{before} or by {now} throughout')


def _keep_metrics(path: Path, epochs: int, steps: int) -> int:
    """Cut metrics.jsonl back to the lines the checkpoint holds, of `steps` steps in all (lines
    written before records counted steps: of epochs 1..`epochs`): a kill after an epoch's line but
    before its checkpoint (or in the middle of the line) left lines that the resumed run writes again.
    Returns the last epoch of a line kept (0: none)."""
    if not path.is_file():
        return 0
    text = path.read_text(encoding='utf-8', errors='replace')
    kept, last = [], 0
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # a line cut short
            continue
        if not isinstance(record, dict):
            continue
        done = record.get('step', record.get('epoch'))
        if isinstance(done, int) and done <= (steps if 'step' in record else epochs):
            kept.append(line + '\n')
            if isinstance(record.get('epoch'), int):
                last = max(last, record['epoch'])
    if ''.join(kept) != text:
        atomic_write(path, lambda f: f.write(''.join(kept).encode('utf-8')))
    return last


def _more(state: TrainState, cfg: TrainCfg) -> bool:
    """The run trains on: steps left of ``train.steps``, or (steps 0) epochs left of ``train.epochs``."""
    return state.steps < cfg.steps if cfg.steps else state.epoch < cfg.epochs


def _steps_per_epoch(data: SplitData | StreamedPart, batch_size: int) -> int:
    """Optimisation steps in a whole epoch of `data` at the global batch `batch_size`: the short
    last batch is dropped (`SplitData.epoch_plan`). The one count of them that the run's stop,
    resume and progress use."""
    return data.epoch_size // batch_size


def _pair_steps(cfg: RunCfg, pairs: int, per_epoch: int, say: bool) -> RunCfg:
    """`cfg` with ``train.epoch_unit: pairs`` made its count of steps (config.yaml keeps the
    epochs, from which a resumed run counts the same steps again); `per_epoch`: the steps of an
    epoch of one caption a video, for the message."""
    t = cfg.train
    if t.epoch_unit != 'pairs':
        return cfg
    steps = t.run_steps(pairs)
    if say:
        print(f'train.epoch_unit pairs: {t.epochs} epochs over the {pairs:,} (video, caption) pairs at batch '
              f'{t.batch_size} = {steps:,} steps ({steps / max(per_epoch, 1):.1f} epochs of one '
              f'caption a video)')
    return dataclasses.replace(cfg, train=dataclasses.replace(t, steps=steps, epoch_unit='videos'))


def _checkpoint_due(state: TrainState, cfg: TrainCfg) -> bool:
    """last.pt is written after the epoch just trained: every `checkpoint_every` epochs, after an
    epoch that train.steps stopped part way, after the run's last epoch (its end is read from it),
    and where the epoch's last step is one of every `checkpoint_steps` (those part way through an
    epoch are written by `_step_checkpoints`)."""
    return ((state.epoch + 1) % cfg.checkpoint_every == 0 or state.epoch_steps > 0
            or bool(cfg.checkpoint_steps and state.steps % cfg.checkpoint_steps == 0)
            or not _more(dataclasses.replace(state, epoch=state.epoch + 1), cfg))


#: writes last.pt: (steps of the run, steps of the epoch, the sum of this rank's losses over those, None
#: where unknown)
Save = Callable[[int, int, float | None], None]


def _step_checkpoints(state: TrainState, cfg: TrainCfg, save: Save | None
                      ) -> Callable[[int, torch.Tensor], bool] | None:
    """`train_epoch`'s `between`: after every `checkpoint_steps`-th step of the run that is not the
    epoch's last, `save` as a stop by train.steps there would leave the run; `NonFiniteLoss` in
    its place once the loss was non-finite (the epoch's end reads the sum before its own save)."""
    if save is None or not cfg.checkpoint_steps:
        return None
    steps, epoch_steps, every = state.steps, state.epoch_steps, cfg.checkpoint_steps
    known = state.epoch_loss is not None  # else the sum so far misses the steps before the resume

    def between(n: int, total: torch.Tensor) -> bool:
        if (steps + n) % every:
            return False
        summed = total.item()  # read where unknown too: once non-finite, the weights are NaN, never saved
        if not math.isfinite(summed):
            raise NonFiniteLoss(0, n)  # `train_epoch` names the steps
        _check_weights(state, steps + n)
        save(steps + n, epoch_steps + n, summed if known else None)
        return True
    return between


def _epoch_batches(state: TrainState, feed: TrainFeed | StreamFeed, cfg: TrainCfg, rng: np.random.Generator,
                   done: list[int]) -> Iterator[tuple[dict[str, ExpertInput], TextInput]]:
    """The epoch's batches from step `state.epoch_steps` (a resumed run continues the epoch that
    train.steps stopped), at most the steps left of train.steps; `done[0]` counts those given."""
    batches = feed.epoch(cfg.batch_size, rng, skip=state.epoch_steps)
    for batch in itertools.islice(batches, cfg.steps - state.steps if cfg.steps else None):
        done[0] += 1
        yield batch


def train_one_epoch(state: TrainState, feed: TrainFeed | StreamFeed, cfg: TrainCfg, seed: int, progress: bool,
                    where: Path, save: Save | None = None) -> dict[str, Any] | None:
    """Epoch `state.epoch` in the order that (seed, epoch) give, or what train.steps leaves of it;
    its record for metrics.jsonl (None: a resumed epoch had no step left). `state.steps` counts
    its steps; `state.epoch_steps` is 0 when the epoch ended, else the steps done in it.
    `save` writes last.pt part way through (train.checkpoint_steps)."""
    from tqdm import tqdm

    epoch = state.epoch
    state.model.train()
    rng = np.random.default_rng([seed, epoch])
    t0 = time.time()
    done = [0]
    batches = _epoch_batches(state, feed, cfg, rng, done)
    first = next(batches, None)
    if first is None:  # train.steps had stopped the run at the epoch's last step: it ends here
        with warnings.catch_warnings():  # its optimiser stepped in the process that stopped, not in this one
            warnings.filterwarnings('ignore', message='Detected call of `lr_scheduler')
            _end_epoch(state, cfg)
        return None
    total = _steps_per_epoch(feed.data, cfg.batch_size) - state.epoch_steps
    bar = tqdm(itertools.chain([first], batches), disable=not progress, unit='batch', leave=False,
               total=min(total, cfg.steps - state.steps) if cfg.steps else total,
               desc=f'epoch {epoch + 1}' + (f', step {state.steps + 1}/{cfg.steps}' if cfg.steps else f'/{cfg.epochs}'))
    shown = lambda n, loss: bar.set_postfix(  # noqa: E731
        loss=f'{loss:.4f}', pairs_s=f'{cfg.batch_size * n / max(time.time() - t0, 1e-6):.0f}')
    try:
        with step_threads(feed, epoch):
            before = (state.epoch_loss, state.epoch_steps) if state.epoch_loss is not None else (0.0, 0)
            mean_loss, summed = train_epoch(state.step, bar, cfg.log_every, shown if progress else None,
                                            _step_checkpoints(state, cfg, save), before)
    except NonFiniteLoss as err:
        raise ConfigError(f'the training loss or its gradients became non-finite (NaN or infinite) in epoch '
                          f'{epoch + 1}, {err.where()} (read every train.log_every={cfg.log_every} steps); the run '
                          f'stops without results: check train.lr and the loss settings ({where})') from None
    finally:
        bar.close()
        batches.close()  # a streamed epoch stops its reader processes now, not when collected
    state.steps += done[0]
    _check_weights(state, state.steps)  # before validation (best.pt) and last.pt; on every rank alike
    # the lr its last step took (a per-step schedule's steps each take another): not the one the
    # schedule set after it, which no step of the epoch took
    lr = state.step.lr
    if cfg.steps and state.steps == cfg.steps:  # stopped by the budget: perhaps part way through
        state.epoch_steps += done[0]
        state.epoch_loss = summed if state.epoch_loss is not None else None
    else:
        _end_epoch(state, cfg)
    return {'epoch': epoch + 1, 'step': state.steps, 'train/loss': mean_loss, 'train/seconds': time.time() - t0,
            'lr': lr}


def _end_epoch(state: TrainState, cfg: TrainCfg) -> None:
    """An epoch ran to its end: the per-epoch schedule steps (never for an epoch stopped part way,
    which a resumed run continues)."""
    state.epoch_steps, state.epoch_loss = 0, 0.0
    if state.scheduler is not None and cfg.lr_step_unit == 'epoch':
        state.scheduler.step()


def _validate(state: TrainState, val: SplitData, device: torch.device, record: dict[str, Any], tb: Any,
              ckpt_dir: Path) -> None:
    """The validation metrics into `record` and TensorBoard; best.pt when the selection score improves."""
    m = evaluate(state.model, val, device)
    score = geometric_mean([m['t2v']['R1'], m['t2v']['R5'], m['t2v']['R10']])
    record.update({f'val/{d}/{k}': v for d in m for k, v in m[d].items()}, **{'val/selection': score})
    for d in m:
        for k in ('R1', 'R5', 'R10', 'MdR'):
            tb.add_scalar(f'val/{d}/{k}', m[d][k], record['epoch'])
    if score > state.best:
        state.best = score
        save_checkpoint(state.model, ckpt_dir / 'best.pt', epoch=state.epoch, best=score)


def _test(state: TrainState, cfg: RunCfg, test: SplitData, device: torch.device, run_dir: Path, seed: int,
          chosen: str, extra_tests: dict[str, SplitData]) -> dict[str, dict[str, float]]:
    """The selected checkpoint on the test part: metrics, results table and the search gallery;
    and on the extra sources' test parts (`extra_tests`, by source name), in test_metrics_extra.json,
    results.md and printed."""
    load_model(state.model, run_dir / 'checkpoints' / chosen, device)
    state.model.eval()
    video = embed_videos(state.model, test, device)  # once: for the test metrics and for the search gallery
    result = evaluate(state.model, test, device, video)
    # the checkpoint's sha256 too: a resumed run rewrites best.pt (last.pt) long before it writes this file
    # again, and a stop in between paired these embeddings with other weights (train.search checks it)
    atomic_save({'video_ids': test.video_ids, 'emb': video.emb.cpu(), 'available': video.available.cpu(),
                 'checkpoint': chosen, 'checkpoint_sha256': sha256_file(run_dir / 'checkpoints' / chosen)},
                run_dir / GALLERY)  # whole or absent, as the checkpoints
    atomic_write_text(run_dir / 'test_metrics.json', json.dumps(result, indent=1))
    text = (f'# {cfg.model.model} on {cfg.data.dataset} ({cfg.data.split}), seed {seed}\n\n'
            f'Checkpoint: {chosen}\n\n' + format_results({cfg.model.model: [result]}) + '\n')
    if extra_tests:
        extra = {name: evaluate(state.model, part, device) for name, part in extra_tests.items()}
        atomic_write_text(run_dir / 'test_metrics_extra.json', json.dumps(extra, indent=1))
        for name, m in extra.items():
            table = format_results({cfg.model.model: [m]})
            text += f'\n## {name} (data.extra), test part\n\n{table}\n'
            print(f'seed {seed}, {name} (data.extra) test part:\n{table}')
    atomic_write_text(run_dir / 'results.md', text)
    return result


def _feed(train: SplitData | StreamedPart, dev: torch.device, cfg: TrainCfg, ranks: Dist) -> TrainFeed | StreamFeed:
    """This rank's training batches: streamed from the stores (each rank reads its share of the
    chunks), or from memory (its columns of every step); `load_part` chose."""
    if isinstance(train, StreamedPart):
        return StreamFeed(train, dev, cfg.shuffle_buffer)
    feed = TrainFeed(train, dev, device_budget(dev, cfg.device_data), ranks.rank, ranks.world)
    if dev.type == 'cuda':
        _logger.info('training features (%.2f GB) %s', train.train_nbytes() / 1e9,
                     'moved to the device once' if feed.on_device else 'copied a batch at a time from pinned memory')
    return feed


def _follow(state: TrainState, feed: TrainFeed | StreamFeed, cfg: RunCfg, seed: int, run_dir: Path,
            ranks: Dist) -> dict[str, dict[str, float]]:
    """A rank other than 0: its share of every epoch's steps; rank 0 evaluates, writes and tests."""
    save = lambda steps, epoch_steps, loss: _rank_states(ranks, state.step.device, loss)  # noqa: E731 - rank 0 saves
    while _more(state, cfg.train):
        record = train_one_epoch(state, feed, cfg.train, seed, False, run_dir, save)
        if record is not None:
            average(ranks, record['train/loss'])  # rank 0's record is the mean over the ranks
            if _checkpoint_due(state, cfg.train):
                save(state.steps, state.epoch_steps, state.epoch_loss)
        state.epoch += 0 if state.epoch_steps else 1
    return {}


def _rank_states(ranks: Dist, device: torch.device, loss: float | None) -> tuple[list[torch.Tensor], list[float]]:
    """What last.pt keeps of every rank: its generators and its loss sum over the epoch's steps so
    far (NaN: unknown). Collectives, in this order, on every rank alike: rank 0 saves them."""
    return rng_states(ranks, device), gather_floats(ranks, math.nan if loss is None else loss)


def _close(part: SplitData | StreamedPart | None) -> None:
    """Remove a streamed part's feature cache."""
    if isinstance(part, StreamedPart):
        part.close()


def _check_captions(captions: CaptionData, cfg: RunCfg, dataset: str) -> None:
    """Some training caption has a word the text encoder knows (ConfigError): word vectors of another
    language or case left every caption empty, and the run trained on them without a word, its
    queries all one embedding."""
    if len(captions) and not captions.mask.any():
        where = (f'the word vectors {cfg.data.word_vectors}' if cfg.model.text.encoder == 'word2vec'
                 else "the text encoder's vocabulary")
        raise ConfigError(f'none of the {len(captions)} training captions of {dataset} ({cfg.data.split}) has a word '
                          f'in {where}{" once stop words are removed" if cfg.data.stop_words == "remove" else ""}: '
                          'give data.word_vectors of the captions\' language')


def train_run(cfg: RunCfg, manifest: Manifest, features_root: Path, data_root: Path, run_dir: Path, seed: int,
              device: str = 'cpu', progress: bool = True, ranks: Dist = SINGLE) -> dict[str, dict[str, float]]:
    """Train (or resume) one seed in `run_dir`; returns the test metrics of the selected epoch (of
    many `ranks`, on rank 0, which alone evaluates and writes run files; {} on the others).

    Raises:
        ConfigError: another process trains `run_dir` (two runs in one folder interleaved their
            metrics.jsonl and renamed each other's half-written checkpoints into place).
    """
    check_fits(cfg.model, torch.device(device))  # before anything is made
    check_world(ranks, cfg.train.batch_size, len(manifest.split(cfg.data.split).ids('train')))  # before data is read
    held = held_lock(run_dir, 'run directory', 'pass another --run-dir') if ranks.main else contextlib.nullcontext()
    with held:
        return _train_run(cfg, manifest, features_root, data_root, run_dir, seed, device, progress, ranks)


def _train_run(cfg: RunCfg, manifest: Manifest, features_root: Path, data_root: Path, run_dir: Path, seed: int,
               device: str, progress: bool, ranks: Dist) -> dict[str, dict[str, float]]:
    from torch.utils.tensorboard import SummaryWriter

    dev = torch.device(device)
    experts = cfg.model.experts
    split = manifest.split(cfg.data.split)
    with main_first(ranks):  # rank 0 makes the run directory and saves the tokenizer the others load
        make_dir(run_dir, 'run directory', 'pass another --run-dir')
        cfg = resolve_init(cfg, run_dir, write=ranks.main)  # train.init_from: the checkpoint config.yaml records
        settings = yaml.safe_dump({**to_dict(cfg), 'seed': seed}, sort_keys=False)
        if ranks.main:  # rank 0 rewrites config.yaml while the others run this block: it alone reads it
            check_resumable(run_dir, yaml.safe_load(settings))
        sources = extra_manifests(cfg.data, data_root)  # data.extra: more training sources
        captions = build_caption_encoder(cfg.model.text, cfg.data, data_root, run_dir,
                                         lambda: split_captions(manifest, cfg.data.split, 'train', False)[1]
                                         + extra_train_texts(sources))
    sampler = make_sampler(cfg.data, manifest, split.ids('train'))  # data.sample window or segment
    # the parts read every epoch may keep their aggregated features on disk (the test part is read
    # once); the files are removed as the run ends, however it ends
    cache = ((lambda part: cache_path(Path(cfg.train.stream_cache_dir or run_dir), run_dir, part, ranks.rank))
             if cfg.train.stream_cache else lambda part: None)
    with contextlib.ExitStack() as held:
        train = load_part(manifest, cfg.data.split, 'train', features_root, experts, captions, cfg.train, False,
                          sampler, cache('train'))
        held.callback(_close, train)
        _check_captions(train.captions, cfg, manifest.name)
        pairs = len(train.caption_video)  # the run's own, before extra sources join
        extra = load_extra(sources, len(train), features_root, manifest.name, experts, captions, ranks.main)
        if extra is not None:  # in memory: one part; streamed: the stream takes the draws in (`train.stream`)
            if isinstance(train, StreamedPart):
                train.extra = extra
            else:
                train = mix_in(train, extra)
        val = (load_part(manifest, cfg.data.split, 'val', features_root, experts, captions, cfg.train,
                         cache=cache('val')) if split.val and cfg.train.selection == 'geometric_mean' and ranks.main else None)
        held.callback(_close, val)
        # a split without a test part (howto100m's pretrain) trains only: fine-tuning starts from it
        test = (load_part(manifest, cfg.data.split, 'test', features_root, experts, captions, cfg.train)
                if ranks.main and split.test else None)
        # the extra sources' test parts, reported beside the run's own (MEE Tables 2-3)
        extra_tests = ({e.name: load_source(e, m, 'test', features_root, experts, captions,
                                            token_widths(features_root, manifest.name, experts))
                        for e, m in sources if m.split(e.split).test} if test is not None else {})
        if train.random_weights:
            _logger.warning('stores of %s were extracted with RANDOM weights', ', '.join(train.random_weights))
        if len(train) < cfg.train.batch_size:
            raise ValueError(f'train.batch_size {cfg.train.batch_size} is larger than the {len(train)} training '
                             f'videos: give --set train.batch_size={len(train)} (or less), or more training videos')
        pairs = pairs if cfg.train.epoch_unit == 'pairs' else 0  # the resume's advice counts them
        cfg = _pair_steps(cfg, pairs, _steps_per_epoch(train, cfg.train.batch_size), ranks.main)
        _seed_all(seed)
        state = build_state(cfg, dev, ranks)
        seed_rank(ranks, seed)  # the same weights on every rank; its own dropout masks from here
        ckpt_dir = run_dir / 'checkpoints'
        ckpt_dir.mkdir(exist_ok=True)
        if (ckpt_dir / 'last.pt').is_file():  # resume exactly where the last finished epoch left off
            _resume(state, ckpt_dir / 'last.pt', cfg.train, run_dir, dev, seed, ranks, pairs,
                    _steps_per_epoch(train, cfg.train.batch_size))
        else:
            if ranks.main:  # a fresh start: frozen weights of an earlier attempt may differ
                (ckpt_dir / FROZEN).unlink(missing_ok=True)
            if cfg.train.init_from:  # every rank loads the same weights; rank 0 reports
                init_weights(state.model, Path(cfg.train.init_from), run_dir, report=ranks.main)
        if not ranks.main:
            return _follow(state, _feed(train, dev, cfg.train, ranks), cfg, seed, run_dir, ranks)
        kept = _keep_metrics(run_dir / 'metrics.jsonl', state.epoch, state.steps)
        # once a resumed run is known to be this config's; whole or not at all, else a kill leaves a
        # truncated config.yaml that check_resumable refuses as "other settings"
        atomic_write(run_dir / 'config.yaml', lambda f: f.write(settings.encode('utf-8')))
        feed = _feed(train, dev, cfg.train, ranks)
        tb = None  # opened at the first point this attempt logs (`purge_step` below)

        def save_last(steps: int, epoch_steps: int, loss: float | None) -> None:
            """last.pt after `steps` steps of the run, `epoch_steps` of them in `state.epoch` (0: at
            its end), with every rank's generators and loss sum over those (`_follow`'s `save`)."""
            rngs, losses = _rank_states(ranks, dev, loss)
            save_checkpoint(state.model, ckpt_dir / 'last.pt', optimizer=state.optimizer.state_dict(),
                            epoch=state.epoch, best=state.best, rng=rngs,
                            scheduler=state.scheduler.state_dict() if state.scheduler is not None else None,
                            world_size=ranks.world, steps=steps, epoch_steps=epoch_steps, epoch_loss=losses)

        try:
            while _more(state, cfg.train):
                record = train_one_epoch(state, feed, cfg.train, seed, progress, run_dir, save_last)
                if record is None:  # the epoch a resumed run continued had no step left: nothing to record
                    state.epoch += 1
                    continue
                record['train/loss'] = average(ranks, record['train/loss'])
                if tb is None:
                    # TensorBoard hides what an earlier attempt logged past the lines kept, as metrics.jsonl
                    # drops them, and from this point's epoch on: an epoch that train.steps stopped part way
                    # is logged again at its end (two points at one epoch, the first of part of its steps;
                    # metrics.jsonl keeps both lines, told apart by their step)
                    tb = SummaryWriter(str(run_dir / 'tb'), purge_step=min(record['epoch'], kept + 1))
                tb.add_scalar('train/loss', record['train/loss'], record['epoch'])
                if val is not None:
                    _validate(state, val, dev, record, tb, ckpt_dir)
                # the epoch's line before its checkpoint: a kill between them leaves a line that the
                # resumed run drops (_keep_metrics) and writes again, never a checkpoint without its line
                append_text(run_dir / 'metrics.jsonl', json.dumps(record) + '\n')
                if _checkpoint_due(state, cfg.train):
                    save_last(state.steps, state.epoch_steps, state.epoch_loss)
                if progress:
                    shown = f', val geometric mean {record["val/selection"]:.2f}' if val is not None else ''
                    where = (f'epoch {record["epoch"]}, step {state.steps}/{cfg.train.steps}' if cfg.train.steps
                             else f'epoch {record["epoch"]}/{cfg.train.epochs}')
                    print(f'{where}: loss {record["train/loss"]:.4f}{shown} ({record["train/seconds"]:.1f} s)')
                state.epoch += 0 if state.epoch_steps else 1
        finally:
            if tb is not None:
                tb.close()
        chosen = 'best.pt' if val is not None and (ckpt_dir / 'best.pt').is_file() else 'last.pt'
        if test is None:  # what --init-from and train.evaluate read in place of the test's gallery
            # train.steps may stop at an epoch's last step: that epoch is whole though not yet closed
            whole = 0 < state.epoch_steps == _steps_per_epoch(feed.data, cfg.train.batch_size)
            atomic_write_text(run_dir / FINAL, json.dumps({'checkpoint': chosen, 'epochs': state.epoch + whole,
                                                           'steps': state.steps}))
            return {}
        return _test(state, cfg, test, dev, run_dir, seed, chosen, extra_tests)
