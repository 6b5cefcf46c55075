"""An aggregated-feature cache on local disk for streamed parts (`train.stream`, issue 21).

A streamed part reads and aggregates every store chunk again each epoch, in reader processes that
share the CPU with the training step. Where aggregation is deterministic (``data.sample: video``:
every epoch gives a video the same model inputs), the first read of a unit writes its aggregated
arrays, exactly the bytes the model gets, to one file, and later reads take them back in the main
process: no reader process, no Zarr call, no aggregation. A video's rows of every array lie together
in the file (one record), so a later epoch reads each batch's videos straight into the batch's arrays,
one `os.preadv` a video, with no shuffle buffer to copy through (`gather`). Window and segment
sampling (`train.sampling`, MMT's pretraining) draw new rows every epoch and are not cached.

Reads go through a file descriptor into a buffer of their own, never through `np.memmap`: the
pages of a mapped file count in the process's resident memory, which the memory budget bounds.

Where the cache's contents are: only in this process's index (`UnitCache.index`). A file left by a
run that was killed (keyed by the run, the part and the rank) is removed unread when the run starts
again, and the file is removed when the run ends (`close`).
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path

import numpy as np

from shared.resources import format_bytes

__all__ = ['UnitCache', 'open_cache', 'cache_path']

_logger = logging.getLogger(__name__)

#: space the cache leaves free on its file system for the run's checkpoints and others, at least
#: (and a tenth of what was free)
KEEP_FREE = 1 << 30

Arrays = tuple[np.ndarray | None, ...]  # an expert's (x, available, mask, times), as `train.stream`'s
#: each expert's arrays as (dtype, the shape of one video's rows), None for an absent one
Layout = dict[str, tuple[tuple[np.dtype, tuple[int, ...]] | None, ...]]


def cache_path(folder: Path, run: Path, part: str, rank: int) -> Path:
    """The cache file of a run's part on one rank: in `folder`, keyed by the run directory, so that
    runs sharing a temporary folder never meet, and a rerun of one run finds its killed attempt's."""
    key = hashlib.sha1(str(run.resolve()).encode()).hexdigest()[:12]
    return folder / f'videoexperts-stream-cache-{key}-{part}-rank{rank}.bin'


