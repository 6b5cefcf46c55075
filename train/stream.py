"""Split parts streamed from expert stores larger than memory (DESIGN.md "Growing past one machine").

A part whose aggregated features exceed `train.memory_budget` is never loaded whole. DataLoader
worker processes read whole store chunks (the stores' unit of I/O) and aggregate them with
`train.data.aggregate`, the function the in-memory path uses, so a video's model inputs are the
same on both paths. Training reads a permutation of the chunks each epoch and draws videos from a
bounded shuffle buffer (WebDataset's approach); evaluation embeds a chunk at a time.

The order of an epoch's batches is a pure function of (seed, epoch, rank, world size) and the
shuffle buffer's size (`epoch_plan`): the main process plans it from video indices alone, and the
workers only read and aggregate the chunks it asks for, in its order (worker i reads chunks i,
i + W, ...; the DataLoader returns them round robin), so neither the number of workers nor their
timing changes it, and a resumed run continues exactly. Each rank reads its own share of the
chunks (`rank_world`: torch.distributed's rank and world size when it is initialised).

Memory: at most the budget's worth of data is held at once: the chunks in flight (each worker's
one being read plus its prefetched ones, and the one the main process consumes), the shuffle
buffer's videos and the batches being formed. A budget smaller than one chunk is an error.
Besides, the part keeps each video's row count and availability per expert (5 bytes).

Cost: the readers share the CPU with the training step (on a small machine, its cores), so a
unit's read is kept cheap: only the arrays the model uses are read, a unit's chunk sums are
checked on its first read in a run, and later reads take its lengths and availability from
that read (`StreamedPart.kept`) and read only its rows. Where a part's inputs repeat every epoch
(no window or segment sampling), epochs after the first read them back from a feature cache on
local disk (`train.stream_cache`) in the main process, with no reader process; while readers
run, the step takes the CPUs they leave (`step_threads`).
"""
from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shared.config import ConfigError
from shared.datasets import Manifest
from shared.resources import cpu_limit, format_bytes, memory_limit, parse_bytes
from shared.store import ExpertStore, open_store
from train.captions import CaptionData, CaptionEncoder
from train.config import TrainCfg
from train.extra import ExtraSources
from train.data import (SplitData, _copy, aggregate, aggregated_arrays, caption_groups, load_split, open_expert_store,
                        sampled_ids, split_captions, store_rows)
from train.models.base import ExpertInput, TextInput
from train.models.config import ExpertSpec
from train.sampling import Sampled, Sampler
from train.stream_cache import UnitCache, open_cache

__all__ = ['StreamedPart', 'StreamFeed', 'EpochPlan', 'default_readers', 'epoch_plan', 'load_part', 'memory_budget',
           'rank_world', 'step_threads', 'video_bytes']

#: the default budget's share of the memory the job may use (extraction's decode-ahead rule)
BUDGET_SHARE = 0.25
#: prefetched chunks per reader process at most (the budget may allow fewer)
MAX_PREFETCH = 2

Arrays = tuple[np.ndarray | None, ...]  # an expert's (x, available, mask, times), as `ExpertInput`


