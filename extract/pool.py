"""The decode process pool: videos decoded in worker processes, in order, with bounded prefetch,
a per-video time limit, and a crash blamed on the video that caused it.

A video is decoded a window at a time (`extract.sampling.Window`, `DECODE_WINDOW_S` seconds by
default): its first window says how many there are, and its later windows are queued right after
it, ahead of the next videos, so results come out in order: video by video, window by window.

Workers are spawned, so they never share a process with torch's CUDA state or with
PyNvVideoCodec's FFmpeg, which crashes beside decord's.
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
import dataclasses
import multiprocessing
import os
import threading
from collections.abc import Callable, Iterator, Sequence

from extract.decode import decode_video
from extract.sampling import WHOLE, DecodedVideo, Sampling, Window
from shared.resources import memory_limit

__all__ = ['DecodePool', 'Task', 'TIMEOUT_S_PER_MB', 'PREFETCH_MEMORY_SHARE', 'WORKER_NICE', 'DECODE_WINDOW_S',
           'ahead', 'prefetch', 'settle']

#: seconds of video decoded at once (`--decode-window`). The frames in flight for a video are those
#: of a window, whatever its duration: 640x360 clips of 16 frames at 30 fps are 0.33 GB per 30 s
#: window; a short video is one window, and batches still mix videos
DECODE_WINDOW_S = 30.0

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


@dataclasses.dataclass
class Task:
    """One decode in a pool's queue: a window of a video, and its future once submitted."""

    row: int
    path: str
    window: Window
    future: cf.Future | None = None
    windows: int = 1  # the video's windows (known from its first window's result)


def prefetch(queue: collections.deque[Task], todo: Iterator[tuple[int, str]], depth: int,
             submit: Callable[[int, str, Window], cf.Future], seconds: float) -> None:
    """Submit queued tasks in order (a video's later windows first), then the first windows of
    (row, path) items from `todo` (`seconds` long), until `depth` are in flight."""
    in_flight = sum(t.future is not None for t in queue)
    for t in queue:
        if in_flight >= depth:
            return
        if t.future is None:
            t.future = submit(t.row, t.path, t.window)
            in_flight += 1
    while in_flight < depth:
        item = next(todo, None)
        if item is None:
            return
        window = Window(0, seconds)
        queue.append(Task(*item, window, submit(*item, window)))
        in_flight += 1


def settle(queue: collections.deque[Task], task: Task, video: DecodedVideo) -> DecodedVideo:
    """`video`, the result of `task`, stamped with its window; a first window queues the video's
    later windows at the front of `queue` (to be submitted by `prefetch`)."""
    video.window = task.window.index
    if task.window.index:
        video.windows = task.windows
        return video
    if video.error:  # no frames, no later windows
        video.windows = 1
    queue.extendleft(Task(task.row, task.path, Window(k, task.window.seconds), windows=video.windows)
                     for k in range(video.windows - 1, 0, -1))
    return video


