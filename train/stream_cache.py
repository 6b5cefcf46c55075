"""An aggregated-feature cache on local disk for streamed parts (`train.stream`, issue 21).

A streamed part reads and aggregates every store chunk again each epoch, in reader processes that
share the CPU with the training step. Where aggregation is deterministic (``data.sample: video``:
every epoch gives a video the same model inputs), the first read of a unit writes its aggregated
arrays, exactly the bytes the model gets, to one file, and later reads take them back with one
`os.preadv` each in the main process: no reader process, no Zarr call, no aggregation. Window and
segment sampling (`train.sampling`, MMT's pretraining) draw new rows every epoch and are not cached.

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

import torch

from shared.resources import format_bytes

__all__ = ['UnitCache', 'open_cache', 'cache_path']

_logger = logging.getLogger(__name__)

#: space the cache leaves free on its file system for the run's checkpoints and others, at least
#: (and a tenth of what was free)
KEEP_FREE = 1 << 30

Layout = dict[str, tuple[tuple[str, tuple[int, ...], int] | None, ...]]  # `train.stream.Packed`'s layout


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
    """Packed units (`train.stream._pack`'s one byte buffer and layout) appended to one file; a
    unit is read back whole, into a new buffer, by its offset in `index`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None  # the file is made by the first `put`
        self.closed = False
        self.index: dict[int, tuple[int, int, Layout]] = {}  # unit -> (offset, bytes, layout)
        self.end = 0
        self.full = False  # a write failed: no more units go in

    def __contains__(self, unit: int) -> bool:
        return unit in self.index

    def put(self, unit: int, buffer: torch.Tensor, layout: Layout) -> None:
        """Append a unit's packed buffer. A failed write (a full disk) turns the cache off, with a
        warning: the units it holds stay readable, the rest are read from the stores."""
        if self.closed or self.full or unit in self.index:
            return
        view = memoryview(buffer.numpy()).cast('B')
        try:
            if self.fd is None:  # O_EXCL: a file another process made meanwhile is refused, never shared
                self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            done = 0
            while done < len(view):
                done += os.pwrite(self.fd, view[done:], self.end + done)
        except OSError as err:
            _logger.warning('the feature cache %s stops growing (%s); units not in it are read from the stores',
                            self.path, err)
            if self.fd is not None:
                os.ftruncate(self.fd, self.end)
            self.full = True
            return
        self.index[unit] = (self.end, len(view), layout)
        self.end += len(view)

    def get(self, unit: int) -> tuple[torch.Tensor, Layout]:
        """A unit's packed buffer, read whole from the file into memory of its own."""
        offset, size, layout = self.index[unit]
        buffer = torch.empty(size, dtype=torch.uint8)
        view = memoryview(buffer.numpy()).cast('B')
        done = 0
        while done < size:
            n = os.preadv(self.fd, [view[done:]], offset + done)
            if n == 0:
                raise OSError(f'the feature cache {self.path} ends before unit {unit}: was it truncated?')
            done += n
        return buffer, layout

    def close(self) -> None:
        """Close and remove the file (the run has ended, or stopped with an error); the units are
        read from the stores again after this."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
            self.path.unlink(missing_ok=True)
        self.index.clear()
        self.closed = True
