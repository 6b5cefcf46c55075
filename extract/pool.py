"""The decode process pool: videos decoded in worker processes, in order, with bounded prefetch,
a per-video time limit, and a crash blamed on the video that caused it.

Workers are spawned, so they never share a process with torch's CUDA state or with
PyNvVideoCodec's FFmpeg, which crashes beside decord's.
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
import multiprocessing
import os
import threading
from collections.abc import Callable, Iterator, Sequence

from extract.decode import decode_video
from extract.sampling import DecodedVideo, Sampling
from shared.resources import memory_limit

__all__ = ['DecodePool', 'TIMEOUT_S_PER_MB', 'PREFETCH_MEMORY_SHARE', 'WORKER_NICE', 'ahead', 'prefetch']

#: seconds of decoding allowed per MB of file beyond `DecodePool.timeout`: decord read 2.9-3.7 MB
#: of H.264 per second on one core of a 2-core EPYC, at 240p to 1080p (BENCHMARKS.md); 4 s per MB
#: (0.25 MB/s) leaves room for slower codecs, busy cores and FFmpeg's second pass
TIMEOUT_S_PER_MB = 4.0

#: share of the memory this process may use that decoded videos may fill (`DecodePool.max_bytes`)
PREFETCH_MEMORY_SHARE = 0.25


#: niceness added to decode worker processes. The main process feeds the GPU and writes the
#: stores; when the workers take every core, its threads wait for a time slice at each wake-up.
#: Decoders have prefetch to absorb the delay; the main process has none (BENCHMARKS.md).
WORKER_NICE = 10


def _worker_init() -> None:
    os.environ.setdefault('OMP_NUM_THREADS', '1')
    _exit_with_parent()
    try:
        os.nice(WORKER_NICE)
    except OSError:  # a platform without it: run at the parent's priority
        pass


def _exit_with_parent() -> None:
    """End this worker process as soon as the process that started it has ended, however it ended.

    A `ProcessPoolExecutor` worker waits for work on a queue whose write end it holds itself, so
    it never sees its parent go: a parent killed outright (SIGKILL, the OOM killer), or one that
    exits past the pool's shutdown, left it waiting for ever, orphaned, and with it
    multiprocessing's resource tracker, which runs until the last process holding its pipe ends.
    The parent's sentinel (a pipe only the parent holds open) becomes readable when it ends.
    """
    from multiprocessing.connection import wait

    parent = multiprocessing.parent_process()
    if parent is None or parent.sentinel is None:
        return

    def watch() -> None:
        wait([parent.sentinel])
        os._exit(1)  # nothing to save: a decode worker's results go only to the parent

    threading.Thread(target=watch, name='exit-with-parent', daemon=True).start()


def ahead(largest: int, first: int, most: int, max_bytes: int) -> int:
    """Videos to keep decoded or decoding ahead of the consumer: `first` until one is in (its size
    unknown), then as many as `max_bytes` holds of the largest video so far, from 1 to `most`."""
    return first if not largest else max(1, min(most, max_bytes // largest))


def prefetch(queue: collections.deque, todo: Iterator[tuple[int, str]], depth: int,
             submit: Callable[[int, str], cf.Future]) -> None:
    """Submit (row, path) items from `todo` until `depth` are in flight; queue holds (row, path, future)."""
    while len(queue) < depth:
        item = next(todo, None)
        if item is None:
            return
        queue.append((*item, submit(*item)))


def _kill_processes(pool: cf.ProcessPoolExecutor) -> None:
    """Kill a pool's worker processes (a hung decoder); `shutdown` alone would wait for them."""
    for p in list((getattr(pool, '_processes', None) or {}).values()):
        p.kill()


