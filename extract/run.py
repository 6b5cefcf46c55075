"""The extraction runner: one decode per video feeds every selected expert; whole chunks per store.

    python -m extract --dataset demo --expert all
    python -m extract --dataset folder:/videos --expert object,scene --shard 3 --num-shards 64

Work is done chunk by chunk (the stores' unit): the videos of a chunk are decoded ahead of the
models (decord worker processes, or NVDEC threads on the GPU), each expert batches its rows across
videos, and when the last video of a chunk is through, every store gets that chunk written (by a
writer thread, status last) while the next chunk is computed. Results leave the GPU through
asynchronous copies, so the GPU never waits for the host between batches. A rerun skips finished
chunks, so a killed job loses only the chunks in flight.
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures as cf
import contextlib
import dataclasses
import errno
import json
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from extract.decoders import DECODERS, choose_decoder, spread
from extract.nvdec import DecoderStalled
from extract.pool import DECODE_WINDOW_S, DecodePool
from extract.sampling import DecodedVideo
from extract.weights import WeightsError
from shared.config import ConfigError, data_root_default, features_root_default, parse_overrides
from shared.datasets import DatasetError, load_manifest, parse_dataset_options
from shared.device import DEVICE_HELP, pick_device
from shared.logs import setup_logging
from shared.media import count_media, media_unit
from shared.resources import cpu_limit
from shared.store import (AUTO_CHUNKS_PER_SHARD, DONE, FAILED, PENDING, SHARD_FROM_VIDEOS, ChunkData, ExpertStore,
                          StoreError, StoreSpec, VideoResult, create_replacement, create_store, finish_swap, held_store,
                          is_store, open_store, pack_chunk, replacement_path, shard_chunks, store_path, swap_in)

__all__ = ['RunOptions', 'build_experts', 'load_experts', 'run', 'main', 'open_stores']

_logger = logging.getLogger(__name__)

INTERRUPTED = '\ninterrupted: finished chunks are saved; rerun the same command to continue'


@dataclasses.dataclass
class RunOptions:
    """One extraction run (the CLI's options)."""

    dataset: str
    experts: list[str]
    data_root: Path = dataclasses.field(default_factory=data_root_default)
    features_root: Path = dataclasses.field(default_factory=features_root_default)
    shard: int = 0
    num_shards: int = 1
    device: str = 'auto'
    decoder: str = 'auto'
    batch_size: int | None = None
    weights: str | None = None
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    dataset_options: dict[str, str] = dataclasses.field(default_factory=dict)
    retry_failed: bool = False
    workers: int = -1
    chunk_size: int | None = None
    chunks_per_shard: int | None = None
    overwrite: bool = False
    progress: bool = True
    decode_window: float = DECODE_WINDOW_S

    def __post_init__(self) -> None:
        if self.num_shards < 1 or not 0 <= self.shard < self.num_shards:
            raise ConfigError(f'--shard must be 0 to --num-shards - 1, and --num-shards at least 1; '
                              f'got shard {self.shard} of {self.num_shards}')
        if not 0 <= self.decode_window < float('inf'):  # written so that NaN fails too
            raise ConfigError(f'--decode-window must be seconds >= 0 (0: each video whole), got {self.decode_window}')


@dataclasses.dataclass
class _Tally:
    done: int = 0
    failed: int = 0
    skipped: int = 0
    available: int = 0
    errors: list[str] = dataclasses.field(default_factory=list)


class _Batcher:
    """Rows of one expert (uint8 frames or clips on its device), queued across the videos of a
    chunk, and preprocessed and run `batch_size` at a time.

    A chunk's last, partial batch is launched when the chunk is fed (`launch`), and its results
    are gathered later (`collect`), so the GPU computes one chunk's tail while the host feeds the
    next. Batches never mix chunks: a resumed run batches every chunk as an uninterrupted one does,
    and writes the same arrays. A batch that raises is redone a video's rows at a time, so a video
    the expert cannot take fails alone (`failures`), and the other videos of its batch go on.
    """

    def __init__(self, expert: Any) -> None:
        self.expert = expert
        self.inputs: list[Any] = []
        self.owners: list[tuple[int, int, int, int]] = []  # (row, part, first output row, count)
        self.queued = 0
        self.out: dict[int, list[np.ndarray]] = {}  # row -> its parts' features (a part per decode window)
        self.failed: dict[int, str] = {}  # row -> why the expert failed on it
        # (owners, host features, ready event), oldest first
        self.pending: collections.deque[tuple[list[tuple[int, int, int, int]], Any, Any]] = collections.deque()
        self.waited = 0.0  # seconds `collect` waited for the device's results

    def add(self, row: int, x: Any) -> None:
        """Queue rows `x` of video `row`, after those added for it before (its earlier windows)."""
        parts = self.out.setdefault(row, [])
        parts.append(np.zeros((len(x), self.expert.cfg.feature_dim), np.float32))
        if not len(x):  # no rows (a video cut short before its first whole clip): nothing to batch
            return
        self.inputs.append(x)
        self.owners.append((row, len(parts) - 1, 0, len(x)))
        self.queued += len(x)
        while self.queued >= self.expert.batch_size:
            self._run(self.expert.batch_size)

    def launch(self) -> None:
        """Run what is queued (the end of a chunk), without waiting for it."""
        while self.queued:
            self._run(min(self.queued, self.expert.batch_size))

    def collect(self, rows: Collection[int]) -> dict[int, np.ndarray]:
        """The features of `rows` (launched, the oldest in `pending`), once they are on the host."""
        while self.pending and self.pending[0][0][0][0] in rows:
            taken, host, ready = self.pending[0]
            if ready is not None:
                t0 = time.perf_counter()
                ready.synchronize()
                self.waited += time.perf_counter() - t0
            feats, pos = host.numpy(), 0
            for row, part, start, k in taken:
                self.out[row][part][start:start + k] = feats[pos:pos + k]
                pos += k
            self.pending.popleft()
        return {r: np.concatenate(self.out.pop(r)) for r in rows if r in self.out}

    def failures(self, rows: Collection[int]) -> dict[int, str]:
        """Why the expert failed on each of `rows` that it failed on (once `collect`ed)."""
        return {r: self.failed.pop(r) for r in rows if r in self.failed}

    def _run(self, n: int) -> None:
        import torch

        taken, parts, left = [], [], n
        while left:
            x = self.inputs[0]
            row, part, start, count = self.owners[0]
            k = min(left, count - start)
            parts.append(x[start:start + k])
            taken.append((row, part, start, k))
            if start + k == count:
                self.inputs.pop(0)
                self.owners.pop(0)
            else:
                self.owners[0] = (row, part, start + k, count)
            left -= k
        try:
            feats = self._forward(parts)
        except (KeyboardInterrupt, MemoryError, torch.OutOfMemoryError):
            raise  # not one video's fault: the run stops, and says so
        except Exception:  # noqa: BLE001 - one video's rows may be the cause: each video's alone, so it fails alone
            _logger.debug('%s: batch failed, redoing it a video at a time', self.expert.name, exc_info=True)
            feats = torch.cat([self._alone(row, p) for (row, _, _, _), p in zip(taken, parts)])
        ready = None
        if feats.is_cuda:  # copy out without waiting: the next batch is queued behind it
            host = torch.empty(feats.shape, dtype=feats.dtype, pin_memory=True)
            host.copy_(feats, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record()
            feats = host
        self.pending.append((taken, feats, ready))
        self.queued -= n

    def _forward(self, parts: list[Any]) -> Any:
        import torch

        # preprocessed a batch at a time: a long video's clips, as floats at once, could fill the device
        x = [self.expert.preprocess(p) for p in parts]
        return self.expert.forward(x[0] if len(x) == 1 else torch.cat(x))

    def _alone(self, row: int, part: Any) -> Any:
        """One video's rows of a failed batch: their features, or zeros and the video failed."""
        import torch

        if row not in self.failed:
            try:
                return self._forward([part])
            except (KeyboardInterrupt, MemoryError, torch.OutOfMemoryError):
                raise
            except Exception as err:  # noqa: BLE001 - models and preprocessing raise many types on odd input
                self.failed[row] = _failure(self.expert, err)
        return torch.zeros((len(part), self.expert.cfg.feature_dim), dtype=torch.float32, device=self.expert.device)


class _Uploader:
    """Host frames to the device on a CUDA stream of their own.

    A copy from pageable host memory goes through the driver's pinned staging memory, and the
    driver may hold the host until the work queued before the copy on its stream is done (CUDA's
    "API synchronization behavior"). On the models' stream each video's copy could then wait for
    every forward pass queued before it: the host idle while the GPU works, then the GPU idle
    while the host prepares the next videos. On a separate stream a copy waits only for earlier
    copies; the models' stream waits for it through an event.

    Staging host frames through pinned memory first was measured slower end to end on an H100
    host (23.7 against 31.4 videos/s, BENCHMARKS.md), so the copy is from pageable memory.
    """

    def __init__(self, device: Any) -> None:
        import torch

        self.device = torch.device(device)
        self.stream = torch.cuda.Stream(self.device) if self.device.type == 'cuda' else None

    def __call__(self, host: Any) -> Any:
        """A CPU tensor's copy on the device, ready for the current stream's next kernels."""
        import torch

        if self.stream is None:
            return host.to(self.device)
        with torch.cuda.stream(self.stream):
            x = host.to(self.device, non_blocking=True)
        current = torch.cuda.current_stream(self.device)
        current.wait_stream(self.stream)
        x.record_stream(current)  # allocated on the copy stream, used (and freed) on this one
        return x


class _VideoWorker:
    """A per-video expert (speech, OCR, face, audio) on a thread of its own, fed through a bounded
    queue, so that it never holds up the loop that feeds the frame and clip experts, nor they it.

    Videos are processed `videos_per_batch` at a time through `process_batch` (whisper decodes
    many videos' windows together, MTCNN sees many videos' frames), on a CUDA stream of the
    thread's own, so its kernels interleave with the other experts' instead of queueing behind
    them. `collect` flushes what is queued (so a chunk's tail shares its batch with the next
    chunk's head) and returns the rows asked for. A batch that raises is redone a video at a
    time, so one bad video fails alone.
    """

    _STOP = object()
    THREAD = 'expert-'  # its thread's name, then the expert's: what `exit_cli` looks for

    def __init__(self, expert: Any, device: Any, depth: int) -> None:
        import queue
        import threading

        import torch

        self.expert = expert
        self.batch = max(1, int(getattr(expert, 'videos_per_batch', 16)))
        self.queue: queue.Queue = queue.Queue(maxsize=max(depth, self.batch))
        self.results: dict[int, VideoResult] = {}
        self.error: BaseException | None = None
        self.keep: frozenset[int] | None = None  # when set (an interrupted run), the only rows still processed
        self.busy = 0.0  # seconds spent processing
        self.blocked = 0.0  # seconds the feeding loop waited for room in the queue
        self.stream = torch.cuda.Stream(device) if torch.device(device).type == 'cuda' else None
        self.thread = threading.Thread(target=self._loop, name=f'{self.THREAD}{expert.name}', daemon=True)
        self.thread.start()

    def submit(self, row: int, inputs: Any) -> None:
        t0 = time.perf_counter()
        self._put((row, inputs))
        self.blocked += time.perf_counter() - t0

    def collect(self, rows: Collection[int], drop_others: bool = False,
                tick: Callable[[], None] | None = None) -> dict[int, VideoResult]:
        """The results of `rows` (all submitted before), once processed. With `drop_others` (an
        interrupted run), the videos submitted after them (the unfinished chunk, redone by a rerun)
        are dropped unprocessed, unless a batch has already taken them: the run does not wait for them.
        `tick` is called every half second of the wait (the progress bar's clock)."""
        import threading

        if drop_others:
            self.keep = frozenset(rows)
        flushed = threading.Event()
        self._put(flushed)
        while not flushed.wait(0.5):
            self._raise()
            if tick is not None:
                tick()
        self._raise()
        return {r: self.results.pop(r) for r in rows if r in self.results}

    def close(self, wait: bool = True) -> None:
        """Stop the thread (it is a daemon: one busy with a long batch never keeps the process alive).
        Without `wait` (a second Ctrl-C) it is told to stop but not waited for; `exit_cli` then ends
        the process without letting it finish its batch."""
        import queue

        if self.thread.is_alive():
            while True:  # what is still queued is not wanted any more (a failed or interrupted run)
                try:
                    self.queue.get_nowait()
                except queue.Empty:
                    break
            try:
                self.queue.put(self._STOP, timeout=5 if wait else 0)
            except queue.Full:  # still busy: left to end with the process
                return
            if wait:
                self.thread.join(timeout=60)

    def _put(self, item: Any) -> None:
        """Into the queue, waiting for room, but never for a thread that has died."""
        import queue

        while True:
            self._raise()
            try:
                self.queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error
        if not self.thread.is_alive():
            raise RuntimeError(f'the {self.expert.name} worker stopped')

    def _loop(self) -> None:
        import contextlib
        import threading

        import torch

        pending: list[tuple[int, Any]] = []
        try:
            with torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext():
                while True:
                    item = self.queue.get()
                    if item is self._STOP:
                        return
                    if isinstance(item, threading.Event):
                        pending = [p for p in pending if self.keep is None or p[0] in self.keep]
                        while pending:
                            self._process(pending[:self.batch])
                            pending = pending[self.batch:]
                        item.set()
                        continue
                    if self.keep is None or item[0] in self.keep:
                        pending.append(item)
                    if len(pending) >= self.batch:
                        self._process(pending)
                        pending = []
        except BaseException as err:  # noqa: BLE001 - handed to the feeding thread, which raises it
            self.error = err

    def _process(self, items: list[tuple[int, Any]]) -> None:
        t0 = time.perf_counter()
        try:
            results = self.expert.process_batch([x for _, x in items])
            if len(results) != len(items):
                raise RuntimeError(f'{len(results)} results for {len(items)} videos')
        except (KeyboardInterrupt, MemoryError):
            raise
        except Exception:  # noqa: BLE001 - one video may be the cause: each alone, so it fails alone
            _logger.debug('%s: batch failed, redoing its videos one at a time', self.expert.name, exc_info=True)
            results = [_guarded(self.expert, x) for _, x in items]
        for (row, _), result in zip(items, results):
            self.results[row] = result
        self.busy += time.perf_counter() - t0


@dataclasses.dataclass
class _Chunk:
    """One chunk from feeding its videos to writing it into every active expert's store."""

    index: int
    rows: range
    active: list[Any]
    redo: dict[str, list[int]]
    results: dict[str, dict[int, VideoResult]]  # rows done without a batch: failed, per-video experts
    stamps: dict[str, dict[int, list[np.ndarray]]]  # a batched expert's row times, a part per decode window
    # a per-video expert's frames and their times, a part per window, until the video's last window
    parts: dict[str, dict[int, list[tuple[np.ndarray, np.ndarray]]]] = dataclasses.field(default_factory=dict)
    written: bool = False


def _shard_from_env() -> tuple[int, int] | None:
    """SLURM job arrays: shard = task id - min task id, num_shards = task count."""
    tid, count = os.environ.get('SLURM_ARRAY_TASK_ID'), os.environ.get('SLURM_ARRAY_TASK_COUNT')
    if tid is None or count is None:
        return None
    try:
        return int(tid) - int(os.environ.get('SLURM_ARRAY_TASK_MIN', '0')), int(count)
    except ValueError:
        raise ConfigError(f'SLURM_ARRAY_TASK_ID={tid!r}, SLURM_ARRAY_TASK_COUNT={count!r}: not whole numbers '
                          '(pass --shard and --num-shards)') from None


def _did_you_mean(name: str, known: Collection[str]) -> str:
    """'; did you mean fps?' for a close name among `known` (a typo's fix), else ''."""
    import difflib

    close = difflib.get_close_matches(name, sorted(known), n=2)
    return f'; did you mean {" or ".join(close)}?' if close else ''


def _settings_for(name: str, opts: RunOptions) -> dict[str, Any]:
    """`--set key=value` (every selected expert whose config has it) and `--set expert.key=value`."""
    from extract.experts import create_expert
    from extract.presets import dataset_settings

    fields = {n: create_expert(n).settings for n in opts.experts}
    out: dict[str, Any] = {}
    preset = {k: v for k, v in dataset_settings(opts.dataset, opts.data_root).items()
              if k.rpartition('.')[2] in fields[name] and k.rpartition('.')[0] in ('', name.split('.')[0], name)}
    for key, value in preset.items():
        out[key.rpartition('.')[2]] = value
    for key, value in opts.settings.items():
        target, _, sub = key.rpartition('.')
        if target and target in opts.experts:
            if sub not in fields[target]:
                raise ConfigError(f'--set {key}: {target} has no setting {sub!r}{_did_you_mean(sub, fields[target])} '
                                  f'(its settings: {", ".join(sorted(fields[target]))})')
            if target == name:
                out[sub] = value
        elif any(key in f for f in fields.values()):
            if key in fields[name]:
                out[key] = value
        else:
            known = sorted(set().union(*fields.values()))
            raise ConfigError(f'--set {key}: not a setting of any selected expert{_did_you_mean(key, known)} (settings: '
                              f'{", ".join(known)}; or EXPERT.SETTING for one of {", ".join(opts.experts)})')
    if opts.weights is not None:
        out['weights'] = opts.weights
    if opts.batch_size is not None:
        out['batch_size'] = opts.batch_size
    return out


DEFAULT_CHUNK_SIZE = 32


def _layout(manifest: Any, experts: list[Any], opts: RunOptions) -> tuple[int, int | None]:
    """(videos per chunk, chunks per shard file): --chunk-size and --chunks-per-shard, else those
    of the stores already there (a rerun resumes), else the defaults (chunks per shard: None, the
    store's rule by video count). Every store of a run gets the same, so that its units of work
    hold the same videos."""
    chunk_size, per_shard = opts.chunk_size, opts.chunks_per_shard
    if not opts.overwrite:
        for e in experts:
            path = store_path(opts.features_root, manifest.name, e.name)
            if is_store(path):
                store = open_store(path, warn_random=False)
                chunk_size = chunk_size if chunk_size is not None else store.chunk_size
                per_shard = per_shard if per_shard is not None else store.chunks_per_shard
                break
    return chunk_size if chunk_size is not None else DEFAULT_CHUNK_SIZE, per_shard


def open_stores(manifest: Any, experts: list[Any], opts: RunOptions) -> dict[str, ExpertStore]:
    """Each expert's store, made or opened to resume. With `opts.overwrite`, the store that the run
    writes is a replacement built beside the existing one (`create_replacement`), swapped in by
    `_finish` once complete: a run that stops or fails leaves the existing store as it was."""
    stores = {}
    opts.chunk_size, per_shard = _layout(manifest, experts, opts)
    for e in experts:
        info = e.store_info()
        spec = StoreSpec(dataset=manifest.name, source=manifest.source, expert=e.name, feature_dim=e.cfg.feature_dim,
                         max_rows=e.cfg.max_rows, chunk_size=opts.chunk_size, chunks_per_shard=per_shard,
                         has_tokens=e.has_tokens, **info)
        path = store_path(opts.features_root, manifest.name, e.name)
        if opts.overwrite:
            stores[e.name] = create_replacement(path, manifest.video_ids, spec)
            continue
        finish_swap(path)
        if replacement_path(path).exists():
            _logger.warning('%s: an unfinished --overwrite of this store is beside it (%s); this run continues the '
                            'store itself. Rerun with --overwrite to continue the replacement, or remove it',
                            path, replacement_path(path).name)
        stores[e.name] = create_store(path, manifest.video_ids, spec)
    return stores


def _probe(experts: list[Any]) -> None:
    """One real forward pass of each frame and clip expert on a dummy row of the configured shape
    (a frame or clip as the decoder gives it, then the expert's own resize, crop and normalisation),
    before a store is made or replaced: settings the model cannot run with (a `mean` of the wrong
    length, a `feature_dim` the model does not give) fail here, in one line, instead of on the
    first batch with every video pending."""
    import torch

    for e in experts:
        if e.per_video:  # their libraries take whole videos; a failure there fails its video only
            continue
        side = e.cfg.needed_side
        shape = (1, e.cfg.clip_len, side, side, 3) if e.cfg.sampling == 'clips' else (1, side, side, 3)
        try:
            feats = e.forward(e.preprocess(torch.zeros(shape, dtype=torch.uint8, device=e.device)))
        except torch.OutOfMemoryError:
            raise
        except (RuntimeError, ValueError, IndexError, TypeError) as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            raise ConfigError(f'{e.name}: the model does not run with these settings ({first}); check --set '
                              f'values such as resize, input_size, clip_len, mean and std') from None
        if tuple(feats.shape) != (1, e.cfg.feature_dim):
            raise ConfigError(f'{e.name}: the model gives features of shape {tuple(feats.shape[1:])}, but '
                              f'feature_dim is {e.cfg.feature_dim}: leave feature_dim at its default for this model')


def _existing(store: ExpertStore, rows: range) -> dict[int, VideoResult]:
    """Finished rows of a chunk, read back (for --retry-failed, which redoes only failed rows)."""
    data = store.read(rows=list(rows))
    out = {}
    for i, r in enumerate(rows):
        n = int(data.lengths[i])
        tokens = json.loads(data.tokens[i]) if data.tokens is not None and data.tokens[i] else None
        out[r] = VideoResult(data.features[i, :n].astype(np.float32), data.timestamps[i, :n], int(data.status[i]),
                             str(data.errors[i]), tokens=tokens, available=bool(data.available[i]) or None)
    return out


def load_experts(experts: list[Any], device: Any) -> None:
    """Load each expert's model on `device`, saying first which and from where: with real weights
    the seven experts take minutes to load, which would otherwise be a silent pause."""
    for e in experts:
        w = e.resolve()
        source = f'weights {w.source}' if not w.random else random_weights(e)
        arch = '' if e.cfg.arch == e.name.split('.')[0] else f'{e.cfg.arch}, '  # not 'loading ocr: ocr, ...'
        print(f'loading {e.name}: {arch}{source}, on {device}', flush=True)
        e.load(device)


def random_weights(expert: Any) -> str:
    """'RANDOM weights' of an expert loaded with `weights: random`, or which part of it is random when
    a part keeps its real weights (the face expert's MTCNN detector)."""
    if not expert.random_part:
        return 'RANDOM weights'
    return (f'RANDOM weights for {expert.random_part} only ({expert.real_part} has its real weights, which ship in '
            'its wheel)')


def build_experts(opts: RunOptions) -> list[Any]:
    """The run's experts, configured (settings, presets, weights) but not loaded."""
    from extract.experts import create_expert, resolve_expert_names

    # `all` resolved first: each expert's settings are looked up among the run's experts by name (a Dask
    # driver builds them from the options as given, `make extract-cluster`'s default EXPERT=all)
    opts = dataclasses.replace(opts, experts=resolve_expert_names(','.join(opts.experts)))
    return [create_expert(n, **_settings_for(n, opts)) for n in opts.experts]


def run(opts: RunOptions, loaded: list[Any] | None = None, stats: dict[str, float] | None = None,
        pool: Any = None) -> int:
    """Run an extraction; returns the process exit code (0 when the run finished).

    Args:
        loaded: experts already built by `build_experts(opts)` and loaded on the device (a cluster
            worker loads its models once and runs many shards with them).
        pool: where decoded videos come from instead of a new decode pool: an object with
            `imap((row, path) items)` and `close(kill)`, as `DecodePool` (the benchmark's replay).
        stats: filled with `videos`, `setup_s` (start to the first decoded video), `total_s` (the
            benchmark's steady-state rate leaves the setup out), `decode_wait_s` (time the
            models waited for decoded videos after the first) and `device_wait_s` (time the host
            waited for the device's results).
    """
    with contextlib.ExitStack() as held:  # the stores this run writes, held until it ends (`held_store`)
        return _run(opts, loaded, stats, pool, held)


def _run(opts: RunOptions, loaded: list[Any] | None, stats: dict[str, float] | None, pool: Any,
         held: contextlib.ExitStack) -> int:
    """`run`, its stores held in `held`."""
    from extract.experts import resolve_expert_names

    t_start = time.time()
    manifest = load_manifest(opts.dataset, opts.data_root, **opts.dataset_options)
    names = resolve_expert_names(','.join(opts.experts))
    opts.experts = names
    experts = loaded if loaded is not None else build_experts(opts)
    if [e.name for e in experts] != names:
        raise ConfigError(f'loaded experts {[e.name for e in experts]} are not the requested {names}')
    # what can be wrong with the command fails here, before a store (or an --overwrite's replacement) is made:
    # an empty store left by a failed start would hold its settings against the corrected command
    device = pick_device(opts.device)
    if opts.decoder != 'auto':
        choose_decoder(opts.decoder, device)
    for e in experts:
        e.resolve()
    # a store being re-embedded is refused before the models load: its chunks would go to the store
    # the re-embedding then swaps out, or be read by it half-written
    paths = [store_path(opts.features_root, manifest.name, e.name) for e in experts]
    unheld = [p for p in paths if not is_store(p)]
    for p in paths:
        if p not in unheld:
            held.enter_context(held_store(p, 'extract'))
    new = opts.overwrite or not all(is_store(store_path(opts.features_root, manifest.name, e.name))
                                    for e in experts)
    if new and loaded is None:  # a store is to be made, so there is work: the models load first
        load_experts(experts, device)
        loaded = experts
    if new:
        _probe(experts)
    stores = open_stores(manifest, experts, opts)
    for p in unheld:  # made by this run (or another) since
        held.enter_context(held_store(p, 'extract'))
    n_chunks = next(iter(stores.values())).n_chunks
    mine = shard_chunks(n_chunks, opts.shard, opts.num_shards)
    todo = {n: set(s.pending_chunks(mine, retry_failed=opts.retry_failed)) for n, s in stores.items()}
    chunks = sorted(set().union(*todo.values()))
    where = f'shard {opts.shard}/{opts.num_shards}, chunks {mine.start}-{mine.stop - 1}' if len(mine) else \
        f'shard {opts.shard}/{opts.num_shards} (no chunks)'
    if not chunks:
        why = ('every chunk is finished' if len(mine) else
               f'the store has {n_chunks} chunk{"s" * (n_chunks != 1)}, fewer than the {opts.num_shards} shards')
        print(f'nothing to do for {", ".join(names)} on {manifest.name} (read from {manifest.origin}; {where}): {why}')
        _finish(stores)
        return 0
    videos = [r for c in chunks for r in stores[names[0]].chunk_rows(c)]
    clips = any(e.cfg.sampling == 'clips' for e in experts)
    decoder, why = choose_decoder(opts.decoder, device, [str(manifest.paths[r]) for r in spread(videos)], clips)
    workers = opts.workers if opts.workers >= 0 else default_workers(decoder)
    random_names = [e.name + (f' (only {e.random_part})' if e.random_part else '')
                    for e in experts if e.resolve().random]
    print(f'extracting {", ".join(names)} from {manifest.name} (read from {manifest.origin}): {where}; device {device}; '
          f'decoder {decoder} ({why}); {workers} decode worker(s)')
    if random_names:
        print(f'WARNING: RANDOM weights for {", ".join(random_names)}: these features mean nothing beyond tests and demos')
    if loaded is None:
        load_experts(experts, device)
    tallies = {n: _Tally() for n in names}
    samplings = {e.name: e.cfg.sampling_spec() for e in experts}
    if pool is None and decoder == 'nvdec':
        from extract.nvdec import NvdecPool

        pool = NvdecPool(samplings, device, threads=workers, window_s=opts.decode_window)
    elif pool is None:
        pool = DecodePool(samplings, workers=workers, window_s=opts.decode_window)
    writer = cf.ThreadPoolExecutor(1, thread_name_prefix='store-writer')
    writes: collections.deque[cf.Future] = collections.deque()
    t_first, waited = None, 0.0
    from tqdm import tqdm

    bar = tqdm(total=len(videos), unit=media_unit(manifest.paths[r] for r in videos), desc='extract',
               disable=not opts.progress, dynamic_ncols=True)
    failures = 0
    batchers = {e.name: _Batcher(e) for e in experts}
    upload = _Uploader(device)
    # a chunk and a half of videos may wait for a slow expert before the loop waits for it
    video_workers = {e.name: _VideoWorker(e, device, depth=opts.chunk_size * 3 // 2) for e in experts if e.per_video}

    def write(chunk: _Chunk, interrupted: bool = False) -> None:
        """Collect a fed chunk's results and hand its arrays to the writer thread (`interrupted`:
        the videos fed after it are not computed)."""
        packed = {}
        for e in chunk.active:
            redo = chunk.redo[e.name]
            if e.name in video_workers:
                # the bar counts videos fed to the experts: the per-video experts may still work on a chunk
                # after the last one is fed (minutes of whisper on a CPU), which the bar says meanwhile
                bar.set_postfix_str(f'failed={failures}, waiting for {e.name}', refresh=True)
                got = video_workers[e.name].collect(redo, drop_others=interrupted, tick=bar.refresh)
                _check_width(e, got.values())
                chunk.results[e.name].update(got)
            feats = batchers[e.name].collect(chunk.rows)
            for r, why in batchers[e.name].failures(chunk.rows).items():
                chunk.results[e.name][r] = VideoResult.failed(why, e.cfg.feature_dim)
            chunk_results = _existing(stores[e.name], chunk.rows) if len(redo) < len(chunk.rows) else {}
            for r in redo:
                done = chunk.results[e.name].get(r)
                if done is None:
                    done = VideoResult(feats[r], np.concatenate(chunk.stamps[e.name][r]), DONE)
                chunk_results[r] = done
            ordered = [chunk_results[r] for r in chunk.rows]
            packed[e.name] = pack_chunk(ordered, e.cfg.max_rows, e.cfg.feature_dim, e.has_tokens, fail_unstorable=True)
            _count(tallies[e.name], packed[e.name], redo, chunk.rows, manifest.video_ids)
        for name, arrays in packed.items():
            writes.append(writer.submit(stores[name].write_chunk, chunk.index, arrays))
        chunk.written = True
        bar.set_postfix(failed=failures, refresh=False)  # waiting no more

    fed: _Chunk | None = None  # fed to the experts, its last batches possibly still on the GPU
    try:
        decoded = pool.imap([(r, str(manifest.paths[r])) for r in videos])
        for c in chunks:
            active = [e for e in experts if c in todo[e.name]]
            chunk = _Chunk(c, stores[names[0]].chunk_rows(c), active,
                           {e.name: _rows_to_redo(stores[e.name], c, opts.retry_failed) for e in active},
                           {e.name: {} for e in active}, {e.name: {} for e in active})
            for r in chunk.rows:
                last, noted = False, ''
                while not last:  # the video's decode windows, in order
                    t_wait = time.perf_counter()
                    video = next(decoded)
                    if t_first is None:
                        t_first = time.time()
                    else:
                        waited += time.perf_counter() - t_wait
                    assert video.row == r
                    failures += _feed(video, chunk, batchers, video_workers, upload)
                    # decoded, but not the usual way (FFmpeg fallback, a truncated file's prefix): said once a video,
                    # not once for each of its decode windows
                    if video.note and video.note != noted:
                        _logger.warning('%s: %s', manifest.video_ids[r], video.note)
                        noted = video.note
                    last = video.window + 1 >= video.windows
                bar.update(1)
                bar.set_postfix(failed=failures, refresh=False)
            for e in active:
                batchers[e.name].launch()
            if fed is not None:  # collected one chunk late: its results came off the GPU while this one was fed
                write(fed)
            fed = chunk
            while len(writes) > 2 * len(experts):  # bounded: at most two chunks wait for the disk
                writes.popleft().result()
        if fed is not None:
            write(fed)
    except KeyboardInterrupt:
        bar.close()
        pool.close(kill=True)
        if fed is not None and not fed.written:
            try:  # its batches are all launched: wait for them and save it too
                write(fed, interrupted=True)
            except Exception as err:  # noqa: BLE001 - interrupted inside the same write: that chunk is redone
                _logger.warning('chunk %d not saved: %s', fed.index, err)
        writer.shutdown(wait=True)  # chunks already computed are still written, whole
        print(INTERRUPTED, file=sys.stderr)
        return 130
    except BaseException:
        bar.close()
        pool.close(kill=True)  # no decoder process outlives a failed run
        raise
    finally:
        writer.shutdown(wait=True)
        # a second Ctrl-C (the first one's save was cut short) does not wait for a busy batch
        stopping = isinstance(sys.exc_info()[1], KeyboardInterrupt)
        for w in video_workers.values():
            w.close(wait=not stopping)
        if isinstance(sys.exc_info()[1], Exception):
            _drop_untouched(stores, opts, sys.exc_info()[1])
    for w in writes:
        w.result()
    bar.close()
    pool.close()
    _finish(stores)
    t_end = time.time()
    if stats is not None:
        stats.update(videos=len(videos), setup_s=(t_first or t_end) - t_start, total_s=t_end - t_start,
                     decode_wait_s=waited, device_wait_s=sum(b.waited for b in batchers.values()),
                     **{f'busy_s.{n}': w.busy for n, w in video_workers.items()},
                     **{f'blocked_s.{n}': w.blocked for n, w in video_workers.items()})
    _summary(manifest.name, stores, tallies, [manifest.paths[r] for r in videos], t_end - t_start)
    return 0


def default_workers(decoder: str) -> int:
    """Decode processes (decord: the CPUs this job may use - 1, at most 16) or NVDEC threads (4)."""
    return 4 if decoder == 'nvdec' else max(1, min(16, cpu_limit() - 1))


def _rows_to_redo(store: ExpertStore, chunk: int, retry_failed: bool) -> list[int]:
    rows, status = store.chunk_rows(chunk), store.chunk_status(chunk)
    if (status == 0).any() or not retry_failed:
        return list(rows)
    return [r for r, s in zip(rows, status) if s == FAILED]


def _feed(video: DecodedVideo, chunk: _Chunk, batchers: dict[str, _Batcher], workers: dict[str, _VideoWorker],
          upload: _Uploader) -> int:
    """Give one decoded window of a video to every expert that needs it; returns 1 when the video
    failed for one before its expert saw it (the per-video experts' own failures are counted when
    written). A window that fails fails its video, whatever the earlier windows gave."""

    from extract.experts._base import VideoInput

    failed = 0
    row, last = video.row, video.window + 1 >= video.windows
    for e in (e for e in chunk.active if row in chunk.redo[e.name]):
        out = chunk.results[e.name]
        if e.name in video.skipped:  # nothing for this expert in the file (a still image's motion or sound)
            out[row] = VideoResult.skipped(e.cfg.feature_dim, video.skipped[e.name])
            continue
        if e.modality == 'audio':
            if video.window:  # the whole waveform came with the first window
                continue
            if video.audio_error:
                out[row], failed = VideoResult.failed(video.audio_error, e.cfg.feature_dim), 1
            elif video.audio is None:
                out[row] = VideoResult.skipped(e.cfg.feature_dim, 'no audio stream')
            else:
                workers[e.name].submit(row, VideoInput(audio=video.audio[e.cfg.sampling_spec().resampler]))
            continue
        if row in out:  # failed in an earlier window
            continue
        if video.error:
            out[row], failed = VideoResult.failed(video.error, e.cfg.feature_dim), 1
            chunk.parts.get(e.name, {}).pop(row, None)
            continue
        plan = video.plans[e.name]
        if e.per_video:  # its libraries take a whole video's frames: they wait for the last window
            parts = chunk.parts.setdefault(e.name, {}).setdefault(row, [])
            parts.append((_host(video.frames, plan.index[:, 0]), plan.timestamps))
            if last:
                frames, stamps = _joined(chunk.parts[e.name].pop(row))
                workers[e.name].submit(row, VideoInput(frames=frames, timestamps=stamps))
            continue
        batchers[e.name].add(row, _Rows(video.frames, plan.index[:, 0] if e.cfg.sampling == 'frames'
                                        else plan.index, upload))
        chunk.stamps[e.name].setdefault(row, []).append(plan.timestamps)
    return int(failed)


def _joined(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """A video's frames and times from its windows' parts (windows without rows left out: their
    empty frames may have another shape)."""
    kept = [p for p in parts if len(p[1])] or parts[:1]
    if len(kept) == 1:
        return kept[0]
    return np.concatenate([f for f, _ in kept]), np.concatenate([t for _, t in kept])


class _Rows:
    """frames[index], gathered a batch at a time when the batcher takes it, on the host where the
    frames are (decord) and then copied to the device, or on the device (NVDEC's frames): the
    device never holds a whole video's frames, only the rows of the batch in flight, so its
    memory is bounded by the batch size, not by the video's length (a 128-clip 720p video's
    frames are 5.6 GB). Frames that several experts share are copied once per expert.
    """

    def __init__(self, frames: Any, index: np.ndarray, upload: _Uploader) -> None:
        import torch

        self.frames = frames if torch.is_tensor(frames) else torch.from_numpy(frames)
        self.index, self.upload = torch.from_numpy(index), upload
        if self.frames.is_cuda:  # an index on the host would make each gather a synchronous copy
            self.index = upload(self.index)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, rows: slice) -> Any:
        import torch

        index = self.index[rows]
        # index_select copies whole frames: 3.4x the speed of frames[index] on a CPU (5.0 against 1.45 GB/s)
        x = torch.index_select(self.frames, 0, index.reshape(-1)).view(*index.shape, *self.frames.shape[1:])
        return x if x.is_cuda else self.upload(x)


def _host(frames: Any, index: np.ndarray) -> np.ndarray:
    """Rows `index` of a video's frames as host uint8 (per-video experts run their own libraries)."""
    if isinstance(frames, np.ndarray):
        return frames[index]
    return frames[np.ascontiguousarray(index)].cpu().numpy()


def _guarded(expert: Any, inputs: Any) -> VideoResult:
    """A per-video expert's result; an exception inside it fails this video, not the run."""
    try:
        return expert.process(inputs)
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as err:  # noqa: BLE001 - OCR/ASR libraries raise many types on odd input
        return VideoResult.failed(_failure(expert, err), expert.cfg.feature_dim)


def _failure(expert: Any, err: BaseException) -> str:
    """What the store records for a video an expert raised on: the expert and its first line."""
    _logger.debug('%s failed', expert.name, exc_info=True)
    first = (str(err).strip().splitlines() or [''])[0]
    return f'{expert.name} failed: {type(err).__name__}: {first}'[:300]


def _count(t: _Tally, packed: ChunkData, redo: list[int], rows: range, ids: tuple[str, ...]) -> None:
    """Add the redone videos of a chunk, as stored, to the tally."""
    for i, r in enumerate(rows):
        if r not in redo:
            continue
        status = int(packed.status[i])
        t.done += status == DONE
        t.failed += status == FAILED
        t.skipped += status not in (DONE, FAILED)
        t.available += bool(packed.available[i])
        if status == FAILED:
            t.errors.append(f'{ids[r]}: {packed.errors[i]}')


def _check_width(expert: Any, results: Collection[VideoResult]) -> None:
    """A per-video expert's results have `feature_dim` columns: its libraries take whole videos, so
    `_probe` cannot run it up front, and a width the store cannot hold is the settings' fault, not
    a video's (every video would fail)."""
    for r in results:
        width = np.shape(r.features)[-1] if np.ndim(r.features) == 2 else None
        if r.status == DONE and width is not None and width != expert.cfg.feature_dim:
            raise ConfigError(f'{expert.name}: the model gives features of width {width}, but feature_dim is '
                              f'{expert.cfg.feature_dim}: leave feature_dim at its default for this model')


def _drop_untouched(stores: dict[str, ExpertStore], opts: RunOptions, err: BaseException) -> None:
    """Remove the stores of a failed run that hold no finished video (a new store, or an
    --overwrite's replacement): an empty store would hold the failed run's settings against the
    corrected command. Other shards may be writing a shared store: it goes only for a settings
    error (theirs fail alike) or when this run is the only shard."""
    if not (isinstance(err, ConfigError) or opts.num_shards == 1):
        return
    for s in stores.values():
        if s.path.exists() and not (s.status() != PENDING).any():
            shutil.rmtree(s.path, ignore_errors=True)
            _logger.info('%s: removed, the failed run had written nothing to it', s.path)


def _finish(stores: dict[str, ExpertStore]) -> None:
    """Consolidate complete stores; a complete replacement (--overwrite) takes its store's place."""
    for name, s in stores.items():
        if s.is_complete():
            stores[name] = swap_in(s)


def _summary(dataset: str, stores: dict[str, ExpertStore], tallies: dict[str, _Tally], paths: list[Path],
             elapsed: float) -> None:
    rate = len(paths) / elapsed if elapsed > 0 else 0.0
    print(f'done: {count_media(paths)} of {dataset} in {elapsed:.1f} s ({rate:.2f} {media_unit(paths)}s/s)')
    for name, t in tallies.items():
        s = stores[name]
        state = 'complete' if s.is_complete() else 'other shards pending'
        print(f'  {name:<26} done {t.done:>6}  failed {t.failed:>5}  skipped {t.skipped:>5}  available '
              f'{t.available:>6}  -> {s.path} ({state})')
    errors = next((t.errors for t in tallies.values() if t.errors), [])
    for line in errors[:5]:
        print(f'  failed {line}')
    if len(errors) > 5:
        print(f'  ... {len(errors) - 5} more failures: python -m shared.store check <store> lists the common ones')


def build_parser() -> argparse.ArgumentParser:
    d = RunOptions(dataset='', experts=[])
    p = argparse.ArgumentParser(
        prog='python -m extract', formatter_class=argparse.RawDescriptionHelpFormatter,
        description='Extract expert features from a dataset\'s videos into Zarr stores '
                    '({features_root}/{dataset}/{expert}.zarr), decoding each video once for all experts.',
        epilog='examples:\n'
               '  python -m extract --dataset demo --expert all --weights random\n'
               '  python -m extract --dataset msrvtt --expert object,scene --shard 3 --num-shards 64\n'
               '  python -m extract --dataset folder:/data/my_videos --expert scene --set fps=2\n'
               'Rerunning a command continues where it stopped; exit code 0 when the run finished\n'
               '(individual video failures are reported and recorded, not fatal).')
    p.add_argument('--dataset', required=True, help='a registered dataset (demo, msrvtt, ...) or folder:PATH')
    p.add_argument('--expert', required=True, help='an expert, a comma list, or all (python -m extract --list)')
    p.add_argument('--data-root', type=Path, default=d.data_root, help=f'dataset folders (default: {d.data_root})')
    p.add_argument('--features-root', type=Path, default=d.features_root, help=f'stores (default: {d.features_root})')
    p.add_argument('--shard', type=int, default=None, help='this shard (default: from SLURM_ARRAY_TASK_ID, else 0)')
    p.add_argument('--num-shards', type=int, default=None,
                   help='shards in all (default: SLURM_ARRAY_TASK_COUNT, else 1); shards own whole chunks')
    p.add_argument('--device', default=d.device, help=DEVICE_HELP)
    p.add_argument('--decoder', default=d.decoder, choices=DECODERS,
                   help='decord (CPU processes) or nvdec (GPU, needs pynvvideocodec); auto (default) picks the '
                        'faster one for this machine and the videos\' resolution, and says which')
    p.add_argument('--batch-size', type=int, default=None, help='rows per forward pass (default: per expert)')
    p.add_argument('--weights', default=None,
                   help='weights for the selected experts: a path (one expert), file:NAME, or random (explicit)')
    p.add_argument('--set', dest='settings', action='append', default=[], metavar='KEY=VALUE',
                   help='an expert setting (fps, clip_len, resize, input_size, max_rows, ...); EXPERT.KEY=VALUE for one')
    p.add_argument('--dataset-option', action='append', default=[], metavar='KEY=VALUE',
                   help="an option of the dataset's adapter, e.g. captions=raw_caption.json for howto100m")
    p.add_argument('--retry-failed', action='store_true', help='also redo videos that failed before')
    p.add_argument('--workers', type=int, default=d.workers,
                   help='decode processes for decord (default: the CPUs this job may use - 1, at most 16), '
                        'threads for nvdec (default: 4)')
    p.add_argument('--chunk-size', type=int, default=None,
                   help=f'videos per Zarr chunk of a new store (default: {DEFAULT_CHUNK_SIZE}, or the existing '
                        'stores\')')
    p.add_argument('--chunks-per-shard', type=int, default=None,
                   help=f'chunks per Zarr shard file of a new store, its unit of work; 1: no shards (default: the '
                        f'existing stores\', else 1 below {SHARD_FROM_VIDEOS} videos and {AUTO_CHUNKS_PER_SHARD} from '
                        'there)')
    p.add_argument('--overwrite', action='store_true',
                   help='start these experts\' stores again: the new ones are built beside them and take their '
                        'place once complete; until then the old ones stay as they are')
    p.add_argument('--decode-window', type=float, default=d.decode_window, metavar='SECONDS',
                   help='seconds of a video decoded and fed to the experts at once: the memory a long video takes '
                        'is that of a window, not of its duration; 0 decodes each video whole '
                        '(default: %(default)g)')
    p.add_argument('--no-progress', action='store_true', help='no progress bar (batch jobs)')
    p.add_argument('--list', action='store_true', help='list the experts and exit')
    return p


def _sampling_words(expert: Any) -> str:
    """What an expert's rows are, for `--list`: frames or clips at their rate, audio examples of their
    length, or (speech) the words heard in the whole audio."""
    cfg = expert.cfg
    if cfg.sampling == 'audio':
        return 'whole audio: words' if expert.has_tokens else f'audio: {1 / cfg.fps:g}-s examples'
    if cfg.sampling == 'clips':
        return f'{cfg.clip_len}-frame clips @ {cfg.fps:g}/s'
    return f'frames @ {cfg.fps:g}/s'


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    argv = sys.argv[1:] if argv is None else argv
    if '--list' in argv:
        from extract.experts import create_expert, expert_names

        experts = [create_expert(n) for n in expert_names()]
        rows = [(e.name, e.cfg.arch, f'D={e.cfg.feature_dim}', _sampling_words(e), f'weights {e.cfg.weights}')
                for e in experts]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]  # columns as wide as their longest entry
        for row in rows:
            print('  '.join(f'{v:<{w}}' for v, w in zip(row, widths)) + '  ' + row[4])
        return 0
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging()
    try:
        env_shard = _shard_from_env() if args.shard is None or args.num_shards is None else None
        shard = args.shard if args.shard is not None else (env_shard[0] if env_shard else 0)
        num_shards = args.num_shards if args.num_shards is not None else (env_shard[1] if env_shard else 1)
        opts = RunOptions(dataset=args.dataset, experts=args.expert.split(','), data_root=args.data_root,
                          features_root=args.features_root, shard=shard, num_shards=num_shards, device=args.device,
                          decoder=args.decoder, batch_size=args.batch_size, weights=args.weights,
                          settings=parse_overrides(args.settings),
                          dataset_options=parse_dataset_options(args.dataset_option), retry_failed=args.retry_failed,
                          workers=args.workers, chunk_size=args.chunk_size,
                          chunks_per_shard=args.chunks_per_shard, overwrite=args.overwrite,
                          progress=not args.no_progress, decode_window=args.decode_window)
        if args.weights and args.weights != 'random' and len(opts.experts) > 1 and ':' not in args.weights:
            raise ConfigError('--weights PATH needs a single --expert (use --set EXPERT.weights=PATH for several)')
        previous = signal.signal(signal.SIGTERM, _sigterm)
        try:
            return run(opts)
        finally:  # a SIGTERM after the run (interpreter shutdown) ends the process, not an atexit callback
            signal.signal(signal.SIGTERM, previous)
    except (DatasetError, StoreError, WeightsError, ConfigError, KeyError, ValueError, DecoderStalled) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f'error: {msg}', file=sys.stderr)
        return 1
    except OSError as err:  # mostly the features disk: full, read-only, gone
        where = f' ({err.filename})' if err.filename else ''
        fix = 'Free some space on the features disk' if err.errno == errno.ENOSPC else 'Fix that'
        print(f'error: {err.strerror or err}{where}; finished chunks are saved. {fix} and rerun the same command '
              'to continue.', file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM outside the chunk loop (loading models, opening stores)
        print(INTERRUPTED, file=sys.stderr)
        return 130
    except RuntimeError as err:
        import torch

        if not isinstance(err, torch.OutOfMemoryError):
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else 'out of memory'
        print(f'error: the device ran out of memory ({first}); finished chunks are saved. Rerun with a smaller '
              '--batch-size (the CUDA default is 128 frames or 32 clips per forward pass).', file=sys.stderr)
        return 1


def exit_cli(code: int) -> NoReturn:
    """`sys.exit(code)` for `python -m extract`, except that a run stopped while an expert's thread
    is still busy (a second Ctrl-C) ends at once: the stores are already closed, and letting the
    interpreter shut down around a thread inside torch aborts the process (exit 134)."""
    import threading

    if code and any(t.name.startswith(_VideoWorker.THREAD) and t.is_alive() for t in threading.enumerate()):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def _sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # a preempted cluster job stops like Ctrl-C: finished chunks stay


if __name__ == '__main__':
    exit_cli(main())