def _kill_processes(pool: cf.ProcessPoolExecutor) -> None:
    """Kill a pool's worker processes (a hung decoder); `shutdown` alone would wait for them.

    A worker killed while it sent a decoded video leaves half a message in the result pipe, and the
    pool's manager thread would wait for the rest for ever: so would the interpreter at exit, which
    joins that thread (`python -m extract` hung after a SIGTERM: seen once in a CI run).
    Closing this process's copy of the pipe's write end turns the wait into an end of file once the
    killed workers' copies are gone with them; the pool is broken then, and never used again."""
    for p in list((getattr(pool, '_processes', None) or {}).values()):
        p.kill()
    writer = getattr(getattr(pool, '_result_queue', None), '_writer', None)
    if writer is not None:
        writer.close()


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
        work: what the processes run for one window of a video: `decode_video`, or `index_video`
            (frame times only); a module-level function, since it is sent to them by name.
        window_s: seconds of video decoded at once; 0 decodes each video whole.
    """

    def __init__(self, samplings: dict[str, Sampling], workers: int = 1, prefetch: int = 2,
                 timeout: float = 300.0, max_bytes: int | None = None,
                 work: Callable[[int, str, dict[str, Sampling], Window], DecodedVideo] = decode_video,
                 window_s: float = DECODE_WINDOW_S) -> None:
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
        self.window_s = window_s

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
        """Decoded windows of videos for (row, path) items, in the order given (a video's windows
        one after another: `window` of `windows`)."""
        queue: collections.deque[Task] = collections.deque()
        todo = iter(items)
        largest = 0  # bytes of the largest decoded window so far

        def refill() -> None:
            depth = ahead(largest, self.workers, self.depth, self.max_bytes) if self.workers else 1
            submit = self._submit if self.workers else _done(self._here)
            prefetch(queue, todo, depth, submit, self.window_s)

        refill()
        while queue:
            task = queue.popleft()
            assert task.future is not None  # `prefetch` submits the queue in order
            try:
                result = self._wait(task.row, task.path, task.future, lambda: self._restart(queue))
            except cf.process.BrokenProcessPool:  # this video's process died, or another one did
                self._restart(queue)
                result = self._alone(task.row, task.path, task.window)
            largest = max(largest, result.nbytes)
            yield settle(queue, task, result)
            refill()

    def decode_one(self, row: int, path: str, window: Window = WHOLE) -> DecodedVideo:
        """Decode one video in a worker process and wait for it; safe to call from several threads
        at once (NVDEC's decode threads hand the files NVDEC cannot read to the CPU this way).

        A video that hangs is failed and the processes restarted, as in `imap`; a video whose
        process died, or that was in flight when another one was failed, goes to `_alone`.
        """
        if self.workers == 0:
            return self._here(row, path, window)
        with self._lock:
            if self._stopped:
                return DecodedVideo(row, error='decoding was stopped')
            future = self._submit(row, path, window)  # a pool another caller's video broke is replaced here
            generation = self._generation
        try:
            return self._wait(row, path, future, lambda: self._kill(generation))
        except cf.process.BrokenProcessPool:
            if self._stopped:
                return DecodedVideo(row, error='decoding was stopped')
            self._kill(generation)
        return self._alone(row, path, window)

    def _alone(self, row: int, path: str, window: Window) -> DecodedVideo:
        """Decode a video whose process died in a process of its own: a video that was only in
        flight when another one crashed its process is decoded, and a crash is blamed on the
        video that caused it."""
        with cf.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context('spawn'),
                                    initializer=_worker_init) as solo:
            try:
                return self._wait(row, path, solo.submit(self.work, row, path, self.samplings, window),
                                  lambda: _kill_processes(solo))
            except cf.process.BrokenProcessPool:
                return DecodedVideo(row, error='the decoder process crashed on this video')

    def _here(self, row: int, path: str, window: Window) -> DecodedVideo:
        """`work` in the calling process (`workers=0`); decord then takes as many threads as it likes."""
        if self.work is decode_video:
            return decode_video(row, path, self.samplings, window, threads=0)
        return self.work(row, path, self.samplings, window)

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

    def _submit(self, row: int, path: str, window: Window) -> cf.Future:
        """Queue one window of a video; a pool broken by a video still queued is replaced (that
        video's own future fails when its turn comes, and `imap` sorts it out then)."""
        try:
            return self._start().submit(self.work, row, path, self.samplings, window)
        except cf.process.BrokenProcessPool:
            self._shutdown(kill=True)
            return self._start().submit(self.work, row, path, self.samplings, window)

    def _restart(self, queue: collections.deque[Task]) -> None:
        """Kill the pool (a hung or crashed decoder) and resubmit the queued windows not yet decoded."""
        self._shutdown(kill=True)
        for t in queue:
            fut = t.future
            if fut is not None and not (fut.done() and not fut.cancelled() and fut.exception() is None):
                t.future = self._submit(t.row, t.path, t.window)


def _done(work: Callable[[int, str, Window], DecodedVideo]) -> Callable[[int, str, Window], cf.Future]:
    """`work` run at once in this process, its result as a future (`DecodePool` with no workers)."""

    def submit(row: int, path: str, window: Window) -> cf.Future:
        future: cf.Future = cf.Future()
        future.set_result(work(row, path, window))
        return future

    return submit