def open_cache(path: Path, size: int) -> tuple[UnitCache | None, str]:
    """A cache at `path` for about `size` bytes, or None where its file system has not room for it
    beside `KEEP_FREE` (or a tenth of the free space); and what the run's first lines say about it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    usage = shutil.disk_usage(path.parent)
    keep = max(KEEP_FREE, usage.free // 10)
    if usage.free - size < keep:
        return None, (f'no feature cache: {format_bytes(size)} would leave under {format_bytes(keep)} free in '
                      f'{path.parent} (train.stream_cache_dir)')
    stale = path.exists()
    if stale:  # a killed attempt of this run (or one running at once): its index died with it
        path.unlink()
    return UnitCache(path), (f'aggregated features cached in {path} ({format_bytes(size)}, read back by later '
                             f'epochs{"; a stale cache of a stopped run was removed" if stale else ""})')


class UnitCache:
    """Units' aggregated arrays appended to one file, a record per video: the video's rows of each
    array, in the layout's order. `index` holds where each unit's records begin."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None  # the file is made by the first `put`
        self.closed = False
        self.index: dict[int, tuple[int, int]] = {}  # unit -> (offset of its first record, videos)
        self.layout: Layout | None = None  # the same for every unit: set by the first `put`
        self.record = 0  # bytes of a video's record
        self.end = 0
        self.full = False  # a write failed: no more units go in

    def __contains__(self, unit: int) -> bool:
        return unit in self.index

    def put(self, unit: int, arrays: dict[str, Arrays]) -> None:
        """Append a unit's arrays (each expert's, a row per video), a record per video. A failed
        write (a full disk) turns the cache off, with a warning: the units it holds stay readable,
        the rest are read from the stores."""
        if self.closed or self.full or unit in self.index:
            return
        layout = {n: tuple(None if a is None else (a.dtype, a.shape[1:]) for a in f) for n, f in arrays.items()}
        if self.layout is None:
            self.layout, self.record = layout, sum(_row_bytes(w) for f in layout.values() for w in f)
        elif layout != self.layout:  # units of one part are aggregated alike: a bug, never data
            raise ValueError(f'unit {unit} is laid out unlike the cached units: {layout} != {self.layout}')
        rows = [_rows(a) for f in arrays.values() for a in f if a is not None]
        n = len(rows[0])
        try:
            if self.fd is None:  # O_EXCL: a file another process made meanwhile is refused, never shared
                self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            for i in range(n):
                parts = [r[i] for r in rows]
                if os.pwritev(self.fd, parts, self.end + i * self.record) != self.record:
                    _write_rest(self.fd, b''.join(parts), self.end + i * self.record)
        except OSError as err:
            _logger.warning('the feature cache %s stops growing (%s); units not in it are read from the stores',
                            self.path, err)
            if self.fd is not None:
                os.ftruncate(self.fd, self.end)
            self.full = True
            return
        self.index[unit] = (self.end, n)
        self.end += n * self.record

    def get(self, unit: int) -> dict[str, Arrays]:
        """A unit's arrays, read whole from the file into memory of their own."""
        return self.gather(np.full(self.index[unit][1], unit), np.arange(self.index[unit][1]))

    def gather(self, units: np.ndarray, videos: np.ndarray) -> dict[str, Arrays]:
        """The arrays of video `videos[j]` of unit `units[j]` (its place in the unit), as row j,
        in new memory: each video's record read straight into its rows."""
        assert self.layout is not None and self.fd is not None
        out = {n: tuple(None if w is None else np.empty((len(videos), *w[1]), w[0]) for w in f)
               for n, f in self.layout.items()}
        rows = [_rows(a) for f in out.values() for a in f if a is not None]
        where = np.array([self.index[u][0] for u in units.tolist()], np.int64) + videos * self.record
        for j, offset in enumerate(where.tolist()):
            views = [r[j] for r in rows]
            if os.preadv(self.fd, views, offset) != self.record:  # short (a signal, a network file system)
                data, at = self._read_record(offset), 0
                for v in views:
                    v[:] = data[at:at + len(v)]
                    at += len(v)
        return out

    def _read_record(self, offset: int) -> bytes:
        """One record's bytes, read until whole."""
        parts, done = [], 0
        while done < self.record:
            got = os.pread(self.fd, self.record - done, offset + done)
            if not got:
                raise OSError(f'the feature cache {self.path} ends before a record at {offset}: was it truncated?')
            parts.append(got)
            done += len(got)
        return b''.join(parts)

    def close(self) -> None:
        """Close and remove the file (the run has ended, or stopped with an error); the units are
        read from the stores again after this."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
            self.path.unlink(missing_ok=True)
        self.index.clear()
        self.closed = True


def _row_bytes(where: tuple[np.dtype, tuple[int, ...]] | None) -> int:
    return 0 if where is None else int(np.prod(where[1], dtype=np.int64)) * where[0].itemsize


def _rows(a: np.ndarray) -> list[memoryview]:
    """Each row of `a` (a C-contiguous array) as a byte view."""
    flat = memoryview(np.ascontiguousarray(a).reshape(-1).view(np.uint8))
    step = flat.nbytes // len(a) if len(a) else 0
    return [flat[i * step:(i + 1) * step] for i in range(len(a))]


def _write_rest(fd: int, data: bytes, offset: int) -> None:
    """Write what a short `pwritev` left (rare on a local file: a signal, a nearly full disk)."""
    done = 0
    while done < len(data):
        done += os.pwrite(fd, data[done:], offset + done)
