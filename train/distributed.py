"""Training on many processes (DESIGN.md "Distributed training"): `torchrun` starts one process per
device and sets RANK, WORLD_SIZE and LOCAL_RANK; this module joins them into one process group
(NCCL on CUDA, gloo on the CPU), wraps the model in DistributedDataParallel, checks that every
rank was given the same run, and lets only rank 0 write run files.

`train.batch_size` is the global batch B: each of the N ranks takes its own B/N columns of every
step of the epoch plan (`TrainFeed.epoch`), and the losses gather the embeddings of the whole
batch (`train.losses.gather`), so N ranks optimise what one process at batch B does.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import logging
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from shared.config import ConfigError
from train.config import flat_settings

__all__ = ['Dist', 'SINGLE', 'RanksError', 'init_distributed', 'teardown', 'agree', 'main_first', 'barrier',
           'check_world', 'convert_batch_norm', 'wrap_model', 'unwrap', 'average', 'seed_rank', 'rng_states',
           'restore_rng', 'gather_floats']

_logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Dist:
    """This process's place among the run's processes (one process: rank 0 of 1)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """The rank that writes run files and prints."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


SINGLE = Dist()


class RanksError(ConfigError):
    """A check that every rank makes alike and fails alike: rank 0 alone reports it."""


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, '')
    if not value:
        return default
    if not value.isdigit():
        raise ConfigError(f'environment variable {name}={value!r} is not a number: start training with torchrun')
    return int(value)


def init_distributed(device: str) -> tuple[Dist, str]:
    """Join the process group torchrun describes in the environment, if any.

    Args:
        device: the requested device (`shared.device.pick_device`); ``cuda`` becomes this
            process's own GPU, ``cuda:LOCAL_RANK``.

    Returns:
        (this process's `Dist`, its device).
    """
    ranks = Dist(_env_int('RANK', 0), _env_int('WORLD_SIZE', 1), _env_int('LOCAL_RANK', 0))
    if not ranks.active:
        return ranks, device
    cuda = torch.device(device).type == 'cuda'
    if cuda:
        count = torch.cuda.device_count()
        if ranks.local_rank >= count:
            raise ConfigError(f'process {ranks.local_rank} on this node has no GPU of its own (this node has {count}): '
                              f'run torchrun with --nproc-per-node {count} or fewer')
        device = f'cuda:{ranks.local_rank}'
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # the other ranks wait in a collective while rank 0 alone evaluates and saves: an hour, not
        # NCCL's 10 minutes (a rank that dies is noticed by torchrun, which stops the others)
        dist.init_process_group('nccl' if cuda else 'gloo', timeout=datetime.timedelta(minutes=60))
    return ranks, device


def teardown() -> None:
    """Leave the process group (a no-op in one process)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ranks: Dist) -> None:
    if ranks.active:
        dist.barrier()


@contextlib.contextmanager
def main_first(ranks: Dist) -> Iterator[None]:
    """Rank 0 runs the block first (it makes the run directory, fits the tokenizer it saves
    there); the other ranks run it after, and find what rank 0 made."""
    if not ranks.main:
        barrier(ranks)
    yield
    if ranks.main:
        barrier(ranks)


def _collective_device() -> torch.device:
    """Where the group's collectives take their tensors: this process's GPU under NCCL, else the CPU."""
    return torch.device('cuda', torch.cuda.current_device()) if dist.get_backend() == 'nccl' else torch.device('cpu')