def rank_world() -> tuple[int, int]:
    """(rank, world size) from torch.distributed when it is initialised, else (0, 1)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def memory_budget(cfg: TrainCfg) -> tuple[int, str]:
    """(bytes, where the number comes from) of `train.memory_budget`."""
    if cfg.memory_budget is not None:
        return parse_bytes(cfg.memory_budget), 'train.memory_budget'
    limit = memory_limit()
    return int(limit * BUDGET_SHARE), f'a quarter of the {format_bytes(limit)} this job may use'


def video_bytes(spec: ExpertSpec, store: ExpertStore) -> tuple[int, int]:
    """(aggregated, read) bytes of one video of `spec` from `store`: what `aggregate` gives (float32
    features, masks, float32 times, availability), and what reading its chunk holds (float16 rows
    and float32 times, counted twice: `ExpertStore.read` holds the chunk and the rows it keeps)."""
    t, d = int(store.attrs['max_rows']), spec.dim
    if spec.aggregation in ('mean', 'max'):
        agg = d * 4 + 1
    else:
        keep = min(spec.max_tokens, t)
        agg = keep * (d * 4 + 1 + 8) + 1
    return agg, 2 * t * (d * 2 + 8) + 16


@dataclasses.dataclass
class StreamedPart:
    """A split part read from its stores a chunk at a time, never whole (the `SplitData` interface
    that training and evaluation use: video ids, captions, `video_batches`).

    Videos are in store order (the order of the first expert's rows), so that a chunk's videos are
    consecutive; the metrics do not depend on the videos' order.
    """

    video_ids: list[str]
    experts: tuple[ExpertSpec, ...]
    paths: dict[str, Path]
    rows: dict[str, np.ndarray]  # (N,) each video's row in each expert's store
    bounds: np.ndarray  # (U + 1,) the videos of unit u are bounds[u]:bounds[u + 1]
    captions: CaptionData
    caption_video: np.ndarray
    query: np.ndarray
    random_weights: list[str]
    workers: int = 0
    prefetch: int = 1
    sampled: Sampled | None = None  # a training part drawn by window or segment (`train.sampling`)
    #: items of extra training sources (`train.extra`), in memory: each epoch's draws join the stream
    extra: ExtraSources | None = None
    cache: UnitCache | None = None  # the aggregated units read so far (`train.stream_cache`), where kept
    #: (U,) the units read once in this run, which checked them against their chunk sums
    checked: np.ndarray = dataclasses.field(init=False)
    #: each video's (lengths, available) per expert, as a unit's first read found them: later reads of
    #: the unit read only its rows (`_Units`)
    kept: dict[str, tuple[np.ndarray, np.ndarray]] = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.checked = np.zeros(len(self.bounds) - 1, bool)
        self.kept = {spec.name: (np.zeros(len(self), np.int32), np.zeros(len(self), bool)) for spec in self.experts}

    def __len__(self) -> int:
        return len(self.video_ids)

    @property
    def epoch_size(self) -> int:
        """Training samples an epoch: every video, and the extra sources' draws."""
        return len(self) + (self.extra.size if self.extra is not None else 0)

    @property
    def unit_sizes(self) -> np.ndarray:
        return np.diff(self.bounds)

    def chunks(self, units: Sequence[int], key: int | None = None) -> Iterator[dict[str, Arrays]]:
        """The aggregated videos of `units`, in that order, read by the worker processes; with
        `key`, each cut to its sample's window of that epoch (`train.sampling`)."""
        units = np.asarray(units, np.int64)
        cache = self.cache if key is None else None  # a sampled epoch's windows are new each epoch
        cached = np.array([cache is not None and u in cache for u in units.tolist()], bool)
        read = units[~cached]  # the reader processes read only the units the cache lacks
        reader = _Units(self, read, key)
        # a generator of its own: by default a DataLoader draws its workers' seed from torch's, which
        # dropout on the CPU draws from and last.pt keeps, and an epoch resumed part way starts its
        # readers again: one draw more than the run it continues, and other masks (workers draw nothing)
        loader = iter(()) if not len(read) else iter(reader if self.workers == 0 else torch.utils.data.DataLoader(
            reader, batch_size=None, num_workers=self.workers, prefetch_factor=self.prefetch,
            generator=torch.Generator()))
        for u, hit in zip(units.tolist(), cached.tolist()):
            if hit:
                yield cache.get(u)
                continue
            data, first = next(loader)
            if first is not None:  # its first read: it arrived, so its chunks passed the check
                videos = slice(self.bounds[u], self.bounds[u + 1])
                for name, (lengths, available) in _unpack(*first).items():
                    self.kept[name][0][videos], self.kept[name][1][videos] = lengths, available
                self.checked[u] = True
            arrays = _unpack(*data)
            if cache is not None:
                cache.put(u, arrays)
            yield arrays

    def readers(self, epoch: int) -> int:
        """Reader processes that training epoch `epoch` runs beside the step: none once the cache
        holds the units (epochs after the first; a resumed run's first epoch, or a rank's units
        that another rank read before, read the stores with the step at its full threads). A
        function of the epoch and the settings only, so that a resumed run repeats the threads,
        and with them the float sums, of the run it continues."""
        return 0 if self.cache is not None and epoch > 0 else self.workers

    def close(self) -> None:
        """Remove the part's feature cache, if it has one (the run has ended)."""
        if self.cache is not None:
            self.cache.close()

    def video_batches(self, batch: int) -> Iterator[dict[str, ExpertInput]]:
        """Every video in order, a store chunk at a time (`batch` is the in-memory part's)."""
        for data in self.chunks(range(len(self.bounds) - 1)):
            yield {name: ExpertInput(*(None if a is None else torch.from_numpy(a) for a in f))
                   for name, f in data.items()}


class _Units(torch.utils.data.IterableDataset):
    """Reads and aggregates whole units of a `StreamedPart`; worker i of W takes units i, i + W, ..."""

    def __init__(self, part: StreamedPart, units: np.ndarray, key: int | None) -> None:
        self.experts, self.paths, self.rows, self.bounds = part.experts, part.paths, part.rows, part.bounds
        self.units, self.key, self.checked, self.kept = units, key, part.checked, part.kept
        # the workers cut windows; the caption encoder stays in the main process
        self.sampler = part.sampled.sampler if part.sampled is not None and key is not None else None

    def __iter__(self) -> Iterator[tuple[Packed, Packed | None]]:
        """(a unit's aggregated videos, and on its first read in the run what `StreamedPart.kept`
        keeps), each `_pack`ed."""
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        stores = {spec.name: open_store(self.paths[spec.name], warn_random=False) for spec in self.experts}
        for u in self.units[worker::workers].tolist():
            videos = np.arange(self.bounds[u], self.bounds[u + 1])
            again = bool(self.checked[u])
            out, first = {}, {}
            for spec in self.experts:
                # A unit is read every epoch, and each Zarr array read costs a call per chunk: after
                # the first read, which checks the chunk sums, only the rows are read again.
                arrays = aggregated_arrays(spec)
                if self.sampler is not None:  # a window is cut by the rows' times, drawn by the video's id
                    arrays = (*arrays, 'video_ids', 'timestamps')
                if again:
                    arrays = tuple(a for a in arrays if a not in ('lengths', 'available'))
                rows = stores[spec.name].read(rows=self.rows[spec.name][videos], arrays=arrays, verify=not again,
                                              lengths=self.kept[spec.name][0][videos] if again else None)
                if again:
                    rows.lengths, rows.available = (a[videos] for a in self.kept[spec.name])
                else:
                    first[spec.name] = (rows.lengths, rows.available)
                e = aggregate(spec, rows) if self.sampler is None else self.sampler.aggregate(spec, rows, self.key)
                out[spec.name] = (e.x, e.available, e.mask, e.times)
            yield _pack(out, info is not None), (None if again else _pack(first, info is not None))


#: arrays in one byte tensor, and where each lies in it: {name: ((dtype, shape, offset) or None, ...)}
Packed = tuple[torch.Tensor, dict[str, tuple[tuple[str, tuple[int, ...], int] | None, ...]]]


def _pack(groups: dict[str, Arrays], shared: bool) -> Packed:
    """`groups`' arrays copied into one byte tensor, in shared memory when `shared` (a reader
    process): the DataLoader passes each tensor through a file descriptor of its own, sent over a
    socket, which cost some ms per tensor on a loaded CPU (and an expert has up to four)."""
    layout, size = {}, 0
    for name, arrays in groups.items():
        where = []
        for a in arrays:
            if a is None:
                where.append(None)
                continue
            size = -(-size // 64) * 64  # each array aligned, as numpy's own are
            where.append((a.dtype.str, a.shape, size))
            size += a.nbytes
        layout[name] = tuple(where)
    buffer = torch.empty(size, dtype=torch.uint8)
    if shared:
        buffer.share_memory_()  # before it is filled: passing a tensor not yet shared copies it there
    view = buffer.numpy()
    for name, arrays in groups.items():
        for a, w in zip(arrays, layout[name]):
            if w is not None:
                view[w[2]:w[2] + a.nbytes] = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
    return buffer, layout


def _unpack(buffer: torch.Tensor, layout: dict[str, tuple[tuple[str, tuple[int, ...], int] | None, ...]]
            ) -> dict[str, Arrays]:
    """The arrays of `_pack`, as views of its buffer."""
    view = buffer.numpy()

    def array(dtype: str, shape: tuple[int, ...], offset: int) -> np.ndarray:
        return view[offset:offset + int(np.prod(shape)) * np.dtype(dtype).itemsize].view(dtype).reshape(shape)

    return {name: tuple(None if w is None else array(*w) for w in where) for name, where in layout.items()}


def load_part(manifest: Manifest, split: str, part: str, features_root: Path, experts: tuple[ExpertSpec, ...],
              captions: CaptionEncoder, cfg: TrainCfg, test_queries: bool = True,
              sampler: Sampler | None = None, cache: Path | None = None) -> SplitData | StreamedPart:
    """A split part in memory (`load_split`) or streamed, as `train.streaming` and the budget say;
    prints which and why. `sampler`: as for `load_split`. `cache`: the file of a streamed part's
    feature cache (`train.stream_cache`; a sampled part has none), None for none."""
    budget, source = memory_budget(cfg)
    ids, texts, owner, query = (sampled_ids(manifest, split, part) if sampler is not None
                                else split_captions(manifest, split, part, test_queries))
    opened = {spec.name: open_expert_store(features_root, manifest, spec.name) for spec in experts}
    sizes = [video_bytes(spec, opened[spec.name][0]) for spec in experts]
    # a sampled part in memory holds its store rows, not aggregates (half of what a read holds)
    total = sum(agg if sampler is None else read // 2 for agg, read in sizes) * len(ids)
    over = total > budget
    why = (f'aggregated features {format_bytes(total)} {">" if over else "<="} budget {format_bytes(budget)}, '
           f'{source}')
    if cfg.streaming == 'off' or (cfg.streaming == 'auto' and not over):
        print(f'{part} part: in memory ({why}{"; train.streaming=off" if cfg.streaming == "off" else ""})')
        return load_split(manifest, split, part, features_root, experts, captions, test_queries, sampler)
    stores = {name: store for name, (store, _) in opened.items()}
    rows = {spec.name: store_rows(stores[spec.name], ids, spec, f'{split}/{part}') for spec in experts}
    order = np.argsort(rows[experts[0].name], kind='stable')  # store order: a unit's videos are consecutive
    where = np.empty_like(order)
    where[order] = np.arange(len(order))
    unit = max(s.unit_size for s in stores.values())  # a store's unit of work: a chunk, or a shard file
    first = rows[experts[0].name][order]
    cuts = np.flatnonzero(np.diff(first // unit)) + 1
    bounds = np.concatenate([[0], cuts, [len(ids)]]).astype(np.int64)
    per_video = sum(agg for agg, _ in sizes)
    unit_bytes = unit * sum(agg + read for agg, read in sizes)
    held = (max(cfg.shuffle_buffer, 1) + 2 * cfg.batch_size) * per_video if part == 'train' else 0
    if budget < unit_bytes:
        raise ConfigError(f'train.memory_budget {format_bytes(budget)} ({source}) is smaller than one store chunk of '
                          f'{part} data ({unit} videos: {format_bytes(unit_bytes)} read and aggregated): raise '
                          f'train.memory_budget to at least {format_bytes(unit_bytes)}, or extract the stores with '
                          'smaller chunks')
    if budget - held < unit_bytes:
        raise ConfigError(f'train.memory_budget {format_bytes(budget)} ({source}) holds the shuffle buffer of '
                          f'{cfg.shuffle_buffer} videos and two batches ({format_bytes(held)}) but not one store chunk '
                          f'besides ({format_bytes(unit_bytes)}): lower train.shuffle_buffer or raise '
                          'train.memory_budget')
    workers, prefetch = _readers((budget - held) // unit_bytes, cfg.data_workers)
    kept, said = None, ''
    if cache is not None and sampler is not None:
        said = '; no feature cache: data.sample draws new rows every epoch'
    elif cache is not None:  # with a margin of 64 bytes an array a unit
        kept, said = open_cache(cache, total + (len(bounds) - 1) * len(experts) * 4 * 64)
        said = '; ' + said
    print(f'{part} part: streamed from the stores ({why}{"; train.streaming=on" if cfg.streaming == "on" else ""}): '
          f'{len(bounds) - 1} chunks of up to {unit} videos, {workers} reader processes, at most '
          f'{workers * prefetch + 1} chunks in flight'
          f'{f", shuffle buffer of {cfg.shuffle_buffer} videos" if part == "train" else ""}{said}')
    return StreamedPart([ids[i] for i in order], experts, {n: s.path for n, s in stores.items()},
                        {n: r[order] for n, r in rows.items()}, bounds, captions.encode(texts), where[owner], query,
                        [name for name, (_, random) in opened.items() if random], workers, prefetch,
                        Sampled(sampler, captions, experts) if sampler is not None else None, cache=kept)


def default_readers() -> tuple[int, int]:
    """(worker processes, prefetched chunks per worker) by default, with a budget that is no limit."""
    return _readers(1 << 30, None)


def _readers(in_flight: int, asked: int | None) -> tuple[int, int]:
    """(worker processes, prefetched chunks per worker) keeping at most `in_flight` chunks in
    memory: each worker's prefetched ones (the one it reads among them) and the main process's."""
    # On two CPUs a reader process leaves the step one thread, and the step on one thread plus the
    # reader beside it took longer than the step on two threads after the main process reads
    # (the first epoch, this 2-CPU machine: MEE 403-467 against 541-595 pairs/s, MMT demo
    # 206-244 against 303-322; BENCHMARKS.md)
    cpus = cpu_limit()
    workers = asked if asked is not None else (min(4, cpus - 1) if cpus > 2 else 0)
    workers = min(workers, in_flight - 1)
    if workers <= 0:
        return 0, 1
    return workers, max(1, min(MAX_PREFETCH, (in_flight - 1) // workers))


@dataclasses.dataclass
class EpochPlan:
    """One rank's epoch: the units it reads, in order, and the videos the shuffle buffer emits.

    Stream positions number the videos of `units` in reading order. Arrival p goes into buffer
    slot `slot[p]`; emission j is stream position `emit[j]`, made once `when[j]` videos have
    arrived (`_shuffle`). Only `steps` batches are emitted, the same number on every rank.
    """

    units: np.ndarray
    slot: np.ndarray
    emit: np.ndarray
    when: np.ndarray
    steps: int
    rng: np.random.Generator  # this rank's generator, for the captions
    is_extra: np.ndarray


def epoch_plan(unit_sizes: np.ndarray, batch_size: int, buffer: int, rng: np.random.Generator, rank: int,
               world: int, extra: int = 0) -> EpochPlan:
    """The plan of an epoch: a pure function of its arguments (`rng` seeded by (seed, epoch));
    `extra` items of extra sources join the epoch, rank r taking items r, r + world, ..."""
    perm = rng.permutation(len(unit_sizes))  # one permutation for all ranks; each reads its own share
    shares = [perm[r::world] for r in range(world)]
    counts = [int(unit_sizes[s].sum()) + len(range(r, extra, world)) for r, s in enumerate(shares)]
    steps = min(counts) // batch_size
    if steps == 0:
        raise ConfigError(f'train.batch_size {batch_size} is larger than the training videos of one of the {world} '
                          f'ranks ({min(counts)})')
    local = np.random.default_rng([int(rng.integers(1 << 62)), rank, world])
    units = shares[rank]
    slot, emit, when = _shuffle(int(unit_sizes[units].sum()), max(buffer, 1), local)
    n = steps * batch_size
    is_extra = np.zeros(counts[rank], bool)
    if extra:  # the rank's extra items take random places among its samples (none drawn without them)
        is_extra[:len(range(rank, extra, world))] = True
        is_extra = local.permutation(is_extra)
    is_extra = is_extra[:n]
    own = n - int(is_extra.sum())
    return EpochPlan(units, slot, emit[:own], when[:own], steps, local, is_extra.reshape(steps, batch_size))


def _shuffle(m: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """WebDataset's shuffle buffer over `m` arrivals, as (slot of each arrival, emitted arrivals in
    order, how many had arrived at each emission). Emitting starts once a tenth of the buffer is
    filled, and two videos arrive per emission until it is full, so an epoch does not wait for
    the whole buffer to fill; at the stream's end the rest leave in random order. A video stays
    in its slot from arrival to emission; a freed slot takes the next arrival."""
    free, occupied = list(range(size - 1, -1, -1)), []
    occupant = [0] * size
    slot, emit, when = np.empty(m, np.int64), [], []
    initial = max(1, size // 10)
    p = 0
    while p < m:
        for _ in range(2 if len(occupied) < size - 1 else 1):
            if p < m:
                s = free.pop()
                slot[p], occupant[s] = s, p
                occupied.append(s)
                p += 1
        if len(occupied) >= initial or len(occupied) == size:
            j = int(rng.integers(len(occupied)))
            s = occupied[j]
            occupied[j] = occupied[-1]
            occupied.pop()
            emit.append(occupant[s])
            when.append(p)
            free.append(s)
    rest = [occupant[s] for s in occupied]
    emit += [rest[i] for i in rng.permutation(len(rest))]
    when += [m] * len(rest)
    return slot, np.asarray(emit, np.int64), np.asarray(when, np.int64)


class StreamFeed:
    """A streamed training part's batches on `device` (the `TrainFeed` interface: ``data`` and
    ``epoch``); batches are copied from pinned memory without waiting on CUDA."""

    def __init__(self, data: StreamedPart, device: torch.device, buffer: int) -> None:
        self.data, self.device, self.buffer = data, torch.device(device), buffer
        self._kept_slots: tuple[dict, dict[str, list[np.ndarray | None]]] | None = None  # `_slots`

    def epoch(self, batch_size: int, rng: np.random.Generator, skip: int = 0
              ) -> Iterator[tuple[dict[str, ExpertInput], TextInput]]:
        """The epoch's batches in `epoch_plan`'s order for this rank (`rng` seeded by (seed, epoch)),
        from its `skip`-th on: a resumed epoch draws the plan whole, but builds no batch before it
        and reads only the units with a video in a batch after (a preempted HowTo100M job resumed
        part way through an epoch does not read its first part again).
        `batch_size` is the global batch: each of the ranks takes its share (`train.distributed`)."""
        part = self.data
        key = part.sampled.epoch_key(rng) if part.sampled is not None else None
        rank, world = rank_world()
        # the epoch's extra items: the generator's first draw, as in memory (`SplitData.epoch_plan`),
        # the same on every rank, which takes its share
        picks = part.extra.draw(rng)[rank::world] if part.extra is not None else np.zeros(0, np.int64)
        plan = epoch_plan(part.unit_sizes, batch_size // world, self.buffer, rng, rank, world,
                          part.extra.size if part.extra is not None else 0)
        sizes = part.unit_sizes[plan.units]
        starts = np.concatenate([[0], np.cumsum(sizes)])
        video = np.concatenate([np.arange(part.bounds[u], part.bounds[u + 1]) for u in plan.units])
        order, groups = caption_groups(part.caption_video, len(part))
        v = video[plan.emit]
        # a sampled part has no captions to choose: each video's sample makes its own
        caps = v if key is not None else order[groups[v] + plan.rng.integers(0, groups[v + 1] - groups[v])]
        extra_caps = _extra_captions(part.extra, picks, plan.rng)
        k = min(max(self.buffer, 1), int(starts[-1]))
        local = batch_size // world
        own = (~plan.is_extra).sum(1)  # each step's videos of the stream; extra items take the other places
        first = np.concatenate([[0], np.cumsum(own)])  # the emission that begins each step's videos
        # The buffer in numpy: torch's indexed copies on a CPU take 60x longer (21 ms against 0.35 ms
        # for 64 rows of 2048). Emissions are copied once, straight into their batch's arrays, and
        # the buffer is kept from epoch to epoch: copies into new memory (page faults) cost as much.
        slots: dict[str, list[np.ndarray | None]] = {}
        filling: dict[int, Any] = {}  # step -> its batch's arrays, {expert: [arrays]}, part filled
        # emissions placed, steps made, extra items batched: those of the skipped steps count as done
        # (a run resumed with more processes may have done more steps of the epoch than it now has)
        skip = min(skip, plan.steps)
        emitted, step, taken = int(first[skip]), skip, int((local - own[:skip]).sum())

        def batches() -> Iterator[tuple[dict[str, ExpertInput], TextInput]]:
            nonlocal step, taken
            while step < plan.steps and first[step + 1] <= emitted:
                more = local - int(own[step])
                batch = filling.pop(step, None) if own[step] else None
                step, taken = step + 1, taken + more
                yield self._put(None if batch is None else {n: tuple(f) for n, f in batch.items()},
                                caps[first[step - 1]:first[step]], key, plan.is_extra[step - 1],
                                picks[taken - more:taken], extra_caps[taken - more:taken])

        if key is None and part.cache is not None and all(u in part.cache for u in plan.units.tolist()):
            # every unit cached (a later epoch): each batch's videos read straight from the cache
            unit_of = np.repeat(plan.units, sizes)  # stream position -> its unit, and its place there
            place = np.arange(int(starts[-1])) - np.repeat(starts[:-1], sizes)
            for s in range(skip, plan.steps):
                p = plan.emit[first[s]:first[s + 1]]
                if len(p):
                    filling[s] = part.cache.gather(unit_of[p], place[p])
                emitted = int(first[s + 1])
                yield from batches()
            return
        # a unit is read when one of its videos is emitted from the first step on: the skipped
        # steps' videos are never placed, and their slots are rewritten before another video's read
        emission = np.full(int(starts[-1]), -1, np.int64)  # stream position -> its emission (-1: none, past the last step)
        emission[plan.emit] = np.arange(len(plan.emit))
        last = np.full(len(sizes), -1, np.int64)  # each unit's last emission
        np.maximum.at(last, np.repeat(np.arange(len(sizes)), sizes), emission)
        needed = last >= emitted
        reader = part.chunks(plan.units[needed], key)
        try:
            for i in range(len(plan.units)):
                a, b = int(starts[i]), int(starts[i + 1])
                data = next(reader) if needed[i] else None
                if data is not None and not slots:
                    slots = self._slots(data, k)
                hi = int(np.searchsorted(plan.when, b + 1))  # the emissions once arrivals a..b-1 are in
                while emitted < hi:  # each step's share of them, into its batch, before the unit overwrites slots
                    s = int(np.searchsorted(first, emitted, side='right')) - 1
                    end = min(hi, int(first[s + 1]))
                    if s not in filling:
                        filling[s] = {n: [None if t is None else np.empty((int(own[s]), *t.shape[1:]), t.dtype)
                                          for t in f] for n, f in slots.items()}
                    # a unit not read has no video emitted here: these come from the buffer
                    _emit(filling[s], emitted - int(first[s]), slots, data or {}, plan.emit[emitted:end], plan.slot, a)
                    emitted = end
                if data is not None:
                    _arrive(slots, data, plan.slot[a:b])
                yield from batches()
                if emitted == len(plan.emit):  # the rest of the stream is not needed: its readers stop
                    break
        finally:
            reader.close()
        yield from batches()  # steps of extra items only, after the stream's last video

    def _slots(self, data: dict[str, Arrays], k: int) -> dict[str, list[np.ndarray | None]]:
        """The shuffle buffer for `k` videos shaped like `data`'s: the last epoch's where it fits (its
        contents are stale, but a slot is always written in an epoch before it is read)."""
        want = {n: [None if t is None else ((k, *t.shape[1:]), t.dtype) for t in f] for n, f in data.items()}
        kept = self._kept_slots
        if kept is None or kept[0] != want:
            kept = (want, {n: [None if w is None else np.empty(*w) for w in f] for n, f in want.items()})
            self._kept_slots = kept
        return kept[1]

    def _put(self, batch: dict[str, Arrays] | None, caps: np.ndarray, key: int | None, places: np.ndarray,
             picks: np.ndarray, extra_caps: np.ndarray) -> tuple[dict[str, ExpertInput], TextInput]:
        """A batch on the device with its captions `caps` (with `key`: the samples of videos `caps`);
        extra items `picks` with their captions `extra_caps` take the batch's `places`."""
        sampled = self.data.sampled
        text = (self.data.captions.batch(caps) if key is None or sampled is None
                else sampled.text([self.data.video_ids[i] for i in caps], key))
        if len(picks):
            extra = self.data.extra.data
            arrays = {n: (e.x[picks], e.available[picks], *(None if a is None else a[picks] for a in (e.mask, e.times)))
                      for n, e in extra.experts.items()}
            batch = arrays if batch is None else {n: _place(batch[n], arrays[n], places) for n in arrays}
            text = _place_text(text, extra.captions.batch(extra_caps), places)
        return ({n: ExpertInput(*(None if a is None else _copy(torch.from_numpy(a), self.device) for a in f))
                 for n, f in batch.items()},
                TextInput(_copy(text.x, self.device), _copy(text.mask, self.device)))


def _extra_captions(extra: ExtraSources | None, picks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One caption of each extra item `picks`, at random."""
    if extra is None or not len(picks):
        return np.zeros(0, np.int64)
    order, groups = caption_groups(extra.data.caption_video, len(extra.data))
    return order[groups[picks] + rng.integers(0, groups[picks + 1] - groups[picks])]


def _place(own: Arrays, extra: Arrays, places: np.ndarray) -> Arrays:
    """A batch's arrays: `extra`'s rows at `places`, `own`'s at the others."""
    out = []
    for a, b in zip(own, extra):
        if a is None:
            out.append(None)
            continue
        t = np.empty((len(places), *a.shape[1:]), a.dtype)
        t[~places], t[places] = a, b
        out.append(t)
    return tuple(out)


def _place_text(own: TextInput, extra: TextInput, places: np.ndarray) -> TextInput:
    """A batch's captions: `extra`'s at `places`, `own`'s at the others."""
    at = torch.from_numpy(places)
    out = []
    for a, b in ((own.x, extra.x), (own.mask, extra.mask)):
        t = torch.empty((len(places), *a.shape[1:]), dtype=a.dtype)
        t[~at], t[at] = a, b.to(a.dtype)
        out.append(t)
    return TextInput(*out)


def _emit(out: dict[str, list[np.ndarray | None]], at: int, slots: dict[str, list[np.ndarray | None]],
          data: dict[str, Arrays], emit: np.ndarray, slot: np.ndarray, start: int) -> None:
    """Emissions `emit` (stream positions; the arriving unit's from `start`) into rows at.. of a
    batch's arrays `out`: from the buffer those that arrived before the unit (read before the unit
    is written there), from the unit those that arrived with it."""
    old = emit < start
    whole = bool(old.all()) or not old.any()
    rows = np.arange(at, at + len(emit))
    for name, fields in slots.items():
        for k, s in enumerate(fields):
            if s is None:
                continue
            t = out[name][k]
            if whole:  # one copy, with no temporary ('clip': a checked take buffers its output)
                src, idx = (s, slot[emit]) if old[0] else (data[name][k], emit - start)
                np.take(src, idx, axis=0, out=t[at:at + len(emit)], mode='clip')
            else:
                t[rows[old]] = s[slot[emit[old]]]
                t[rows[~old]] = data[name][k][emit[~old] - start]


def _arrive(slots: dict[str, list[np.ndarray | None]], data: dict[str, Arrays], slot: np.ndarray) -> None:
    """A unit's videos into their buffer slots (where one slot takes several, the last stays)."""
    dst, first = np.unique(slot[::-1], return_index=True)
    src = len(slot) - 1 - first
    for name, fields in slots.items():
        for s, t in zip(fields, data[name]):
            if s is not None:
                s[dst] = t[src]


@contextlib.contextmanager
def step_threads(feed: object, epoch: int) -> Iterator[int]:
    """Training epoch `epoch` of `feed` with the step's torch threads at the CPUs less the reader
    processes that run beside it (at least one), and the thread count as it was afterwards (tests
    call `main` in process). On a CPU with no core to spare, two threads and a reader process on
    two cores lose far more than the reader's time: each parallel operation of the step waits at
    its end for the thread the reader stopped. Yields the step's threads."""
    before = torch.get_num_threads()
    readers = feed.data.readers(epoch) if isinstance(feed, StreamFeed) else 0
    threads = min(before, max(1, cpu_limit() - readers)) if readers else before
    if threads != before:
        torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
