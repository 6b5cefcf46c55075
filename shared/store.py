"""The expert store: one Zarr v3 group per (dataset, expert), the contract between extract and train.

Layout and rules are those of DESIGN.md ("The expert store"): rows follow the manifest's video
order; a unit of work is a Zarr chunk along the video axis, or a whole shard file of several chunks
in a sharded store, and its `status` is written last so that a crash costs at most the units in
flight. In this module's API "chunk c" means unit of work c (`ExpertStore.unit_size` videos).

The row axis T is chunked too (`StoreSpec.row_chunk`): a video fills only the row chunks its
rows reach, and Zarr writes no chunk that holds only the fill value, so a large T (every second
of an hours-long video) costs nothing for the short videos beside it. Stores made before
(schema 1: T whole in one chunk, no shards) open and read as they are.

    python -m shared.store check PATH [PATH ...]
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import datetime as _dt
import errno
import glob
import json
import logging
import math
import os
import re
import shutil
import stat
import sys
import uuid
import warnings
import zipfile
import zlib
from collections.abc import Collection, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from shared.datasets.manifest import DatasetError, check_dataset_name
from shared.files import fsync_dir, remove_stale_temps, signals_deferred, temp_path
from shared.zstd_bound import install as _bound_zstd

__all__ = [
    'SCHEMA_VERSION', 'PENDING', 'DONE', 'FAILED', 'SKIPPED', 'STATUS_NAMES', 'UNKNOWN_TIME',
    'StoreError', 'RandomWeightsWarning', 'StoreSpec', 'VideoResult', 'ChunkData', 'ExpertRows',
    'ROW_CHUNK', 'SHARD_FROM_VIDEOS', 'AUTO_CHUNKS_PER_SHARD', 'ExpertStore', 'store_path', 'is_store',
    'create_store', 'open_store', 'shard_chunks', 'pack_chunk', 'recorded_tokens',
    'replacement_path', 'create_replacement', 'swap_in', 'finish_swap', 'held_store', 'signals_deferred', 'unreadable',
    'CheckReport',
    'check_store', 'main',
]

_logger = logging.getLogger(__name__)

SCHEMA_VERSION = 2
#: schema versions this code reads and resumes: 1 is the layout before row chunks and shards
_READABLE_SCHEMAS = (1, 2)
#: rows per Zarr chunk along T in a new store (or T, when smaller): 1 row/s gives about two
#: minutes per chunk, so the short videos of most datasets fill one
ROW_CHUNK = 128
#: the most a chunk of any array may decode to (a layout's chunks hold tens of MB)
MAX_CHUNK_BYTES = 1 << 30
# Zarr decodes a zstd chunk whole before it looks at its size, and a string chunk has none: a chunk
# file of a few KB may inflate to many GB. Every zstd chunk is bounded by its headers before it is
# decoded (`shared.zstd_bound`)
_bound_zstd(MAX_CHUNK_BYTES)
#: a new store of at least this many videos is sharded unless told otherwise: below it, one file
#: per chunk stays a few thousand files; at 1.2M videos unsharded 32-video chunks give ~37k chunks
#: per array
SHARD_FROM_VIDEOS = 10_000
#: chunks per shard file when sharded by `SHARD_FROM_VIDEOS`: 16 x 32-video chunks is 512 videos
#: per file; writing one row chunk of a shard holds (512, row_chunk, D) float16 (128 MB at D=2048)
AUTO_CHUNKS_PER_SHARD = 16
PENDING, DONE, FAILED, SKIPPED = 0, 1, 2, 3
STATUS_NAMES = {PENDING: 'pending', DONE: 'done', FAILED: 'failed', SKIPPED: 'skipped'}
#: start and end of a row whose time is not known (features imported from releases without timing)
UNKNOWN_TIME = -1.0
_ROW_ARRAYS = ('features', 'timestamps', 'lengths', 'available', 'errors')
#: the store's own record of each chunk it wrote: a JSON {array: CRC-32} per chunk, written after
#: the chunk's data and before its `status`. Zarr reads a missing chunk file as the fill value, so
#: a lost or damaged file is seen only against this (`ExpertStore.damage`)
CHUNK_SUMS = 'chunk_sums'
#: the group attribute that records the CRC-32 of the video ids (`_digest`), written when the store is
#: made: no chunk sums cover them, and ids of another order or store would give rows to the wrong
#: videos without an error (a store made before it has none)
IDS_SUM = 'video_ids_crc32'
#: each array's data type (numpy kind and size; strings any string kind) and fill value, as `_build`
#: makes them: Zarr reads a missing chunk as the fill value, and `status`'s is "pending"
_TYPES = {'video_ids': ('str', ''), 'features': ('float16', 0), 'timestamps': ('float32', 0), 'lengths': ('int32', 0),
          'available': ('bool', False), 'status': ('uint8', 0), 'errors': ('str', ''), 'tokens': ('str', ''),
          'chunk_sums': ('str', '')}
_DIMS = {
    'video_ids': ('video',), 'features': ('video', 'row', 'dim'), 'timestamps': ('video', 'row', 'edge'),
    'lengths': ('video',), 'available': ('video',), 'status': ('video',), 'errors': ('video',),
    'tokens': ('video',), CHUNK_SUMS: ('chunk',),
}


class StoreError(RuntimeError):
    """A store cannot be created, opened or written as asked."""


class RandomWeightsWarning(UserWarning):
    """The store was written by an expert with randomly initialised weights."""


@dataclasses.dataclass(frozen=True)
class StoreSpec:
    """What a store is created with; everything here lands in the group attributes.

    Args:
        dataset: dataset name (manifest name).
        source: what the dataset's videos are where its name alone does not say (the manifest's
            `source`: a folder's resolved path); a store is never resumed for another source.
        expert: expert name (registry name).
        feature_dim: D, the width of one feature row.
        max_rows: T, the most rows one video may have.
        chunk_size: videos per Zarr chunk.
        row_chunk: rows per Zarr chunk along T; None: the store's own when it is resumed, else
            min(max_rows, `ROW_CHUNK`).
        chunks_per_shard: chunks per Zarr shard file, the unit of work (two writers never share
            one); 1 is no sharding. None: the store's own when it is resumed, else 1 below
            `SHARD_FROM_VIDEOS` videos and `AUTO_CHUNKS_PER_SHARD` from there.
        has_tokens: keep the `tokens` array (OCR and speech).
        model: the model's name.
        weights: where the weights came from, or the literal ``random``.
        weights_sha256: checksum of the weight file, when there is one.
        sampling: fps, clip length, stride and such.
        input_size: the model's input size.
        config: the full expert config.
        config_defaults: the defaults of the config's settings (not stored): a setting missing from
            the config of a store made before it existed stands for its default, so that store is
            resumed where the run keeps that default.
    """

    dataset: str
    expert: str
    feature_dim: int
    max_rows: int
    source: str = ''
    chunk_size: int = 64
    row_chunk: int | None = None
    chunks_per_shard: int | None = None
    has_tokens: bool = False
    model: str = ''
    weights: str = ''
    weights_sha256: str = ''
    sampling: dict[str, Any] = dataclasses.field(default_factory=dict)
    input_size: list[int] = dataclasses.field(default_factory=list)
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    config_defaults: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ('feature_dim', 'max_rows', 'chunk_size', 'row_chunk', 'chunks_per_shard'):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise StoreError(f'{name} must be >= 1, got {value!r}')

    def resolved(self, n_videos: int) -> StoreSpec:
        """This spec with the layout a new store of `n_videos` videos gets where it says None."""
        row_chunk = self.row_chunk or min(self.max_rows, ROW_CHUNK)
        shard = self.chunks_per_shard or (AUTO_CHUNKS_PER_SHARD if n_videos >= SHARD_FROM_VIDEOS else 1)
        return dataclasses.replace(self, row_chunk=min(row_chunk, self.max_rows), chunks_per_shard=shard)


@dataclasses.dataclass
class VideoResult:
    """One video's output from an expert, before it is packed into a chunk.

    Args:
        features: (L, D) rows; L may be 0.
        timestamps: (L, 2) start and end second of each row.
        status: DONE, FAILED or SKIPPED.
        error: why the video failed (FAILED only).
        tokens: OCR/speech words as dicts {word, start, end, conf}.
        available: defaults to "has at least one row"; FAILED and SKIPPED are never available.
    """

    features: np.ndarray
    timestamps: np.ndarray
    status: int = DONE
    error: str = ''
    tokens: list[dict[str, Any]] | None = None
    available: bool | None = None

    @classmethod
    def failed(cls, error: str, dim: int) -> VideoResult:
        return cls(np.zeros((0, dim), np.float32), np.zeros((0, 2), np.float32), FAILED, error or 'failed')

    @classmethod
    def skipped(cls, dim: int, reason: str = '') -> VideoResult:
        return cls(np.zeros((0, dim), np.float32), np.zeros((0, 2), np.float32), SKIPPED, reason)


@dataclasses.dataclass
class ChunkData:
    """The arrays of one chunk, in store dtypes, ready to be written. Rows are kept per video, not
    padded to T: a chunk of short videos in a store with a large T stays small."""

    features: list[np.ndarray]  # n x (lengths[i], D) float16
    timestamps: list[np.ndarray]  # n x (lengths[i], 2) float32
    lengths: np.ndarray  # (n,) int32
    available: np.ndarray  # (n,) bool
    status: np.ndarray  # (n,) uint8
    errors: np.ndarray  # (n,) str
    tokens: np.ndarray | None = None  # (n,) str (JSON)


@dataclasses.dataclass
class ExpertRows:
    """Rows read from a store: arrays padded to the longest video read (not to the store's T),
    plus lengths and masks. An array that the read did not ask for (`ExpertStore.read`'s
    `arrays`) is None."""

    video_ids: np.ndarray | None
    features: np.ndarray | None
    timestamps: np.ndarray | None
    lengths: np.ndarray | None
    available: np.ndarray | None
    status: np.ndarray | None
    errors: np.ndarray | None
    tokens: np.ndarray | None
    max_rows: int | None = None  # the store's T; None: the width of `features`

    def rows(self, i: int) -> np.ndarray:
        """The valid (L, D) feature rows of the i-th video read."""
        return self.features[i, : int(self.lengths[i])]


def store_path(features_root: str | os.PathLike, dataset: str, expert: str) -> Path:
    """Where the store of (dataset, expert) lives: ``{root}/{dataset}/{expert}.zarr`` (a DatasetError
    for a dataset name that is no plain folder name, see `check_dataset_name`)."""
    check_dataset_name(dataset)
    if not expert or '/' in expert or expert in ('.', '..') or os.sep in expert:
        raise StoreError(f'invalid expert name for a store path: {expert!r}')
    return Path(features_root) / dataset / f'{expert}.zarr'


def is_store(path: str | os.PathLike) -> bool:
    """Whether a store is at `path` (its group metadata is there; a deletion cut short leaves none)."""
    return (Path(path) / 'zarr.json').is_file()


def shard_chunks(n_chunks: int, shard: int, num_shards: int) -> range:
    """The contiguous range of whole chunks that shard `shard` of `num_shards` owns."""
    if num_shards < 1 or not 0 <= shard < num_shards:
        raise StoreError(f'shard must be in [0, {num_shards}), got {shard} (num_shards={num_shards})')
    base, extra = divmod(n_chunks, num_shards)
    start = shard * base + min(shard, extra)
    return range(start, start + base + (1 if shard < extra else 0))


def pack_chunk(results: Sequence[VideoResult], max_rows: int, dim: int, has_tokens: bool,
               fail_unstorable: bool = False, ids: Sequence[str] | None = None) -> ChunkData:
    """Pack per-video results into chunk arrays, enforcing the store's rules.

    Unavailable rows get length 0 and zero features; too many rows are an error of the caller
    (StoreError), never written. So are features or times the store cannot hold (NaN, inf,
    beyond float16), unless `fail_unstorable`: then that video is stored as failed, with the
    reason (an extraction goes on; one such video would otherwise stop it at every rerun).
    `ids`, the results' video ids, name the video in those errors (else its row in the chunk).
    """
    n = len(results)
    chunk = ChunkData(
        features=[np.zeros((0, dim), np.float16)] * n,
        timestamps=[np.zeros((0, 2), np.float32)] * n,
        lengths=np.zeros(n, np.int32),
        available=np.zeros(n, bool),
        status=np.zeros(n, np.uint8),
        errors=np.full(n, '', dtype=object),
        tokens=np.full(n, '', dtype=object) if has_tokens else None,
    )
    for i, r in enumerate(results):
        who = f'video {ids[i]}' if ids is not None else f'row {i}'
        if r.status not in (DONE, FAILED, SKIPPED):
            raise StoreError(f'{who}: status must be done, failed or skipped, got {r.status}')
        feats = np.asarray(r.features, np.float32).reshape(-1, dim)
        times = np.asarray(r.timestamps, np.float32).reshape(-1, 2)
        if len(feats) != len(times):
            raise StoreError(f'{who}: {len(feats)} feature rows but {len(times)} timestamps')
        if len(feats) > max_rows:
            raise StoreError(f'{who}: {len(feats)} rows exceed the store maximum T={max_rows}')
        problem = _unstorable(feats, times)
        if problem and not fail_unstorable:
            raise StoreError(f'{who}: {problem}')
        if problem:
            r, feats, times = VideoResult.failed(problem, dim), feats[:0], times[:0]
        available = r.status == DONE and len(feats) > 0 and (r.available is None or r.available)
        chunk.status[i] = r.status
        chunk.errors[i] = r.error if r.status != DONE else ''
        if has_tokens and r.tokens is not None:
            chunk.tokens[i] = json.dumps(r.tokens, ensure_ascii=False)
        if available:
            chunk.features[i] = feats.astype(np.float16)
            chunk.timestamps[i] = times
            chunk.lengths[i] = len(feats)
            chunk.available[i] = True
    return chunk


def _unstorable(feats: np.ndarray, times: np.ndarray) -> str:
    """Why the store cannot hold these float32 rows, or ''."""
    if not np.isfinite(feats).all():
        return 'the model gave NaN or inf features'
    if not np.isfinite(times).all():
        return 'NaN or inf timestamps'
    backwards = np.flatnonzero(times[:, 1] < times[:, 0])
    if len(backwards):
        i = int(backwards[0])
        return f'timestamps of row {i} end ({times[i, 1]:g} s) before they start ({times[i, 0]:g} s)'
    early = np.flatnonzero(_early_starts(times[None], 0, np.array([len(times)]), np.full(1, -np.inf))[0])
    if len(early):
        i = int(early[0])
        return (f'row {i} starts at {times[i, 0]:g} s, before a row before it ({times[:i, 0].max():g} s): rows go '
                'in time order')
    largest = float(np.abs(feats).max(initial=0.0))
    if largest > float(np.finfo(np.float16).max):
        return f'features beyond the range of float16, which the store holds (largest |value| {largest:.3g})'
    return ''


def _early_starts(times: np.ndarray, lo: int, lengths: np.ndarray, latest: np.ndarray) -> np.ndarray:
    """Which rows of a block of timestamps (n videos, rows from row `lo`, 2) start before a row before
    them in their video: every expert writes its rows in time order (several may share a start: faces
    of one frame, words; `train.data` samples rows "in time order" by their position). Rows past a
    video's length are padding, and a negative start is an unknown time (rows imported without times,
    `UNKNOWN_TIME`), which has no order. `latest`, (n,), is each video's latest known start in the
    blocks before (-inf for none); it is updated to the end of this block."""
    valid = (lo + np.arange(times.shape[1]))[None, :] < np.asarray(lengths)[:, None]
    start = times[..., 0].astype(np.float64)
    known = valid & (start >= 0)
    upto = np.maximum.accumulate(np.concatenate([latest[:, None], np.where(known, start, -np.inf)], axis=1), axis=1)
    latest[:] = upto[:, -1]
    return known & (start < upto[:, :-1])


def _misordered(times: np.ndarray, lo: int, lengths: np.ndarray, latest: np.ndarray) -> tuple[int, str] | None:
    """The first video of a block of timestamps (as `_early_starts`) with a row that ends before it
    starts or starts before a row before it: (its index in the block, what its row does), or None."""
    valid = (lo + np.arange(times.shape[1]))[None, :] < np.asarray(lengths)[:, None]
    backwards = valid & (times[..., 1] < times[..., 0])
    before = latest.copy()
    bad = backwards | _early_starts(times, lo, lengths, latest)
    if not bad.any():
        return None
    i, r = (int(k) for k in np.argwhere(bad)[0])
    start, end = float(times[i, r, 0]), float(times[i, r, 1])
    if backwards[i, r]:
        return i, f'its row {lo + r} ends at {end:g} s, before it starts at {start:g} s'
    return i, (f'its row {lo + r} starts at {start:g} s, before a row before it does '
               f'({max(float(before[i]), float(times[i, :r, 0].max(initial=-np.inf))):g} s)')


def _parse_sums(recorded: str) -> dict[str, int] | None:
    """A chunk's recorded sums (`CHUNK_SUMS`), or None when they are not the JSON object of
    integers `write_chunk` writes (a damaged file)."""
    try:
        sums = json.loads(recorded)
    except ValueError:
        return None
    if not isinstance(sums, dict) or not all(isinstance(v, int) for v in sums.values()):
        return None
    return sums


def recorded_tokens(recorded: str) -> list[dict[str, Any]]:
    """A video's `tokens` as extraction records them: a JSON list of {word, start, end, ...} with
    finite times, start <= end. Else a ValueError saying what is wrong (a damaged store)."""
    try:
        tokens = json.loads(recorded) if recorded else []
    except ValueError as err:
        raise ValueError(f'not JSON ({_first_line(err)})') from None
    if not isinstance(tokens, list):
        raise ValueError(f'a JSON {type(tokens).__name__}, not a list')
    for t in tokens:
        times = [t.get(k) for k in ('start', 'end')] if isinstance(t, dict) else []
        if not (isinstance(t, dict) and isinstance(t.get('word'), str)
                and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in times)
                and times[0] <= times[1]):
            raise ValueError(f'{str(t)[:60]} is no {{word, start <= end}} token')
    return tokens


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _digest(x: np.ndarray, crc: int = 0) -> int:
    """CRC-32 of one chunk's array as the store holds it, continued from `crc` (features and
    timestamps are summed a row block at a time, in order, `ExpertStore.row_blocks`). Strings are
    summed as JSON; floats with -0.0 as 0.0, since a chunk equal to the fill value 0 is never
    written and reads back as +0.0."""
    if x.dtype.kind in 'OUT':
        return zlib.crc32(json.dumps([str(v) for v in x.ravel().tolist()], ensure_ascii=False).encode(), crc)
    if x.dtype.kind == 'f':
        # -0.0 (the sign bit alone) made +0.0 on the bits: what `x + 0` gives, 10x faster for
        # float16, whose arithmetic numpy does in software (reads of a chunk spent most time here)
        bits = np.ascontiguousarray(x).view(f'u{x.dtype.itemsize}')
        negative_zero = bits == bits.dtype.type(1 << (8 * x.dtype.itemsize - 1))
        # features rarely hold -0.0: the test is a tenth of the copy that replaces them
        return zlib.crc32(np.where(negative_zero, bits.dtype.type(0), bits) if negative_zero.any() else bits, crc)
    return zlib.crc32(np.ascontiguousarray(x).tobytes(), crc)


def _finite(x: np.ndarray) -> bool:
    """Whether the float array `x` holds no NaN or inf; float16 by its bits (exponent all ones), since
    numpy does float16 arithmetic in software."""
    if x.dtype == np.float16:
        return not ((np.ascontiguousarray(x).view(np.uint16) & 0x7C00) == 0x7C00).any()
    return bool(np.isfinite(x).all())


class ExpertStore:
    """An open expert store. Use `create_store` or `open_store` to get one."""

    def __init__(self, path: Path, group: zarr.Group) -> None:
        self.path = path
        self.group = group
        self.attrs: dict[str, Any] = dict(group.attrs)
        self.chunk_size = int(self.attrs['chunk_size'])
        self.max_rows = int(self.attrs['max_rows'])
        self.feature_dim = int(self.attrs['feature_dim'])
        self.has_tokens = 'tokens' in group
        status, feats = group['status'], group['features']
        self.n_videos = int(status.shape[0])
        # read from the arrays, not the attributes: a store of schema 1 has T whole and no shards
        self.unit_size = int((status.shards or status.chunks)[0])
        self.chunks_per_shard = self.unit_size // self.chunk_size
        self.row_chunk = int((feats.shards or feats.chunks)[1])
        self.n_chunks = -(-self.n_videos // self.unit_size)
        self._arrays: dict[str, zarr.Array] = {}
        self._has_sums = CHUNK_SUMS in group  # a store made before the sums has none
        self._ids: np.ndarray | None = None  # `video_ids`, once read and checked
        # which directory this is: Zarr writes by path, so a store put in its place meanwhile (another
        # run's --overwrite swapping in its replacement) would get this run's chunks (`_still_here`)
        self._where = self._identity()

    def _array(self, name: str) -> zarr.Array:
        """An array of the group, opened once: opening reads and parses its metadata (some 4 ms),
        which a reader of one chunk at a time (`train.stream`) would pay for every chunk."""
        if name not in self._arrays:
            self._arrays[name] = self.group[name]
        return self._arrays[name]

    def __repr__(self) -> str:
        return (f'ExpertStore({str(self.path)!r}, expert={self.attrs.get("expert")!r}, '
                f'videos={self.n_videos}, T={self.max_rows}, D={self.feature_dim})')

    @property
    def video_ids(self) -> np.ndarray:
        """The manifest's ids, as the store was made for; a chunk file of them that cannot be read, or
        ids that are not those the store was made with (`IDS_SUM`), is a StoreError (they are written
        once, when the store is made: no rerun rewrites them). Read once per open store."""
        if self._ids is None:
            try:
                ids = np.asarray(self._array('video_ids')[:], dtype=object)
            except Exception as err:  # noqa: BLE001 - zarr/numcodecs raise RuntimeError, ValueError, ...
                raise StoreError(f'{self.path}: its video_ids cannot be read ({_first_line(err)}): a chunk file of them '
                                 'is damaged; they are written only when the store is made, so make it again '
                                 '(extract --overwrite)') from None
            recorded = self.attrs.get(IDS_SUM)
            if recorded is not None and _digest(ids) != recorded:  # rows would be taken for other videos' rows
                raise StoreError(f'{self.path}: its video_ids are not those it was made with (a video_ids chunk file '
                                 'replaced or damaged): which video a row is cannot be told; make it again (extract '
                                 '--overwrite)')
            self._ids = ids
        return self._ids.copy()

    @property
    def random_weights(self) -> bool:
        return self.attrs.get('weights') == 'random'

    def chunk_rows(self, chunk: int) -> range:
        """The rows (videos) of chunk (unit of work) `chunk`."""
        if not 0 <= chunk < self.n_chunks:
            raise StoreError(f'chunk {chunk} out of range [0, {self.n_chunks})')
        start = chunk * self.unit_size
        return range(start, min(start + self.unit_size, self.n_videos))

    def row_block_count(self, lengths: np.ndarray) -> int:
        """How many row chunks along T hold the rows of videos with these `lengths`: at least one,
        so that the chunk sums of features and timestamps always cover the first."""
        longest = int(np.max(lengths, initial=0))
        return max(1, -(-min(longest, self.max_rows) // self.row_chunk))

    def row_blocks(self, chunk: int, name: str, count: int) -> Iterator[np.ndarray]:
        """The first `count` row chunks of `name` (features or timestamps) over the chunk's videos,
        each (n, row_chunk, ...) as stored; an undecodable file is a StoreError (`_read`)."""
        rows = self.chunk_rows(chunk)
        for j in range(count):
            lo, hi = j * self.row_chunk, min((j + 1) * self.row_chunk, self.max_rows)
            yield self._read(chunk, name, (slice(rows.start, rows.stop), slice(lo, hi)))

    def _unit_dir(self, name: str, chunk: int) -> Path:
        # Zarr v3's default chunk key encoding, which `_build` uses: {name}/c/{video}/{row}/{dim}; a
        # unit's shard (or chunk) index along the video axis is its number: the file of a 1-D array
        return self.path / name / 'c' / str(chunk)

    def _remove_unit(self, name: str, chunk: int) -> None:
        """Delete unit `chunk`'s files of `name`: its shard or chunk file, or for features and
        timestamps the folder of its row chunks; it then reads as the fill value.

        Zarr's sharding codec reads a shard file before every write into it and merges into what
        it read, even for a write of the whole shard: a damaged shard could never be rewritten."""
        unit = self._unit_dir(name, chunk)
        try:
            shutil.rmtree(unit) if unit.is_dir() else unit.unlink()
        except FileNotFoundError:
            pass

    def stale_row_blocks(self, chunk: int, name: str, count: int) -> list[int]:
        """Row chunks of a chunk's `name` on disk at or past `count`: left by an earlier write of
        the chunk whose videos had more rows."""
        try:
            found = os.listdir(self._unit_dir(name, chunk))
        except FileNotFoundError:
            return []
        return sorted(int(j) for j in found if j.isdigit() and int(j) >= count)

    def chunk_status(self, chunk: int) -> np.ndarray:
        """Status of one chunk's videos; an unreadable status chunk (a kill mid-write) reads as pending,
        and so does one holding a value that is no status (a damaged file read without error): its
        other videos' "done" cannot be trusted either, so the chunk is redone, never trained on."""
        rows = self.chunk_rows(chunk)
        try:
            status = np.asarray(self._array('status')[rows.start:rows.stop])
        except Exception as err:  # noqa: BLE001 - a torn chunk file is pending work, not a crash
            _logger.warning('%s: status chunk %d unreadable (%s); treated as pending', self.path, chunk, err)
            return np.zeros(len(rows), np.uint8)
        unknown = ~np.isin(status, list(STATUS_NAMES))
        if unknown.any():
            _logger.warning('%s: status chunk %d holds values that are no status (%s); treated as pending', self.path,
                            chunk, sorted(set(status[unknown].tolist())))
            return np.zeros(len(rows), np.uint8)
        return status

    def status(self) -> np.ndarray:
        """Status of every video (see `chunk_status`)."""
        if self.n_videos == 0:
            return np.zeros(0, np.uint8)
        return np.concatenate([self.chunk_status(c) for c in range(self.n_chunks)])

    def pending_chunks(self, chunks: Iterable[int] | None = None, retry_failed: bool = False) -> list[int]:
        """Chunks with work left: any pending video, or any failed one when `retry_failed`."""
        todo = []
        for c in (range(self.n_chunks) if chunks is None else chunks):
            s = self.chunk_status(c)
            if (s == PENDING).any() or (retry_failed and (s == FAILED).any()):
                todo.append(c)
        return todo

    def is_complete(self) -> bool:
        return bool((self.status() != PENDING).all())

    def write_chunk(self, chunk: int, data: ChunkData) -> None:
        """Write one whole chunk; `status` goes last so a torn write reads as pending.

        Features and timestamps are written a row chunk at a time up to the chunk's longest video:
        what is held is (n, row_chunk, D), however large T is.
        """
        rows = self.chunk_rows(chunk)
        n = len(rows)
        lengths = np.asarray(data.lengths)
        if len(data.features) != n or len(data.timestamps) != n or len(lengths) != n:
            raise StoreError(f'chunk {chunk}: {len(data.features)} videos given, the chunk has {n}')
        for i, (f, t) in enumerate(zip(data.features, data.timestamps)):
            want = (int(lengths[i]), self.feature_dim)
            if f.shape != want or t.shape != (want[0], 2) or want[0] > self.max_rows:
                raise StoreError(f'chunk {chunk}, video {i}: features {f.shape} and timestamps {t.shape} for length '
                                 f'{want[0]}, D={self.feature_dim}, T={self.max_rows}')
        if self.has_tokens != (data.tokens is not None):
            raise StoreError(f'chunk {chunk}: tokens given={data.tokens is not None}, store has '
                             f'tokens={self.has_tokens}')
        sl = slice(rows.start, rows.stop)
        g = self.group
        self._still_here(chunk)
        # pending first (a rewrite by --retry-failed or after --repair), so that a kill mid-write
        # leaves a chunk to redo, not finished rows over data that no longer matches their sums;
        # then no file of the unit is left to read: a damaged one would fail the write (`_remove_unit`)
        self.mark_pending(chunk)
        written = {'lengths': lengths, 'available': data.available, 'errors': np.asarray(data.errors, dtype=str)}
        if data.tokens is not None:
            written['tokens'] = np.asarray(data.tokens, dtype=str)
        for name in ('features', 'timestamps', *written, *((CHUNK_SUMS,) if self._has_sums else ())):
            self._remove_unit(name, chunk)
        sums = {}
        count = self.row_block_count(lengths)
        for name, per_video, width, dtype in (('features', data.features, self.feature_dim, np.float16),
                                              ('timestamps', data.timestamps, 2, np.float32)):
            crc = 0
            for j in range(count):
                lo, hi = j * self.row_chunk, min((j + 1) * self.row_chunk, self.max_rows)
                block = np.zeros((n, hi - lo, width), dtype)
                for i, v in enumerate(per_video):
                    if len(v) > lo:
                        block[i, :min(len(v), hi) - lo] = v[lo:hi]
                g[name][sl, lo:hi] = block  # a block of zeros only: Zarr writes (or keeps) no file for it
                crc = _digest(block, crc)
            sums[name] = crc
        for name, value in written.items():
            g[name][sl] = value
        if CHUNK_SUMS in g:  # a store made before it has none: its chunks are checked by their files
            sums.update({name: _digest(np.asarray(value, dtype=g[name].dtype)) for name, value in written.items()})
            g[CHUNK_SUMS][chunk:chunk + 1] = np.asarray([json.dumps(sums)], dtype=str)
        self._still_here(chunk)  # a store swapped in meanwhile keeps this chunk pending: never "done" with our rows
        g['status'][sl] = data.status

    def _identity(self) -> tuple[int, int, str | None] | None:
        """(device, inode, store_id) of the directory now at `path`; None when there is none. The id
        (stores made since it exists) tells apart a store rebuilt in place, whose directory may get the
        freed inode number back (ext4 does)."""
        try:
            st = os.stat(self.path)
            with open(self.path / 'zarr.json', 'rb') as f:
                store_id = json.load(f).get('attributes', {}).get('store_id')
        except (OSError, ValueError, AttributeError):
            return None
        return st.st_dev, st.st_ino, store_id

    def _still_here(self, chunk: int) -> None:
        """A StoreError when the directory at `path` is no longer the store this one opened: another
        run's --overwrite put its replacement there (its settings may differ from this run's)."""
        if self._identity() != self._where:
            raise StoreError(f'{self.path} was replaced while this run wrote it (another run\'s --overwrite finished); '
                             f'chunk {chunk} is not written to the store now there. Rerun the command to continue '
                             'that store, or with --overwrite')

    def damage(self, chunk: int, data: dict[str, np.ndarray]) -> str:
        """What of a finished chunk's data is missing or not as written, or '' (see `CHUNK_SUMS`).

        Args:
            data: the chunk's arrays as read, whole: those `write_chunk` writes, and `status`;
                for features and timestamps, their sums over `row_blocks` (`_digest` chained).

        A chunk without sums (a store made before them) is checked by its files instead: one with
        an available video must have its features, timestamps, lengths and available files, one
        with a failed video its errors file. A file whose every value was the fill value is never
        written, so nothing more can be asked of it.
        """
        rows = self.chunk_rows(chunk)
        where = f'chunk {chunk} (videos {rows.start}-{rows.stop - 1})'
        try:
            recorded = str(self._array(CHUNK_SUMS)[chunk]) if self._has_sums else ''
        except Exception as err:  # noqa: BLE001 - a damaged sums file is damage like any other
            return f'{where}: its recorded chunk sums cannot be read ({_first_line(err)})'
        if self._has_sums and not recorded:
            # every write records them before its status: a finished chunk without them lost its sums file,
            # and checking it by its files instead would pass data that is damaged but still decodes
            return f'{where}: its recorded chunk sums are missing (a chunk_sums file lost), so its data cannot be checked'
        if recorded:
            sums = _parse_sums(recorded)
            if sums is None:
                return (f'{where}: its recorded chunk sums are damaged ({recorded[:40]!r}), so its data cannot be '
                        'checked')
            got = {name: v if isinstance(v, int) else _digest(v) for name, v in data.items() if name in sums}
            bad = [name for name, crc in sums.items() if name in got and got[name] != crc]
            if bad:
                return (f'{where}: its {" and ".join(bad)} data {"is" if len(bad) == 1 else "are"} not what was '
                        f'written (a chunk file missing or damaged)')
            return ''
        needed = []
        if (np.asarray(data['available']).any() or (np.asarray(data['lengths']) > 0).any()):
            needed += ['features', 'timestamps', 'lengths', 'available']
        if 'status' in data and (np.asarray(data['status']) == FAILED).any():
            needed.append('errors')
        missing = [name for name in needed if not self._chunk_file(name, chunk).is_file()]
        if missing:
            return f'{where}: no {" or ".join(missing)} chunk file, though the chunk has videos that need one'
        return ''

    def mark_pending(self, chunk: int) -> None:
        """Make a chunk pending again (its data damaged): the next extraction redoes it whole.

        Its status file is removed, not written: it then reads as the fill value, pending, and a
        status shard that cannot be read (a kill mid-write) is replaced, where a write would read it."""
        self.chunk_rows(chunk)  # a chunk out of range is a StoreError
        self._remove_unit('status', chunk)

    def _chunk_file(self, name: str, chunk: int) -> Path:
        arr = self.group[name]
        return self.path / name / arr.metadata.encode_chunk_key((chunk,) + (0,) * (arr.ndim - 1))

    def _refuse_damage(self, chunk: int, data: dict[str, np.ndarray]) -> None:
        problem = self.damage(chunk, data)
        if problem:
            raise StoreError(f'{self.path}: {problem}. Mark such chunks for redoing with `python -m shared.store '
                             f'check --repair {self.path}`, then rerun the extraction: it redoes only them')

    def _refuse_bad_rows(self, chunk: int, data: dict[str, np.ndarray], nonfinite: Sequence[str] = (),
                         misordered: tuple[int, str] | None = None) -> None:
        """A StoreError for rows that no writer stores (`pack_chunk`'s rules) but that chunk sums, taken
        of what was written, do not catch: a store of an earlier version, or one written by other code.
        Read on, a length past T or below 0 divided a mean by it, NaN stopped training with a
        non-finite loss blamed on its learning rate, and rows out of time order were sampled and
        windowed as if in it. `misordered`: `_misordered`'s finding over the chunk's timestamps."""
        rows = self.chunk_rows(chunk)
        where = f'{self.path}: chunk {chunk} (videos {rows.start}-{rows.stop - 1})'
        fix = f'`python -m shared.store check {self.path}` lists such rows; extract the store again (--overwrite)'
        if nonfinite:
            raise StoreError(f'{where}: its {" and ".join(nonfinite)} hold NaN or inf values, which extraction never '
                             f'stores: {fix}')
        if misordered is not None:
            i, what = misordered
            try:
                who = f'video {rows.start + i} ({self.video_ids[rows.start + i]})'
            except StoreError:  # the ids' own damage is another read's error
                who = f'video {rows.start + i}'
            raise StoreError(f'{where}: {who}: {what}; every '
                             f'writer stores a video\'s rows in time order (start <= end, starts never going back; '
                             f'a negative time is unknown): {fix}')
        if 'lengths' in data and 'available' in data:
            lengths, available = np.asarray(data['lengths']), np.asarray(data['available']).astype(bool)
            bad = (lengths < 0) | (lengths > self.max_rows) | (available != (lengths > 0))
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise StoreError(f'{where}: video {rows.start + i} has length {int(lengths[i])} and available='
                                 f'{bool(available[i])}, which no writer stores (a length in [0, T={self.max_rows}], '
                                 f'available exactly when it is above 0): {fix}')

    def _read(self, chunk: int, name: str, where: Any) -> np.ndarray:
        """`name`[where] of one chunk; a chunk file that cannot be decoded (garbage, empty or cut
        short) is a StoreError naming the chunk and the fix, not Zarr's own error."""
        try:
            return self._array(name)[where]
        except Exception as err:  # noqa: BLE001 - zarr/numcodecs raise RuntimeError, ValueError, ...
            rows = self.chunk_rows(chunk)
            failure = StoreError(f'{self.path}: chunk {chunk} (videos {rows.start}-{rows.stop - 1}): its {name} chunk '
                                 f'file cannot be read ({_first_line(err)}). Mark such chunks for redoing with '
                                 f'`python -m shared.store check --repair {self.path}`, then rerun the extraction: '
                                 'it redoes only them')
            failure.reason = _first_line(err)  # what `check` reports
            raise failure from None

    def _read_chunk(self, chunk: int, names: Iterable[str]) -> dict[str, np.ndarray]:
        """One chunk's per-video arrays (not features or timestamps: `row_blocks`), whole."""
        rows = self.chunk_rows(chunk)
        return {name: self._read(chunk, name, slice(rows.start, rows.stop)) for name in names}

    def read(self, rows: Sequence[int] | slice | None = None, ids: Sequence[str] | None = None,
             arrays: Collection[str] | None = None, verify: bool = True,
             lengths: np.ndarray | None = None) -> ExpertRows:
        """Read rows into memory: all of them, the given row indices, or the given video ids.

        Features and timestamps are padded to the longest video read, not to T, and only the row
        chunks up to the longest video of each chunk read are read. A row read reads its whole
        chunk (unit of work: a shard file in a sharded store), whose sums cover all of it.

        Args:
            arrays: the arrays to read (names of `ExpertRows` fields; default all); the others are
                None. Training reads features, lengths and available: each array costs a Zarr call
                per chunk, and the strings' decoding and sums cost more than the numbers'.
            verify: check each finished chunk against its sums (`damage`). False where the caller
                has read and checked these chunks before (a streamed epoch after the run's first):
                then neither their status nor their sums are read again.
            lengths: with ``verify=False``, the lengths of the rows asked for as an earlier read
                found them: the lengths array is then not read, and only the row chunks that hold
                these rows are.

        Raises:
            StoreError: an id is not in the store, a finished chunk that holds a row read is
                missing data (`damage`: Zarr would give zeros for it), or a chunk file cannot be read.
        """
        if ids is not None:
            index = {v: i for i, v in enumerate(self.video_ids)}
            missing = [v for v in ids if v not in index]
            if missing:
                raise StoreError(f'{len(missing)} video ids not in {self.path}, e.g. {missing[:3]}')
            rows = [index[v] for v in ids]
        index = np.arange(self.n_videos)[slice(None) if rows is None else rows]
        every = ('video_ids', 'status', 'features', 'timestamps', 'lengths', 'available', 'errors',
                 *(('tokens',) if self.has_tokens else ()))
        names = every if arrays is None else tuple(n for n in every if n in arrays)
        rowed = [n for n in ('features', 'timestamps') if n in names]
        small = [n for n in names if n not in ('status', 'features', 'timestamps')]
        # lengths say which row chunks hold rows; a store without sums is checked by lengths and available
        if lengths is not None and verify:
            raise ValueError('read: lengths known from an earlier read go with verify=False')
        extra = [n for n in ('lengths', 'available') if n not in small
                 and (verify or (rowed and n == 'lengths' and lengths is None))]
        units = index // self.unit_size
        # whole chunks, one at a time: a finished chunk is checked against its sums before any row is used
        per_unit = {}
        for c in np.unique(units).tolist():
            data = self._read_chunk(c, small + extra)
            self._refuse_bad_rows(c, data)
            if verify or 'status' in names:
                data['status'] = self.chunk_status(c)
            per_unit[c] = data
        out = {name: np.empty(len(index), self._array(name).dtype if name in ('lengths', 'available') else object)
               for name in small}
        if 'status' in names:
            out['status'] = np.zeros(len(index), np.uint8)
        longest = 0
        for c, data in per_unit.items():
            at = np.flatnonzero(units == c)
            local = index[at] - self.chunk_rows(c).start
            for name in out:
                out[name][at] = data[name][local]
            if rowed:
                known = data['lengths'][local] if lengths is None else np.asarray(lengths)[at]
                longest = max(longest, int(np.max(known, initial=0)))
        width = min(longest, self.max_rows)
        big = {name: np.zeros((len(index), width) + ((self.feature_dim,) if name == 'features' else (2,)),
                              np.float16 if name == 'features' else np.float32) for name in rowed}
        for c, data in per_unit.items():
            at = np.flatnonzero(units == c)
            local = index[at] - self.chunk_rows(c).start
            # verified: every row chunk the sums cover; else those of the rows asked for
            count = 0 if not rowed else self.row_block_count(
                data['lengths'] if lengths is None else np.asarray(lengths)[at])
            nonfinite, misordered = [], None
            for name, dest in big.items():
                crc, latest = 0, np.full(len(self.chunk_rows(c)), -np.inf)
                for j, block in enumerate(self.row_blocks(c, name, count)):
                    if verify:
                        crc = _digest(block, crc)
                        if not _finite(block) and name not in nonfinite:
                            nonfinite.append(name)
                        if name == 'timestamps':
                            found = _misordered(block, j * self.row_chunk, data['lengths'], latest)
                            misordered = misordered or found
                    lo = j * self.row_chunk
                    if lo < width:
                        dest[at, lo:min(width, lo + block.shape[1])] = block[local, :width - lo]
                data[name] = crc
            if verify and (data['status'] != PENDING).any():
                self._refuse_damage(c, data)
                self._refuse_bad_rows(c, data, nonfinite, misordered)
        strings = lambda name: np.asarray(out[name], dtype=object) if name in out else None  # noqa: E731
        return ExpertRows(
            video_ids=strings('video_ids'), features=big.get('features'), timestamps=big.get('timestamps'),
            lengths=out['lengths'].astype(np.int32) if 'lengths' in out else None,
            available=out['available'].astype(bool) if 'available' in out else None, status=out.get('status'),
            errors=strings('errors'), tokens=strings('tokens'), max_rows=self.max_rows,
        )

    def read_blocks(self, rows: Sequence[int]) -> tuple[ExpertRows, Iterator[tuple[int, np.ndarray, np.ndarray]]]:
        """Rows of one unit of work, their features and timestamps a row chunk at a time: what is
        held is one row chunk of the unit, however long its videos are (`read` pads them all to
        the longest).

        Returns:
            The rows as `read` gives them, but with features and timestamps of width 0, and an
            iterator of (first row, features, timestamps), each (len(rows), up to row_chunk, ...)
            as stored, over the row chunks up to the longest video of `rows`. Once it is
            exhausted, a finished unit has been checked against its sums (`read`'s StoreError).
        """
        index = np.asarray(rows, np.int64)
        units = np.unique(index // self.unit_size).tolist()
        if len(units) != 1:
            raise StoreError(f'read_blocks reads the rows of one unit of work, got rows of units {units}')
        c = units[0]
        small = ('video_ids', 'lengths', 'available', 'errors', *(('tokens',) if self.has_tokens else ()))
        data = {**self._read_chunk(c, small), 'status': self.chunk_status(c)}
        self._refuse_bad_rows(c, data)
        local = index - self.chunk_rows(c).start
        got = {name: data[name][local] for name in (*small, 'status')}
        width = int(np.clip(got['lengths'], 0, self.max_rows).max(initial=0))
        head = ExpertRows(
            video_ids=np.asarray(got['video_ids'], dtype=object),
            features=np.zeros((len(index), 0, self.feature_dim), np.float16),
            timestamps=np.zeros((len(index), 0, 2), np.float32), lengths=got['lengths'].astype(np.int32),
            available=got['available'].astype(bool), status=got['status'],
            errors=np.asarray(got['errors'], dtype=object),
            tokens=np.asarray(got['tokens'], dtype=object) if self.has_tokens else None, max_rows=self.max_rows)

        def blocks() -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
            count = self.row_block_count(data['lengths'])
            crc = {'features': 0, 'timestamps': 0}
            nonfinite, misordered, latest = set(), None, np.full(len(data['lengths']), -np.inf)
            for j, (feats, times) in enumerate(zip(self.row_blocks(c, 'features', count),
                                                   self.row_blocks(c, 'timestamps', count))):
                crc = {'features': _digest(feats, crc['features']), 'timestamps': _digest(times, crc['timestamps'])}
                nonfinite |= {name for name, x in (('features', feats), ('timestamps', times)) if not _finite(x)}
                misordered = misordered or _misordered(times, j * self.row_chunk, data['lengths'], latest)
                lo = j * self.row_chunk
                if lo < width:  # the rest of the unit's row chunks are read for its sums only
                    yield lo, feats[local, :width - lo], times[local, :width - lo]
            if (data['status'] != PENDING).any():
                self._refuse_damage(c, {**data, **crc})
                self._refuse_bad_rows(c, data, sorted(nonfinite), misordered)

        return head, blocks()

    def lazy(self) -> dict[str, Any]:
        """Every array as a dask array, chunked like the store (nothing is read yet)."""
        import dask.array as da

        return {name: da.from_zarr(self.group[name]) for name in _DIMS if name in self.group}

    def consolidate(self) -> None:
        """Consolidate metadata (once a run completes) so that readers open the store in one read.

        Once only: no array's metadata changes after the store is made, and a rerun with nothing to
        do must not write (a store on a read-only mount, or one training reads, is left alone)."""
        if self.group.metadata.consolidated_metadata is not None:
            return
        with warnings.catch_warnings():  # zarr notes that consolidation is not in the v3 spec yet
            warnings.simplefilter('ignore', UserWarning)
            zarr.consolidate_metadata(str(self.path))


def _attrs_for(spec: StoreSpec, n_videos: int) -> dict[str, Any]:
    from shared import __version__

    attrs = dataclasses.asdict(spec)
    del attrs['config_defaults']
    attrs.update(schema_version=SCHEMA_VERSION, n_videos=n_videos, code_version=__version__,
                 created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds'),
                 store_id=uuid.uuid4().hex)  # tells a store rebuilt at the same path apart (`_still_here`)
    return json.loads(json.dumps(attrs))  # fail early on values JSON cannot hold


def _build(path: Path, video_ids: Sequence[str], spec: StoreSpec) -> None:
    spec = spec.resolved(len(video_ids))
    n, c, t, d = len(video_ids), spec.chunk_size, spec.max_rows, spec.feature_dim
    unit = c * spec.chunks_per_shard
    attrs = {**_attrs_for(spec, n), IDS_SUM: _digest(np.asarray(list(video_ids), dtype=object))}
    g = zarr.open_group(str(path), mode='w-', zarr_format=3, attributes=attrs)

    def make(name: str, shape: tuple[int, ...], dtype: Any, fill: Any) -> zarr.Array:
        chunks = (c, spec.row_chunk, shape[2]) if len(shape) == 3 else (c,)
        # a shard file holds a unit of work's chunks: one writer each, as for unsharded chunks
        shards = (unit,) + chunks[1:] if unit > c else None
        return g.create_array(name, shape=shape, chunks=chunks, shards=shards, dtype=dtype, fill_value=fill,
                              dimension_names=_DIMS[name])

    ids = make('video_ids', (n,), str, '')
    ids[:] = np.asarray(list(video_ids), dtype=str)
    make('features', (n, t, d), 'float16', 0)
    make('timestamps', (n, t, 2), 'float32', 0)
    make('lengths', (n,), 'int32', 0)
    make('available', (n,), 'bool', False)
    make('status', (n,), 'uint8', PENDING)
    make('errors', (n,), str, '')
    if spec.has_tokens:
        make('tokens', (n,), str, '')
    # one chunk of sums per unit of work: two writers never touch one
    g.create_array(CHUNK_SUMS, shape=(-(-n // c),), chunks=(1,), dtype=str, fill_value='',
                   dimension_names=_DIMS[CHUNK_SUMS])


def create_store(path: str | os.PathLike, video_ids: Sequence[str], spec: StoreSpec,
                 overwrite: bool = False) -> ExpertStore:
    """Create the store, or open it to resume when one with the same layout is already there.

    The group is built in a temporary directory and renamed into place, so that shards of a
    cluster job that start at the same time never see (or build) half a store.

    Raises:
        StoreError: a store is there with other videos or another layout (and not `overwrite`).
    """
    path = Path(path)
    if len(set(video_ids)) != len(video_ids):
        raise StoreError('video ids must be unique')
    if '' in video_ids:  # an empty id is what a lost chunk file of them reads as (`check`)
        raise StoreError('video ids must not be empty')
    _check_chunk_bytes(path, spec.resolved(len(video_ids)))  # before --overwrite removes the old store
    if overwrite and path.exists():
        shutil.rmtree(path)
    if path.exists() and not is_store(path):  # what a killed --overwrite leaves, say
        raise StoreError(f'{path} is there but is no store (no zarr.json): remove it, or rerun with --overwrite')
    remove_stale_temps(path)  # what builds killed with -9 left (others' are reported by `leftovers`)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path(path, unique=True)
        try:
            _build(tmp, video_ids, spec)
            os.rename(tmp, path)
        except OSError:
            if not path.exists():
                raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    store = open_store(path, mode='r+', warn_random=False)
    _check_source(store, spec)
    _check_compatible(store, video_ids, spec)
    return store


def _check_chunk_bytes(path: Path, spec: StoreSpec) -> None:
    """A StoreError for a layout whose features chunk decodes to more than `MAX_CHUNK_BYTES`: such a
    store would be made, then refused by every `open_store` (its reads decode a chunk whole)."""
    assert spec.row_chunk is not None
    size = spec.chunk_size * spec.row_chunk * spec.feature_dim * 2  # float16
    if size > MAX_CHUNK_BYTES:
        most = MAX_CHUNK_BYTES // (spec.row_chunk * spec.feature_dim * 2)
        raise StoreError(f'{path}: a chunk of {spec.chunk_size} videos x {spec.row_chunk} rows x {spec.feature_dim} '
                         f'dims decodes to {size >> 20} MiB, more than the {MAX_CHUNK_BYTES >> 30} GiB a chunk may: '
                         + (f'give a --chunk-size of at most {most}' if most else 'one video of them is more: give '
                            'fewer rows (max_rows) or a smaller feature_dim'))


def _check_source(store: ExpertStore, spec: StoreSpec) -> None:
    """A store is resumed only for the videos it was made for: two folders of one name, say, must
    never share one (a store made before `source` was recorded has the empty source)."""
    recorded = str(store.attrs.get('source', ''))
    if recorded != spec.source:
        raise StoreError(f'{store.path} holds features of {recorded or store.attrs.get("dataset", "?")!r}, not of '
                         f'{spec.source or spec.dataset!r}; remove it or rerun with --overwrite to start again')


def _check_compatible(store: ExpertStore, video_ids: Sequence[str], spec: StoreSpec) -> None:
    # the layout as the arrays have it (a store of schema 1 records no row_chunk or chunks_per_shard)
    a = {**store.attrs, 'row_chunk': store.row_chunk, 'chunks_per_shard': store.chunks_per_shard}
    want = {'expert': spec.expert, 'feature_dim': spec.feature_dim, 'max_rows': spec.max_rows,
            'chunk_size': spec.chunk_size, 'weights': spec.weights, 'model': spec.model}
    want.update({k: getattr(spec, k) for k in ('row_chunk', 'chunks_per_shard') if getattr(spec, k) is not None})
    diff = {k: (a.get(k), v) for k, v in want.items() if a.get(k) != v}
    # settings that change what a row means must match; these only change speed
    speed = ('batch_size', 'cuda_graph')
    ours = {k: v for k, v in json.loads(json.dumps(spec.config)).items() if k not in speed}
    theirs = {k: v for k, v in a.get('config', {}).items() if k not in speed}
    # a setting added since the store was made: the store was made with its default
    older = {k: v for k, v in json.loads(json.dumps(spec.config_defaults)).items() if k in ours and k not in theirs}
    theirs.update(older)
    for k in sorted(set(ours) | set(theirs)):
        if ours.get(k) != theirs.get(k) and k not in want:
            diff[f'config.{k}'] = (theirs.get(k), ours.get(k))
    if store.has_tokens != spec.has_tokens:
        diff['has_tokens'] = (store.has_tokens, spec.has_tokens)
    if diff:
        implied = {f'config.{k}' for k in older}
        detail = ', '.join(f'{k}: store has {x!r}{" (made before this setting: its default)" if k in implied else ""}, '
                           f'run wants {y!r}' for k, (x, y) in diff.items())
        raise StoreError(f'{store.path} exists with other settings ({detail}); remove it or rerun with '
                         '--overwrite to start again')
    ids = store.video_ids
    if len(ids) != len(video_ids) or any(x != y for x, y in zip(ids, video_ids)):
        raise StoreError(f'{store.path} exists for another video list ({_id_difference(ids, video_ids)}); '
                         'remove it or rerun with --overwrite to start again')


def _id_difference(store_ids: Sequence[str], run_ids: Sequence[str]) -> str:
    """How the dataset's video ids differ from a store's, in a few words."""
    ours, theirs = set(store_ids), set(run_ids)
    new, gone = [i for i in run_ids if i not in ours], [i for i in store_ids if i not in theirs]

    def few(xs: list[str]) -> str:
        return ', '.join(xs[:3]) + (f' and {len(xs) - 3} more' if len(xs) > 3 else '')

    parts = [f'{len(store_ids)} videos in the store, {len(run_ids)} in the dataset']
    if new:
        parts.append(f'new in the dataset: {few(new)}')
    if gone:
        parts.append(f'gone from the dataset: {few(gone)}')
    if not new and not gone:
        parts.append('the same videos in another order')
    return '; '.join(parts)


def open_store(path: str | os.PathLike, mode: str = 'r', warn_random: bool = True) -> ExpertStore:
    """Open an existing store; warns (RandomWeightsWarning) when its weights were random."""
    path = Path(path)
    if not is_store(path):
        raise StoreError(f'no expert store at {path} (no zarr.json)')
    try:
        files = _ChunkFiles(path, read_only=mode == 'r')
        group = zarr.open_group(files, mode=mode, zarr_format=3)
    except Exception as err:  # noqa: BLE001 - zarr raises several types for a broken group
        raise StoreError(f'cannot open store {path}: {err}') from err
    try:
        missing = [k for k in ('video_ids', 'status', *_ROW_ARRAYS) if k not in group]
    except Exception as err:  # noqa: BLE001 - a member's metadata that zarr cannot parse
        raise StoreError(f'cannot open store {path}: {_first_line(err)}') from None
    for key in ('chunk_size', 'max_rows', 'feature_dim', 'expert'):
        if key not in group.attrs:
            missing.append(f'attribute {key}')
    if missing:
        raise StoreError(f'{path} is not an expert store: missing {", ".join(missing)}')
    # a newer layout may give its arrays other meanings that read without an error here (rows
    # written otherwise, sums taken otherwise): it is refused, never read or resumed as one of ours
    schema = group.attrs.get('schema_version', 1)
    if schema not in _READABLE_SCHEMAS:
        raise StoreError(f'{path}: its schema_version is {json.dumps(schema)[:40]} (written by videoexperts '
                         f'{json.dumps(group.attrs.get("code_version", "?"))[:40]}), but this code reads schema versions '
                         f'{", ".join(map(str, _READABLE_SCHEMAS))}: use the version that made it, or extract it '
                         'again with this one (--overwrite)')
    for key in ('chunk_size', 'max_rows', 'feature_dim'):  # the layout every read and write computes from
        value = group.attrs[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise StoreError(f'{path}: its attribute {key} is {json.dumps(value)[:40]}, not a whole number >= 1: its '
                             'zarr.json is damaged')
    arrays = _arrays_of(path, group)
    # a shard file is read whole when a whole unit is: its chunks, each within the bound
    files.limit = max(1, int((arrays['status'].shards or arrays['status'].chunks)[0]) // int(group.attrs['chunk_size'])) \
        * MAX_CHUNK_BYTES + (1 << 20)
    store = ExpertStore(path, group)
    store._arrays.update(arrays)  # opened once (`_array`)
    if warn_random and store.random_weights:
        warnings.warn(f'{path}: features were extracted with RANDOM weights (expert '
                      f'{store.attrs.get("expert")!r}); they carry no meaning beyond tests and demos',
                      RandomWeightsWarning, stacklevel=2)
    return store


class _ChunkFiles(zarr.storage.LocalStore):
    """Zarr's store of local files, reading only regular files of a bounded size (`limit` bytes a
    read): Zarr reads a file whole, so a chunk file that is a FIFO hung every reader, one that is a
    link to /dev/zero filled memory, and so did a sparse file of 100 GB that takes no disk (a store
    received from others)."""

    limit = MAX_CHUNK_BYTES + (1 << 20)  # metadata and, until `open_store` sets it from the layout, chunks

    def _check(self, key: str, byte_range: Any) -> None:
        from zarr.abc.store import OffsetByteRequest, RangeByteRequest, SuffixByteRequest

        try:
            st = os.stat(self.root / key)
        except (FileNotFoundError, NotADirectoryError):
            return  # Zarr's own: no file is the fill value
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f'{key} is no regular file (a FIFO, a device or a socket): the store is damaged or forged')
        size = st.st_size
        if isinstance(byte_range, RangeByteRequest):
            size = byte_range.end - byte_range.start
        elif isinstance(byte_range, OffsetByteRequest):
            size -= byte_range.offset
        elif isinstance(byte_range, SuffixByteRequest):
            size = min(size, byte_range.suffix)
        if size > self.limit:
            raise ValueError(f'{key}: a read of {size >> 20} MiB, more than its chunks may hold ({self.limit >> 20} MiB): '
                             'the store is damaged or forged')

    async def get(self, key: str, prototype: Any = None, byte_range: Any = None) -> Any:
        self._check(key, byte_range)
        return await super().get(key, prototype, byte_range)

    async def get_partial_values(self, prototype: Any, key_ranges: Iterable[tuple[str, Any]]) -> list[Any]:
        key_ranges = list(key_ranges)
        for key, byte_range in key_ranges:
            self._check(key, byte_range)
        return await super().get_partial_values(prototype, key_ranges)


def _arrays_of(path: Path, group: zarr.Group) -> dict[str, zarr.Array]:
    """The store's arrays, each an array of the shape its attributes give (N videos, T rows, D dims): a
    StoreError naming the first that is not (a damaged zarr.json), not an AttributeError, IndexError or
    numpy broadcast error out of the first read."""
    arrays = {}
    for name in ('video_ids', 'status', *_ROW_ARRAYS, 'tokens', CHUNK_SUMS):
        if name not in group:  # tokens and chunk_sums are optional; the others were checked
            continue
        try:
            node = group[name]
        except Exception as err:  # noqa: BLE001 - zarr raises TypeError, ValueError, KeyError for bad metadata
            raise StoreError(f'{path}: the metadata of its {name} cannot be read ({_first_line(err)}): its zarr.json '
                             'is damaged') from None
        if not isinstance(node, zarr.Array):
            raise StoreError(f'{path}: its {name} is a {type(node).__name__}, not an array: its zarr.json is damaged')
        arrays[name] = node
        unbounded = _unbounded_codecs(node.metadata.codecs)
        if unbounded:  # only zstd's headers bound what a chunk decodes to (`shared.zstd_bound`); `_build` writes no other
            raise StoreError(f'{path}: its {name} is compressed with {", ".join(unbounded)}, which this code never '
                             'writes and does not decode: its zarr.json is damaged, or the store was made elsewhere')
    n, t, d, c = (arrays['status'].shape or (0,))[0], int(group.attrs['max_rows']), int(group.attrs['feature_dim']), \
        int(group.attrs['chunk_size'])
    shapes = {'features': (n, t, d), 'timestamps': (n, t, 2), CHUNK_SUMS: (-(-n // c),)}
    for name, arr in arrays.items():
        want = shapes.get(name, (n,))
        if tuple(arr.shape) != want:
            raise StoreError(f'{path}: its {name} has shape {tuple(arr.shape)}, expected {want} from its status and '
                             'attributes: its zarr.json is damaged')
        # a chunk is decoded whole: one declared beyond the store's layout (a few KB of a received store
        # that inflate to GBs) is refused before any is read; strings have no size to check
        inner, most = tuple(arr.chunks), (max(c, 1), *(max(k, 1) for k in want[1:]))
        size = math.prod(inner) * (arr.dtype.itemsize or 1)
        if any(k > m for k, m in zip(inner, most)):
            raise StoreError(f'{path}: its {name} is chunked {inner}, beyond its chunk_size and shape {most}: its '
                             'zarr.json is damaged')
        if size > MAX_CHUNK_BYTES:  # within the layout: a store of schema 1 with a long T whole in a chunk, say
            raise StoreError(f'{path}: a chunk of its {name} {inner} decodes to {size >> 20} MiB, more than the '
                             f'{MAX_CHUNK_BYTES >> 30} GiB a chunk may (each read decodes one whole): extract it again '
                             'with --overwrite (a new store chunks T in rows, --chunk-size sets the videos a chunk), '
                             'or remove it if it was received from others')
    problems = _layout_problems(arrays, group.attrs)
    if problems:
        # the metadata is wrong, not a chunk: every chunk reads wrongly or fails, and `check --repair`, which
        # marks chunks for redoing, would throw away a whole extraction and leave the metadata as it is
        files = ', '.join(f'{name}/zarr.json' for name in dict.fromkeys(p.split(' ', 1)[0] for p in problems))
        raise StoreError(f'{path}: its metadata is not what extraction writes ({"; ".join(problems)}): its zarr.json '
                         f'is damaged, not its chunks, which `check --repair` cannot mend. Restore {files} (and the '
                         "store's own zarr.json, which holds a copy once the store is complete) from a backup or "
                         'another copy of the store, or make the store again (extract --overwrite)')
    return arrays


def _layout_problems(arrays: dict[str, zarr.Array], attrs: Any) -> list[str]:
    """What of the arrays' data types, fill values and chunk shapes is not what `_build` makes, each
    'NAME has ..., expected ...'. A store of schema 1 has no row_chunk attribute: T was one chunk."""
    c, t, d = int(attrs['chunk_size']), int(attrs['max_rows']), int(attrs['feature_dim'])
    rc = attrs.get('row_chunk', t)
    rc = rc if isinstance(rc, int) and not isinstance(rc, bool) and 1 <= rc <= t else t
    units = {name: int((arr.shards or arr.chunks)[0]) for name, arr in arrays.items() if name != CHUNK_SUMS}
    # the unit of work most arrays have: the one array that differs is the damaged one
    unit = collections.Counter(units.values()).most_common(1)[0][0] if units else c
    problems = []
    for name, arr in arrays.items():
        want, want_fill = _TYPES[name]
        dtype, fill = arr.dtype, arr.fill_value
        if dtype.kind not in 'TUO' if want == 'str' else dtype != np.dtype(want):
            problems.append(f'{name} has data type {dtype}, expected {want}')
        elif not (str(fill) == want_fill if want == 'str' else bool(fill == want_fill)):
            problems.append(f'{name} has fill value {str(fill)[:40]!r}, expected {want_fill!r}')
        chunks = tuple(arr.chunks)
        expected = {'features': (c, rc, d), 'timestamps': (c, rc, 2), CHUNK_SUMS: (1,)}.get(name, (c,))
        if chunks != expected:
            problems.append(f'{name} has chunk shape {chunks}, expected {expected}')
        elif name in units and units[name] != unit:  # two units of work would share a file: one writer per unit fails
            problems.append(f'{name} is sharded by {units[name]} videos, expected {unit} as the other arrays')
    return problems


def _unbounded_codecs(codecs: Sequence[Any]) -> list[str]:
    """The names of the compressors among `codecs` (inside shards too) other than zstd, whose
    chunks are decoded only within a bound, and crc32c, a checksum."""
    from zarr.abc.codec import BytesBytesCodec
    from zarr.codecs import Crc32cCodec, ShardingCodec, ZstdCodec

    found = []
    for codec in codecs:
        if isinstance(codec, ShardingCodec):
            found += _unbounded_codecs((*codec.codecs, *codec.index_codecs))
        elif isinstance(codec, BytesBytesCodec) and not isinstance(codec, (ZstdCodec, Crc32cCodec)):
            found.append(codec.to_dict().get('name', type(codec).__name__))
    return found


# ------------------------------------------------------------------------------------- replace
# `extract --overwrite` builds the new store beside the old one and swaps them only once the new
# one is complete, so that a stopped run never leaves neither:
#   .NAME.overwrite-new   the replacement being built (resumed by a rerun with the same settings)
#   .NAME.import-new      the same, built by `pipelines.import_features` (never resumed: an import is quick)
#   .NAME.reembed-new     the same, built by `extract.reembed` in place (never resumed; to --out: a `temp_path`)
#   .NAME.overwrite-swap  complete and claimed for the swap by one process (shards race for it)
#   .NAME.overwrite-old   the old store, set aside between the two renames of the swap, then removed
# A rerun of any extraction of the store finishes a swap that a kill cut short (`finish_swap`).

def _aside(path: Path, what: str) -> Path:
    return path.parent / f'.{path.name}.overwrite-{what}'


#: who builds replacements (`replacement_path`): each its own staging name, so neither removes the other's
_BUILDERS = ('overwrite', 'import', 'reembed')


def replacement_path(path: str | os.PathLike, builder: str = 'overwrite') -> Path:
    """Where the replacement of the store at `path` is built: by `extract --overwrite`, by an
    import (`builder='import'`), which must never start again over a replacement an extraction
    is building, or by `extract.reembed` (`builder='reembed'`)."""
    if builder not in _BUILDERS:
        raise ValueError(f'builder must be one of {_BUILDERS}, got {builder!r}')
    return Path(path).parent / f'.{Path(path).name}.{builder}-new'



def create_replacement(path: str | os.PathLike, video_ids: Sequence[str], spec: StoreSpec) -> ExpertStore:
    """The store that will replace the one at `path`, built beside it: an unfinished replacement
    with the same layout (an earlier run of the same command, or another shard's) is continued, one
    with other settings is started again. The store at `path` is not touched."""
    path = Path(path)
    finish_swap(path)
    staged = replacement_path(path)
    try:
        return create_store(staged, video_ids, spec)
    except StoreError:  # made by an --overwrite with other settings: its work is not this run's
        return create_store(staged, video_ids, spec, overwrite=True)


def _final(staged: Path) -> Path | None:
    """The store path that `staged` replaces, when `staged` is a replacement."""
    name = staged.name
    for builder in _BUILDERS:
        if name.startswith('.') and name.endswith(f'.{builder}-new'):
            return staged.with_name(name[1:-len(f'.{builder}-new')])
    return None


def swap_in(store: ExpertStore) -> ExpertStore:
    """Put a complete replacement in the place of the store it replaces; returns the store there.

    The old store is set aside, the new one renamed into place, and the old one removed: two
    renames in one directory, during which Ctrl-C and SIGTERM wait. A kill between them leaves
    both stores whole beside each other, and `finish_swap` (run by every extraction) completes it.
    A store that is no replacement is consolidated and returned as it is.
    """
    path = _final(store.path)
    if path is None:
        store.consolidate()
        return store
    if is_store(store.path):  # else another shard has claimed it
        try:
            store.consolidate()
            # the claim: of shards finishing together, one renames the replacement, the others find it gone
            os.rename(store.path, _aside(path, 'swap'))
        except FileNotFoundError:
            pass
        except OSError as err:
            if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
    finish_swap(path)
    return open_store(path, mode='r+', warn_random=False)


def finish_swap(path: str | os.PathLike) -> None:
    """Complete a swap of a replacement into `path` that was claimed but cut short; remove an old
    store set aside by a swap that completed; settle what a re-embedding of earlier versions left
    (`_settle_legacy_reembed`). Nothing to do, the usual case, costs two stats and a listing.

    Processes finishing one swap (shards of one --overwrite, each at its end) take turns
    (`_swap_lock`): one that saw the swap to do and renamed after another had done it whole moved
    the new store aside as the old one, leaving none at `path`, and the next run then made an
    empty store there and removed the complete one as old."""
    path = Path(path)
    swap, old = _aside(path, 'swap'), _aside(path, 'old')
    if not (os.path.lexists(swap) or os.path.lexists(old) or _legacy_reembed(path)):
        return
    with _swap_lock(path):  # what is to do is looked at again once the turn is ours
        if old.exists() and _complete(path):  # the swap put the new one in place: the old one goes
            shutil.rmtree(old, ignore_errors=True)
        if is_store(swap):
            with signals_deferred():
                for src, dst in ((path, old), (swap, path)):
                    try:
                        if src == swap or os.path.lexists(src):
                            os.rename(src, dst)
                    except FileNotFoundError:  # another process is at the same swap (a file system without locks)
                        pass
            fsync_dir(path.parent)  # the renames survive a power cut
            _logger.info('%s: replaced by the store an --overwrite built beside it', path)
        # only behind a complete store: an incomplete one there (made by a run while the swap was undone)
        # may stand beside the only complete copy, which `leftovers` then reports
        if old.exists() and _complete(path):
            shutil.rmtree(old, ignore_errors=True)
        _settle_legacy_reembed(path)


def _complete(path: Path) -> bool:
    """Whether a complete store is at `path` (a store that cannot be opened is not)."""
    if not is_store(path):
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', RandomWeightsWarning)
            return open_store(path).is_complete()
    except StoreError:
        return False


#: `held_store`'s refusals, by who asks and who holds: extractions share a store (the shards of one run
#: write it together), a re-embedding holds it alone
_HELD_BY = {
    ('reembed', 'reembed'): '{path} is being re-embedded by another process: wait for it to end (its store then takes '
                            'this one\'s place), and rerun only if you still need to',
    ('reembed', 'extract'): '{path} is being written by an extraction (python -m extract): wait for it to end, then '
                            'rerun this re-embedding',
    ('extract', 'reembed'): '{path} is being re-embedded (python -m extract.reembed): wait for it to end, then rerun '
                            'this command',
}


@contextlib.contextmanager
def held_store(path: str | os.PathLike, job: str) -> Iterator[None]:
    """The store at `path` held by this process inside the block: an flock of its directory, shared by
    an extraction (`job='extract'`: its shards and other extractions write other units of it) and
    exclusive for a re-embedding (`job='reembed'`), which reads every chunk and swaps a new store in.
    A conflict is refused at once, a StoreError naming the other job (a shared lock granted to a
    refused re-embedding tells that the holder is an extraction). The directory, not a lock file:
    nothing is left beside the store, the lock follows it through renames, and the OS drops it when its
    process ends, kill -9 included. No store at `path`: nothing to hold. On a file system without
    locks it warns and runs unguarded."""
    import fcntl

    from shared.files import _NO_LOCKS

    path = Path(path)
    mode = fcntl.LOCK_EX if job == 'reembed' else fcntl.LOCK_SH
    for _ in range(3):  # a store swapped in between the open and the lock is the one to hold
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except (FileNotFoundError, NotADirectoryError):
            yield
            return
        try:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
            except OSError as err:
                if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):  # only a re-embedding refuses an extraction
                    holder = 'reembed' if job == 'extract' else _holder(path)
                    raise StoreError(_HELD_BY[job, holder].format(path=path)) from None
                if err.errno not in _NO_LOCKS:
                    raise
                _logger.warning('%s cannot be locked (%s): nothing stops another process from writing it meanwhile',
                                path, err.strerror or err)
            st = os.fstat(fd)
            try:
                now = os.stat(path)
            except FileNotFoundError:  # swapped out meanwhile: the next turn looks again
                continue
            if (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino):
                yield
                return
        finally:
            os.close(fd)  # releases the lock
    raise StoreError(f'{path} keeps being replaced while this command starts: rerun it once the other commands '
                     'writing it are done')


def _holder(path: Path) -> str:
    """Who holds the store at `path` that a lock was refused: 'extract' when a shared lock is granted
    (only extractions share it), else 'reembed'."""
    import fcntl

    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return 'extract'
    except OSError:
        return 'reembed'
    finally:
        os.close(fd)


@contextlib.contextmanager
def _swap_lock(path: Path) -> Iterator[None]:
    """This process's turn at the swaps of `path`: an flock of the folder that holds it, waited for
    (a turn takes two renames and the removal of an old store); the folder, not a lock file, so that
    nothing more is left beside the store. On a file system without locks (`shared.files`), swaps
    run unguarded, as before."""
    import fcntl

    from shared.files import _NO_LOCKS

    fd = os.open(path.parent, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as err:
            if err.errno not in _NO_LOCKS:
                raise
        yield
    finally:
        os.close(fd)  # releases the lock


def _legacy_reembed(path: Path) -> list[tuple[Path, str, int]]:
    """(folder, kind, pid) of what `extract.reembed` of versions before `swap_in` left beside `path`:
    `.NAME.old-PID`, the store set aside for the swap, and `.NAME.reembed-PID`, the new one."""
    found = []
    for p in path.parent.glob(f'.{glob.escape(path.name)}.*-*'):
        kind, _, pid = p.name[len(path.name) + 2:].partition('-')
        if kind in ('old', 'reembed') and pid.isdigit():
            found.append((p, kind, int(pid)))
    return sorted(found)


def _settle_legacy_reembed(path: Path) -> None:
    """Adopt or remove what an old re-embedding left (`_legacy_reembed`), never the only complete
    copy of the store, nor anything of a process still running on this host.

    A kill between its renames left no store at `path`: the one store set aside goes back there
    (the re-embedding did not finish; rerunning it does). Once a store is at `path`, set-aside
    stores go when that one is complete (the swap had finished: the old one was being removed),
    and new ones always (a re-embedding cut short; the store it was made from is at `path`)."""
    from shared.files import _alive

    found = [(p, kind) for p, kind, pid in _legacy_reembed(path) if not _alive(pid)]
    aside = [p for p, kind in found if kind == 'old' and is_store(p)]
    if not os.path.lexists(path) and len(aside) == 1:
        with signals_deferred():
            os.rename(aside[0], path)
        fsync_dir(path.parent)
        _logger.warning('%s: put back from %s, where a re-embedding cut short had set it aside', path, aside[0].name)
    if not is_store(path):
        return
    complete = _complete(path)
    for p, kind in found:
        if kind == 'reembed' or complete:
            shutil.rmtree(p, ignore_errors=True)
            _logger.info('%s: removed %s, left by a re-embedding cut short', path, p.name)


@contextlib.contextmanager
def unreadable(path: str | os.PathLike, what: str, fix: str) -> Any:
    """Files of `path` that cannot be read inside the block (JSON, a chunk or an .npz cut short, an
    array or attribute missing, a FAISS file of garbage) are one StoreError naming `what` `path` and `fix`,
    not the reader's own error: zarr, numcodecs and FAISS raise ValueError, KeyError, RuntimeError ..."""
    try:
        yield
    except StoreError:
        raise
    # a missing file, not a refused or failing read (a read-only mount, a disk error): those are no
    # reason to remove what may be a good index, and keep their own message
    except (ValueError, KeyError, TypeError, RuntimeError, FileNotFoundError, EOFError, zipfile.BadZipFile) as err:
        raise StoreError(f'{what} {path} cannot be read ({_first_line(err)[:160]}): it was cut short or damaged. '
                         f'{fix}') from None


# ----------------------------------------------------------------------------------------- check

def leftovers(path: str | os.PathLike) -> list[tuple[Path, str]]:
    """Directories that stopped jobs left beside the store at `path`, each with what to do about it.

    `create_store` builds in `.NAME.HOST-PID-X.tmp` (before, `.NAME.tmp-PID-X`; the next run of this
    host removes those of gone processes), `extract --overwrite` builds in `.NAME.overwrite-new`
    and `extract.reembed` in `.NAME.reembed-new` (see `swap_in`; before, it wrote `.NAME.reembed-PID`
    and set the store aside as `.NAME.old-PID` while it swapped the two). A kill leaves them (a re-embedded copy is as large as
    the store). Whether their job still runs cannot be told from here (it may be on another
    node), so they are reported, never removed here (`finish_swap`, which every extraction and
    re-embedding runs first, settles those of an old re-embedding: `_settle_legacy_reembed`).
    """
    path = Path(path)
    found = []
    rerun = 'rerun the extraction of this store (any extract command for it, or extract.reembed) to finish the swap'
    overwrite = {
        'new': 'the replacement an extract --overwrite is building; the store stays until it is complete. '
               'Rerun that command to continue it, or remove this to give it up',
        'swap': f'a complete replacement whose swap into place was cut short: {rerun}',
        'old': f'the store as it was before an extract --overwrite or extract.reembed whose swap was cut short: {rerun}'
               + ('' if is_store(path) else f', or rename this back to {path.name}'),
    }
    for p in sorted(path.parent.glob(f'.{glob.escape(path.name)}.*-*')):
        kind, _, sub = p.name[len(path.name) + 2:].partition('-')
        if kind == 'overwrite' and sub in overwrite:
            found.append((p, overwrite[sub]))
        elif kind == 'import' and sub == 'new':
            found.append((p, 'the replacement an import was building when it stopped; the store stays as it was. '
                             'Remove it once no import of this dataset is running, or rerun the import'))
        elif kind == 'old' and not path.exists():
            found.append((p, f'the store, set aside by a re-embedding that stopped before the new one took its '
                             f'place: rename it back to {path.name}'))
        elif kind in ('tmp', 'reembed', 'old') or re.fullmatch(r'[0-9a-f]{8}', kind) and p.name.endswith('.tmp'):
            job = 'a re-embedding' if kind in ('reembed', 'old') else 'an extraction or import'
            found.append((p, f'left by {job} of this store that stopped: remove it once no such job is running'))
    return found


def _tree_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:  # removed meanwhile by the job that wrote it
                pass
    return total


@dataclasses.dataclass
class CheckReport:
    """What `check_store` found."""

    path: Path
    problems: list[str] = dataclasses.field(default_factory=list)
    leftovers: list[tuple[Path, str]] = dataclasses.field(default_factory=list)
    counts: dict[str, int] = dataclasses.field(default_factory=dict)
    available: int = 0
    mean_length: float = 0.0
    error_counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    attrs: dict[str, Any] = dataclasses.field(default_factory=dict)
    unreadable_chunks: int = 0
    damaged: list[int] = dataclasses.field(default_factory=list)  # finished chunks with data missing, or unreadable status

    @property
    def valid(self) -> bool:
        return not self.problems

    @property
    def complete(self) -> bool:
        return self.counts.get('pending', 0) == 0 and self.unreadable_chunks == 0

    @property
    def exit_code(self) -> int:
        return 1 if not self.valid else (0 if self.complete else 2)

    def summary(self) -> str:
        a, c = self.attrs, self.counts
        n = sum(c.values())
        finished = n - c.get('pending', 0)
        weights = a.get('weights', '?')
        weights = 'RANDOM (not meaningful features)' if weights == 'random' else weights
        left = [f'leftover  {p.name} ({_tree_bytes(p) / 1e6:.1f} MB): {what}' for p, what in self.leftovers]
        if not a:  # not opened as a store: nothing but the problem to report
            return '\n'.join([f'store     {self.path}', *(f'PROBLEM   {p}' for p in self.problems[:10]),
                              *left, 'result    INVALID'])
        lines = [
            f'store     {self.path}',
            f'expert    {a.get("expert", "?")} on {a.get("dataset", "?")}: model {a.get("model") or "?"}, '
            f'weights {weights or "?"}',
            f'layout    T={a.get("max_rows", "?")} D={a.get("feature_dim", "?")} '
            f'chunk={a.get("chunk_size", "?")} videos x {a.get("row_chunk", "?")} rows, '
            + (f'{a["chunks_per_shard"]} chunks per shard file' if a.get('chunks_per_shard', 1) > 1 else 'no shards'),
            f'videos    {n}: done {c.get("done", 0)}, failed {c.get("failed", 0)}, '
            f'skipped {c.get("skipped", 0)}, pending {c.get("pending", 0)}',
        ]
        if finished:
            lines.append(f'available {self.available}/{finished} finished '
                         f'({100.0 * self.available / finished:.1f}%), mean length '
                         f'{self.mean_length:.2f} rows per available video')
        for msg, k in self.error_counts.most_common(5):
            lines.append(f'error     {k} x {msg[:100]}')
        for p in self.problems[:10]:
            lines.append(f'PROBLEM   {p}')
        if len(self.problems) > 10:
            lines.append(f'PROBLEM   ... and {len(self.problems) - 10} more')
        if self.damaged:
            lines.append(f'repair    python -m shared.store check --repair {self.path} marks the {len(self.damaged)} '
                         'damaged chunk(s) pending; the rerun of the extraction redoes them')
        lines.extend(left)
        state = 'INVALID' if not self.valid else ('VALID, COMPLETE' if self.complete else 'VALID, INCOMPLETE')
        lines.append(f'result    {state}')
        return '\n'.join(lines)


def _check_chunk(store: ExpertStore, c: int, report: CheckReport, lengths_sum: list[int]) -> None:
    g, rows = store.group, store.chunk_rows(c)
    sl = slice(rows.start, rows.stop)
    try:
        status = g['status'][sl]
    except Exception:  # noqa: BLE001 - torn status chunk: the chunk is still to do
        report.unreadable_chunks += 1
        report.counts['pending'] = report.counts.get('pending', 0) + len(rows)
        report.damaged.append(c)  # --repair marks it pending by replacing the file (`mark_pending`)
        return
    bad_status = ~np.isin(status, list(STATUS_NAMES))
    if bad_status.any():  # as `chunk_status` reads it: pending, the whole chunk redone
        report.problems.append(f'chunk {c}: unknown status values {sorted(set(status[bad_status].tolist()))}')
        report.counts['pending'] = report.counts.get('pending', 0) + len(rows)
        report.damaged.append(c)
        return
    for code, name in STATUS_NAMES.items():
        report.counts[name] = report.counts.get(name, 0) + int((status == code).sum())
    finished = status != PENDING
    if not finished.any():
        return
    n = len(rows)
    bad = collections.defaultdict(lambda: np.zeros(n, bool))  # per video: what is wrong with its rows
    try:
        data = store._read_chunk(c, ('lengths', 'available', 'errors', *(('tokens',) if store.has_tokens else ())))
        count = store.row_block_count(data['lengths'])
        valid_to = np.clip(data['lengths'], 0, store.max_rows)[:, None]
        # a row chunk at a time: bounded memory however long the videos are
        latest = np.full(n, -np.inf)  # each video's latest known start so far (`_early_starts`)
        for name in ('features', 'timestamps'):
            crc = 0
            for j, block in enumerate(store.row_blocks(c, name, count)):
                crc = _digest(block, crc)
                x = block.astype(np.float32)
                pad = (j * store.row_chunk + np.arange(x.shape[1]))[None, :] >= valid_to
                bad[f'have NaN/inf {name}'] |= ~np.isfinite(x).all(axis=(1, 2))
                after = f'have non-zero {name} after their length' + ' (or while unavailable)' * (name == 'features')
                bad[after] |= (np.abs(np.nan_to_num(x)) * pad[..., None]).max(axis=(1, 2), initial=0) > 0
                if name == 'timestamps':
                    bad['have a row that ends before it starts'] |= ((x[..., 0] > x[..., 1]) & ~pad).any(axis=1)
                    bad['have a row that starts before a row before it'] |= _early_starts(
                        x, j * store.row_chunk, valid_to[:, 0], latest).any(axis=1)
            data[name] = crc
    except StoreError as err:  # a finished chunk must read back
        report.problems.append(f'chunk {c} (videos {rows.start}-{rows.stop - 1}): finished rows unreadable, '
                               f'a chunk file damaged ({getattr(err, "reason", err)})')
        report.damaged.append(c)  # --repair marks it pending: the rerun rewrites every file of it
        return
    damage = store.damage(c, {**data, 'status': status})
    stale = {name: store.stale_row_blocks(c, name, count) for name in ('features', 'timestamps')}
    if not damage and any(stale.values()):
        damage = (f'chunk {c} (videos {rows.start}-{rows.stop - 1}): row chunk files beyond its longest video '
                  f'({", ".join(f"{k} {v}" for k, v in stale.items() if v)}), left by a write of it cut short')
    if damage:
        report.problems.append(damage)
        report.damaged.append(c)
    lengths, avail, errors = data['lengths'], data['available'], data['errors']
    tokens = data.get('tokens')

    def flag(mask: np.ndarray, what: str) -> None:
        mask = mask & finished
        if mask.any():
            first = rows.start + int(np.flatnonzero(mask)[0])
            report.problems.append(f'{int(mask.sum())} rows {what} (first: row {first})')

    for what in ('have NaN/inf features', 'have NaN/inf timestamps'):
        flag(bad[what], what)
    flag((lengths < 0) | (lengths > store.max_rows), f'have lengths outside [0, {store.max_rows}]')
    flag(avail != (lengths > 0), 'disagree between available and lengths (available <=> length > 0)')
    flag(np.isin(status, (FAILED, SKIPPED)) & avail, 'are failed/skipped but marked available')
    flag((status == FAILED) & (errors == ''), 'are failed without an error message')
    for what in ('have non-zero features after their length (or while unavailable)',
                 'have non-zero timestamps after their length', 'have a row that ends before it starts',
                 'have a row that starts before a row before it'):
        flag(bad[what], what)
    if tokens is not None:
        for i in np.flatnonzero(finished):
            if tokens[i]:
                try:
                    recorded_tokens(str(tokens[i]))
                except ValueError as err:
                    report.problems.append(f'row {rows.start + i}: tokens are damaged ({err})')
    report.available += int((avail & finished).sum())
    lengths_sum[0] += int(lengths[avail & finished].sum())
    report.error_counts.update(str(e) for e in errors[(status == FAILED) & finished])


def _check_ids(store: ExpertStore, report: CheckReport) -> None:
    """The video ids, a chunk at a time: readable, none empty, none twice. They are written once, when
    the store is made, and no chunk sums cover them: Zarr reads a lost chunk file of them as empty ids."""
    seen: set[str] = set()
    empty, twice = [], []
    for start in range(0, store.n_videos, store.chunk_size):
        stop = min(start + store.chunk_size, store.n_videos)
        try:
            ids = store._array('video_ids')[start:stop]
        except Exception as err:  # noqa: BLE001 - zarr/numcodecs raise RuntimeError, ValueError, ...
            report.problems.append(f'video_ids of videos {start}-{stop - 1} cannot be read ({_first_line(err)}): '
                                   'make the store again (extract --overwrite)')
            continue
        for i, v in enumerate(ids):
            v = str(v)
            (empty if not v else twice if v in seen else []).append(start + i)
            seen.add(v)
    if empty:  # a lost chunk file: which videos these rows are is not known any more
        report.problems.append(f'{len(empty)} video ids are empty (first: row {empty[0]}): a video_ids chunk file '
                               'lost, or a dataset that listed an empty id (refused since): make the store again '
                               '(extract --overwrite)')
    if twice:
        report.problems.append(f'{len(twice)} video ids are there twice (first: row {twice[0]}): make the store '
                               'again (extract --overwrite)')
    if not report.problems:  # each readable and once: are they those the store was made with?
        try:
            store.video_ids
        except StoreError as err:
            report.problems.append(str(err).removeprefix(f'{store.path}: '))


def check_store(path: str | os.PathLike) -> CheckReport:
    """Validate a store chunk by chunk (bounded memory) and summarise it."""
    report = CheckReport(Path(path), leftovers=leftovers(path))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', RandomWeightsWarning)
            store = open_store(path)
    except StoreError as err:
        report.problems.append(str(err))
        return report
    report.attrs = {**store.attrs, 'row_chunk': store.row_chunk, 'chunks_per_shard': store.chunks_per_shard}
    _check_ids(store, report)
    lengths_sum = [0]
    for c in range(store.n_chunks):
        _check_chunk(store, c, report, lengths_sum)
    report.mean_length = lengths_sum[0] / report.available if report.available else 0.0
    return report


def main(argv: list[str] | None = None) -> int:
    """CLI: ``python -m shared.store check PATH [PATH ...]`` or ``check --dataset D [--features-root R]``."""
    examples = ('examples:\n  python -m shared.store check features/demo/object.zarr features/demo/scene.zarr\n'
                '  python -m shared.store check --dataset demo --features-root features\n'
                '  make check DATASET=demo')
    parser = argparse.ArgumentParser(
        prog='python -m shared.store', description='Inspect expert stores (Zarr v3).', epilog=examples,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest='command', required=True)
    p = sub.add_parser('check', help='validate stores and print a summary', epilog=examples,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description='Validate stores: shapes, masks consistent with lengths, no NaN/inf, '
                                   'status complete.\nExit 0 when every store is valid and complete, 1 when one is invalid,\n'
                                   '2 when one is incomplete or there is none to check.')
    p.add_argument('paths', nargs='*', type=Path, metavar='PATH', help='a {expert}.zarr directory')
    p.add_argument('--dataset', default=None,
                   help='check every store of this dataset ({features root}/{dataset}/*.zarr) besides any PATH')
    p.add_argument('--features-root', type=Path, default=None,
                   help='where the stores are, with --dataset (default: features, or $VIDEOEXPERTS_FEATURES_ROOT)')
    p.add_argument('--repair', action='store_true',
                   help='mark finished chunks whose data is missing or damaged as pending, so that rerunning the '
                        'extraction redoes them (run it while no extraction writes the store)')
    args = parser.parse_args(argv)
    paths = list(args.paths)
    if args.dataset is not None:
        from shared.config import features_root_default
        from shared.datasets import require_registered, stores_name

        try:  # folder:PATH's stores are under the name extract gave them (folder-NAME-HASH)
            folder = store_path(args.features_root or features_root_default(), stores_name(args.dataset), 'any').parent
        except (StoreError, DatasetError) as err:
            print(f'error: {err}', file=sys.stderr)
            return 1
        found = sorted(folder.glob('*.zarr'))
        if not found and not args.dataset.startswith('folder:'):
            try:  # a typo ('msrvt') is not a dataset to extract: say so, with the names it may have meant
                require_registered(args.dataset)
            except DatasetError as err:
                print(f'error: {err}', file=sys.stderr)
                return 1
        if not found:  # nothing extracted yet: incomplete, as the README's exit codes say
            print(f'error: no stores of {args.dataset} in {folder}: nothing is extracted yet. Extract them first '
                  f'(make extract DATASET={args.dataset}), or give the --features-root they are under',
                  file=sys.stderr)
            return 2
        paths += found
    if not paths:
        parser.error('give PATH or --dataset')
    codes = []
    for i, path in enumerate(paths):
        report = check_store(path)
        if i:
            print()
        if args.repair and report.damaged:
            store = open_store(path, mode='r+', warn_random=False)
            for c in report.damaged:
                store.mark_pending(c)
            print(f'repaired  chunks {", ".join(map(str, report.damaged))} marked pending: rerun the extraction '
                  'to redo them')
            report = check_store(path)
        print(report.summary())
        codes.append(report.exit_code)
    return 1 if 1 in codes else (2 if 2 in codes else 0)


if __name__ == '__main__':
    sys.exit(main())