class DecodePool:
    """Decode videos in worker processes, in order, with bounded prefetch and a per-video timeout.

    Args:
        samplings: expert name -> Sampling.
        workers: processes; 0 decodes in the calling process (debugging, tiny runs).
        prefetch: videos decoded ahead of the consumer, per worker.
        timeout: seconds one video may take before it is failed and the pool restarted (a decoder
            that hangs), at least: a larger file gets `TIMEOUT_S_PER_MB` seconds per MB.
        max_bytes: decoded frames (and audio) held in and ahead of the workers, at most. A long
            video cut into clips is large (I3D's 128 clips of 64 frames at 256x455: 2.9 GB), so
            fewer videos are decoded ahead once such a video is seen, and one per worker until the
            first is in. Default: `PREFETCH_MEMORY_SHARE` of the memory this process may use.
        work: what the processes run for one video: `decode_video`, or `index_video` (frame
            times only); a module-level function, since it is sent to them by name.
    """

    def __init__(self, samplings: dict[str, Sampling], workers: int = 1, prefetch: int = 2,
                 timeout: float = 300.0, max_bytes: int | None = None,
                 work: Callable[[int, str, dict[str, Sampling]], DecodedVideo] = decode_video) -> None:
        self.samplings = samplings
        self.workers = workers
        self.depth = max(1, workers * prefetch)
        self.timeout = timeout
        self.max_bytes = max_bytes if max_bytes is not None else int(PREFETCH_MEMORY_SHARE * memory_limit())
        self._pool: cf.ProcessPoolExecutor | None = None
        self._lock = threading.Lock()  # `decode_one` callers share the pool
        self._generation = 0  # processes started so far: which pool a caller's future came from
        self._stopped = False  # killed by `close`: `decode_one` callers stop too
        self.work = work

    def _start(self) -> cf.ProcessPoolExecutor:
        if self._pool is None:
            self._pool = cf.ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context('spawn'),
                                                initializer=_worker_init)
            self._generation += 1
        return self._pool

    def close(self, kill: bool = False) -> None:
        """Stop the processes: after their work, or at once (`kill`: an interrupted or failed run)."""
        with self._lock:
            self._stopped = kill
            self._shutdown(kill)

    def _shutdown(self, kill: bool) -> None:
        if self._pool is not None:
            if kill:
                _kill_processes(self._pool)
            self._pool.shutdown(wait=not kill, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(kill=exc[0] is not None)

    def imap(self, items: Sequence[tuple[int, str]]) -> Iterator[DecodedVideo]:
        """Decoded videos for (row, path) items, in the order given."""
        if self.workers == 0:
            for row, path in items:
                yield self._here(row, path)
            return
        queue: collections.deque[tuple[int, str, cf.Future]] = collections.deque()
        todo = iter(items)
        largest = 0  # bytes of the largest decoded video so far

        def refill() -> None:
            prefetch(queue, todo, ahead(largest, self.workers, self.depth, self.max_bytes), self._submit)

        refill()
        while queue:
            row, path, fut = queue.popleft()
            try:
                result = self._wait(row, path, fut, lambda: self._restart(queue))
            except cf.process.BrokenProcessPool:  # this video's process died, or another one did
                self._restart(queue)
                result = self._alone(row, path)
            largest = max(largest, result.nbytes)
            yield result
            refill()

    def decode_one(self, row: int, path: str) -> DecodedVideo:
        """Decode one video in a worker process and wait for it; safe to call from several threads
        at once (NVDEC's decode threads hand the files NVDEC cannot read to the CPU this way).

        A video that hangs is failed and the processes restarted, as in `imap`; a video whose
        process died, or that was in flight when another one was failed, goes to `_alone`.
        """
        if self.workers == 0:
            return self._here(row, path)
        with self._lock:
            if self._stopped:
                return DecodedVideo(row, error='decoding was stopped')
            future = self._submit(row, path)  # a pool another caller's video broke is replaced here
            generation = self._generation
        try:
            return self._wait(row, path, future, lambda: self._kill(generation))
        except cf.process.BrokenProcessPool:
            if self._stopped:
                return DecodedVideo(row, error='decoding was stopped')
            self._kill(generation)
        return self._alone(row, path)

    def _alone(self, row: int, path: str) -> DecodedVideo:
        """Decode a video whose process died in a process of its own: a video that was only in
        flight when another one crashed its process is decoded, and a crash is blamed on the
        video that caused it."""
        with cf.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context('spawn'),
                                    initializer=_worker_init) as solo:
            try:
                return self._wait(row, path, solo.submit(self.work, row, path, self.samplings),
                                  lambda: _kill_processes(solo))
            except cf.process.BrokenProcessPool:
                return DecodedVideo(row, error='the decoder process crashed on this video')

    def _here(self, row: int, path: str) -> DecodedVideo:
        """`work` in the calling process (`workers=0`); decord then takes as many threads as it likes."""
        if self.work is decode_video:
            return decode_video(row, path, self.samplings, threads=0)
        return self.work(row, path, self.samplings)

    def _wait(self, row: int, path: str, future: cf.Future, kill: Callable[[], None]) -> DecodedVideo:
        """`future`'s video, or a failed one (and `kill` called) once it took longer than the file's limit."""
        limit = self.limit(path)
        try:
            return future.result(timeout=limit)
        except cf.TimeoutError:
            kill()
            return DecodedVideo(row, error=f'decoding took longer than {limit:.0f} s (the limit for a file '
                                           f'of this size): the decoder may hang on it')

    def _kill(self, generation: int) -> None:
        """Kill the pool's processes if they are still those of `generation` (another caller may
        have restarted them already)."""
        with self._lock:
            if self._generation == generation and self._pool is not None:
                self._shutdown(kill=True)

    def limit(self, path: str) -> float:
        """Seconds to wait for one video: a long video is not a hung decoder (a 2-hour 1080p file
        takes about 9 minutes on one core at the 3 MB of file per second measured in BENCHMARKS.md)."""
        try:
            size = os.path.getsize(path)
        except OSError:
            size = 0
        return max(self.timeout, size / 1e6 * TIMEOUT_S_PER_MB)

    def _submit(self, row: int, path: str) -> cf.Future:
        """Queue one video; a pool broken by a video still queued is replaced (that video's own
        future fails when its turn comes, and `imap` sorts it out then)."""
        try:
            return self._start().submit(self.work, row, path, self.samplings)
        except cf.process.BrokenProcessPool:
            self._shutdown(kill=True)
            return self._start().submit(self.work, row, path, self.samplings)

    def _restart(self, queue: collections.deque) -> None:
        """Kill the pool (a hung or crashed decoder) and resubmit the queued videos not yet decoded."""
        kept = list(queue)
        queue.clear()
        self._shutdown(kill=True)
        for row, path, fut in kept:
            done = fut.done() and not fut.cancelled() and fut.exception() is None
            queue.append((row, path, fut if done else self._submit(row, path)))