def _gather_text(text: str) -> list[str]:
    """Every rank's `text`, in rank order (as UTF-8 bytes in tensors: nothing is unpickled)."""
    data = torch.tensor(list(text.encode()), dtype=torch.uint8)
    size = torch.tensor([data.numel()], dtype=torch.int64)
    dev = _collective_device()
    sizes = [torch.zeros_like(size, device=dev) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size.to(dev))
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros(longest, dtype=torch.uint8, device=dev)
    padded[:data.numel()] = data.to(dev)
    parts = [torch.zeros_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return [bytes(p[:int(s.item())].cpu().tolist()).decode() for p, s in zip(parts, sizes)]


def agree(ranks: Dist, settings: dict[str, Any]) -> None:
    """Every rank shows the others its resolved run (`settings`: plain data); all stop with the
    same one-line error unless every rank has the same run (a config file that differs between
    nodes, an override given to one process).

    Raises:
        RanksError: the ranks' settings differ (the first keys named).
    """
    if not ranks.active:
        return
    every = [flat_settings(json.loads(t)) for t in _gather_text(json.dumps(settings, sort_keys=True, default=str))]
    ours = every[0]
    for r, theirs in enumerate(every[1:], 1):
        diff = [f'{k}: {ours.get(k)!r} on process 0, {theirs.get(k)!r} on process {r}'
                for k in sorted(set(ours) | set(theirs)) if ours.get(k) != theirs.get(k)]
        if diff:
            raise RanksError(f'the {ranks.world} processes were given different runs ({"; ".join(diff[:3])}'
                              f'{f"; and {len(diff) - 3} more" if len(diff) > 3 else ""}): give every process the '
                              'same config, --set overrides and options')


def check_world(ranks: Dist, batch_size: int, videos: int) -> None:
    """The global batch `batch_size` shares evenly among the ranks, each with at least one video.

    Raises:
        RanksError: more processes than the training videos or the batch allow.
    """
    if not ranks.active:
        return
    if ranks.world > videos:
        raise RanksError(f'{ranks.world} processes, but the split has only {videos} training videos: each process '
                          f'needs at least one video a step; start torchrun with --nproc-per-node (x nodes) of at '
                          f'most {videos}')
    if batch_size % ranks.world:
        raise RanksError(f'train.batch_size {batch_size} (the global batch) does not share evenly among '
                          f'{ranks.world} processes: set it to a multiple of {ranks.world}, or start torchrun with '
                          'a --nproc-per-node that divides it')


def wrap_model(model: nn.Module, ranks: Dist, device: torch.device) -> nn.Module:
    """`model` as a training step calls it: itself in one process, else in DistributedDataParallel,
    its batch norm synchronised across ranks on CUDA (SyncBatchNorm refuses CPU tensors, so CPU
    ranks keep their own batch statistics). Convert batch norm before the optimiser is built:
    `convert_batch_norm`."""
    if not ranks.active:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == 'cuda' else None
    # every trained parameter must get a gradient each step (else its bucket is never reduced and
    # the ranks' weights part): find_unused_parameters cannot be used, as the support-set model's
    # decoder is used outside forward (its extra_loss), and static_graph gave wrong gradients
    return DistributedDataParallel(model, device_ids=ids)


def convert_batch_norm(model: nn.Module, ranks: Dist, device: torch.device) -> nn.Module:
    """`model` with SyncBatchNorm on CUDA under many ranks (same parameters and state-dict keys)."""
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if not (ranks.active and has_bn):
        return model
    if device.type == 'cuda':
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if ranks.main:
        print(f'batch norm: each of the {ranks.world} CPU processes normalises with its own batch statistics '
              '(SyncBatchNorm needs CUDA); the running statistics are rank 0\'s')
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (or `model` itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def average(ranks: Dist, value: float) -> float:
    """`value` averaged over the ranks (an epoch's mean loss: the support-set model's captioning
    term is each rank's own captions)."""
    if not ranks.active:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t)
    return t.item() / ranks.world


def gather_floats(ranks: Dist, value: float) -> list[float]:
    """Every rank's `value` in rank order (every rank calls it: a collective of many ranks)."""
    if not ranks.active:
        return [value]
    parts = [torch.zeros(1, dtype=torch.float64, device=_collective_device()) for _ in range(ranks.world)]
    dist.all_gather(parts, torch.tensor([value], dtype=torch.float64, device=_collective_device()))
    return [p.item() for p in parts]


def seed_rank(ranks: Dist, seed: int, *more: int) -> None:
    """Give rank r > 0 its own torch stream, from (seed, r, *more), once the model is made (every
    rank made the same weights from `seed`): else every rank draws the same dropout masks for its
    own videos. Rank 0 keeps the stream one process has, so its draws are those of a one-process run."""
    if ranks.rank:
        torch.manual_seed(int(np.random.SeedSequence([seed, ranks.rank, *more]).generate_state(1)[0]))


def _rng_state(device: torch.device) -> torch.Tensor:
    """This process's torch generators, CPU's then the device's, as one uint8 tensor."""
    parts = [torch.get_rng_state()]
    if device.type == 'cuda':  # dropout on the GPU draws from the device's generator
        parts.append(torch.cuda.get_rng_state(device))
    return torch.cat(parts)


def rng_states(ranks: Dist, device: torch.device) -> list[torch.Tensor]:
    """Every rank's generator states in rank order, for the checkpoint rank 0 writes (every rank
    calls it: a collective of many ranks)."""
    state = _rng_state(device)
    if not ranks.active:
        return [state]
    dev = _collective_device()
    parts = [torch.empty_like(state, device=dev) for _ in range(ranks.world)]
    dist.all_gather(parts, state.to(dev))
    return [p.cpu() for p in parts]


def restore_rng(state: torch.Tensor, device: torch.device) -> None:
    """Set this process's generators to `state` (`rng_states`'s entry of this rank)."""
    state = state.cpu()  # a checkpoint loaded onto the GPU: generator states are set from host bytes
    cpu = torch.get_rng_state().numel()
    torch.set_rng_state(state[:cpu].contiguous())
    if device.type == 'cuda' and state.numel() > cpu:
        torch.cuda.set_rng_state(state[cpu:].contiguous(), device)
