"""GPU decoding with NVDEC (PyNvVideoCodec): the same rows as the decord path, frames left on the GPU.

Frame indices and [start, end) times are read by decord in a helper process (its index of the
file, no decoding), and go through the same `plan_rows`, so both backends cut identical rows; a
file whose frame count NVDEC sees differently is decoded on the CPU. Frames are decoded to RGB
in GPU memory, turned by the display rotation of the file, resized on the GPU to the decord
path's decode size, and handed to the experts without a trip through host memory.

Creating an NVDEC session costs ~0.3 s, more than decoding a whole 15 s clip at 1 fps, so each
decode thread keeps one decoder and reconfigures it for the next video (PyNvVideoCodec keeps a
small cache of sessions for other sizes and codecs). A file NVDEC cannot decode (a codec or
chroma format it lacks) goes to a decord worker process, from the decode thread that met it:
decord and PyNvVideoCodec bundle different FFmpeg builds and crash when loaded into one process,
so this module never imports decord.
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
import math
import os
import queue
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from extract.decode import index_video
from extract.decoders import refuse_ffmpeg_clash
from extract.pool import DECODE_WINDOW_S, PREFETCH_MEMORY_SHARE, DecodePool, Task, ahead, prefetch, settle
from extract.sampling import (WHOLE, DecodedVideo, Sampling, Window, decode_short_side, first_error, plan_frames,
                              precheck, resize_dims, row_plans)
from shared.media import is_image

__all__ = ['NvdecPool', 'DecoderStalled', 'display_rotation']

#: largest frame the reused decoder is configured for; larger videos get a session of their own
MAX_WIDTH, MAX_HEIGHT = 4096, 4096
#: frames fetched from the decoder at once (at 1080p: 200 MB as RGB bytes, 800 MB as floats to resize)
PIECE = 32
#: a decode thread still busy with one file after this many times the CPU path's limit for that
#: file (which covers reading its frame times, then maybe decoding it on the CPU) is taken to hang
#: in NVDEC: the file fails, and a new thread takes the place of the one left behind
HANG_FACTOR = 3
#: decode threads left behind after which the run stops: NVDEC no longer answers
MAX_LEFT_BEHIND = 2


class DecoderStalled(RuntimeError):
    """NVDEC hung on one file after another: the run cannot go on with it."""


class _DecodeThreads:
    """Daemon threads that run `work(row, path, window)` for submitted files, oldest first.

    Not a ThreadPoolExecutor: its threads are joined when the interpreter exits, so one that
    hangs in a driver call would keep a finished or stopped run from ever exiting. A thread left
    behind (`leave`) gets no more work, and a new one takes its place.
    """

    def __init__(self, n: int, work: Callable[[int, str, Window], DecodedVideo]) -> None:
        self._work = work
        self._tasks: queue.SimpleQueue[tuple[cf.Future, int, str, Window] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._busy: dict[cf.Future, threading.Thread] = {}  # running tasks and their threads
        self._left: set[threading.Thread] = set()
        self._threads = [self._start() for _ in range(n)]

    def _start(self) -> threading.Thread:
        t = threading.Thread(target=self._loop, name='nvdec', daemon=True)
        t.start()
        return t

    def _loop(self) -> None:
        me = threading.current_thread()
        while (task := self._tasks.get()) is not None:
            future, row, path, window = task
            if not future.set_running_or_notify_cancel():
                continue
            with self._lock:
                self._busy[future] = me
            try:
                future.set_result(self._work(row, path, window))
            except BaseException as err:  # noqa: BLE001 - handed to the consumer
                future.set_exception(err)
            with self._lock:
                self._busy.pop(future, None)
                if me in self._left:
                    return

    def submit(self, row: int, path: str, window: Window) -> cf.Future:
        future: cf.Future = cf.Future()
        self._tasks.put((future, row, path, window))
        return future

    def leave(self, future: cf.Future) -> None:
        """Give up on the thread running `future` (it hangs): a new thread replaces it."""
        with self._lock:
            thread = self._busy.pop(future, None)
            if thread is None:  # not started yet (every thread busy): it never will
                future.cancel()
                return
            if thread in self._left:
                return
            self._left.add(thread)
            self._threads.remove(thread)
            self._threads.append(self._start())

    def shutdown(self, wait: bool) -> None:
        """Cancel the files not started, stop the threads once their file is done; `wait` for
        them (a stopped run waits at most a minute: a file in NVDEC may hang)."""
        while True:
            try:
                task = self._tasks.get_nowait()
            except queue.Empty:
                break
            if task is not None:
                task[0].cancel()
        with self._lock:
            threads = list(self._threads)
        for _ in threads:
            self._tasks.put(None)
        deadline = time.monotonic() + (math.inf if wait else 60.0)
        for t in threads:
            t.join(timeout=None if wait else max(0.0, deadline - time.monotonic()))




def display_rotation(path: str | os.PathLike) -> int:
    """Clockwise display rotation in degrees (0, 90, 180, 270) of an MP4/MOV video track.

    Read from the track header's matrix (where FFmpeg's `-display_rotation` and phones put it);
    other containers carry none. A few reads of a file's box headers, no decoding.
    """
    try:
        with open(path, 'rb') as f:
            return _rotation_in(f, os.fstat(f.fileno()).st_size, depth=0) or 0
    except (OSError, struct.error, ValueError):
        return 0


def _boxes(f, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, payload end) of the boxes from f's position to `end`."""
    pos = f.tell()
    while pos + 8 <= end:
        f.seek(pos)
        size, kind = struct.unpack('>I4s', f.read(8))
        head = 8
        if size == 1:
            size, head = struct.unpack('>Q', f.read(8))[0], 16
        elif size == 0:
            size = end - pos
        if size < head:
            return
        yield kind, pos + head, min(pos + size, end)
        pos += size


def _rotation_in(f, end: int, depth: int) -> int | None:
    for kind, start, stop in list(_boxes(f, end)):
        if kind == b'moov' and depth == 0:
            f.seek(start)
            return _rotation_in(f, stop, 1)
        if kind == b'trak' and depth == 1:
            f.seek(start)
            inner = {k: (s, e) for k, s, e in _boxes(f, stop)}
            if b'tkhd' not in inner or not _is_video(f, inner.get(b'mdia')):
                continue
            s, _ = inner[b'tkhd']
            f.seek(s)
            version = f.read(1)[0]
            f.seek(s + 4 + (32 if version == 1 else 20) + 16)  # fields before the matrix
            a, b = struct.unpack('>ii', f.read(8))
            return int(round(math.degrees(math.atan2(b, a)) / 90.0)) % 4 * 90
    return None


def _is_video(f, mdia: tuple[int, int] | None) -> bool:
    if mdia is None:
        return False
    f.seek(mdia[0])
    for kind, start, _ in _boxes(f, mdia[1]):
        if kind == b'hdlr':
            f.seek(start + 8)
            return f.read(4) == b'vide'
    return False


class _Mismatch(RuntimeError):
    """NVDEC sees the file's frames differently from decord's index: the video goes to the CPU,
    the decoder (which worked) is kept."""


class _Thread(threading.local):
    decoder = None
    stream = None


class NvdecPool:
    """Decode videos on the GPU in `threads` decode threads, in order, with bounded prefetch.

    Same interface as `DecodePool`; `frames` of the results are CUDA uint8 tensors (F, H, W, 3).

    Args:
        samplings: expert name -> Sampling.
        device: the CUDA device the experts run on.
        threads: decode threads, each with its own reused decoder and CUDA stream.
        prefetch: videos decoded ahead of the consumer, per thread; fewer once a video is large
            (their frames may fill a quarter of the GPU's memory, as in `DecodePool`).
        timing_workers: decord processes that read the frame times.
        window_s: seconds of video decoded at once (as in `DecodePool`); 0 decodes each video whole.

    Raises:
        RuntimeError: decord is loaded in this process (see `refuse_ffmpeg_clash`).
    """

    def __init__(self, samplings: dict[str, Sampling], device: str = 'cuda', threads: int = 4, prefetch: int = 2,
                 timing_workers: int = 2, window_s: float = DECODE_WINDOW_S) -> None:
        import torch

        refuse_ffmpeg_clash('PyNvVideoCodec')

        self.samplings = samplings
        self.video_samplings = {n: s for n, s in samplings.items() if s.kind != 'audio'}
        self.device = torch.device(device)
        self.gpu = self.device.index if self.device.index is not None else torch.cuda.current_device()
        self.threads = max(1, threads)
        self.depth = self.threads * max(1, prefetch)
        self.window_s = window_s
        # decoded frames wait in GPU memory, beside the models: a quarter of it at most
        self.max_bytes = int(PREFETCH_MEMORY_SHARE * torch.cuda.get_device_properties(self.device).total_memory)
        self._consumer = torch.cuda.current_stream(self.device)
        self._local = _Thread()
        self._pool: _DecodeThreads | None = None
        self._left_behind = 0  # decode threads given up on (hung in NVDEC)
        # files NVDEC cannot decode, handed over by the decode threads: at most one each at a time
        self._cpu = DecodePool(samplings, workers=self.threads, window_s=window_s)
        # decord processes that read each file's frame times (its index: no decoding)
        self._timing = DecodePool({}, workers=max(1, timing_workers), work=index_video)

    def __enter__(self) -> NvdecPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(kill=exc[0] is not None)

    def close(self, kill: bool = False) -> None:
        if kill:  # decode threads waiting for the CPU or timing processes return at once
            self._cpu.close(kill=True)
            self._timing.close(kill=True)
        if self._pool is not None:
            self._pool.shutdown(wait=not kill)
            self._pool = None
        self._cpu.close(kill=kill)
        self._timing.close(kill=kill)

    def imap(self, items: Sequence[tuple[int, str]]) -> Iterator[DecodedVideo]:
        """Decoded windows of videos for (row, path) items, in the order given, as `DecodePool.imap`."""
        if self._pool is None:
            self._pool = _DecodeThreads(self.threads, self._gpu_or_cpu)
        waiting: collections.deque[Task] = collections.deque()
        todo = iter(items)
        largest = 0  # bytes of the largest decoded window so far
        prefetch(waiting, todo, ahead(largest, self.threads, self.depth, self.max_bytes), self._pool.submit,
                 self.window_s)
        while waiting:
            task = waiting.popleft()
            assert task.future is not None  # `prefetch` submits the queue in order
            video = settle(waiting, task, self._result(task.row, task.path, task.future))
            largest = max(largest, video.nbytes)
            prefetch(waiting, todo, ahead(largest, self.threads, self.depth, self.max_bytes), self._pool.submit,
                     self.window_s)
            yield video

    def _result(self, row: int, path: str, future: cf.Future) -> DecodedVideo:
        """The decoded video, or a failed one where its decode thread hangs (that thread is left
        behind); `DecoderStalled` once more than `MAX_LEFT_BEHIND` threads hung."""
        limit = HANG_FACTOR * self._cpu.limit(path)
        try:
            return future.result(timeout=limit)
        except cf.TimeoutError:
            assert self._pool is not None
            self._pool.leave(future)
            self._left_behind += 1
        if self._left_behind > MAX_LEFT_BEHIND:
            raise DecoderStalled(f'NVDEC hung on {self._left_behind} files (the last: {path}); finished chunks '
                                 'are saved: rerun with --decoder decord')
        return DecodedVideo(row, error=f'NVDEC took longer than {limit:.0f} s on this file and was left behind '
                                       '(it may hang on it)')

    def _gpu_or_cpu(self, row: int, path: str, window: Window) -> DecodedVideo:
        """`decode`, and where NVDEC cannot decode the file, a CPU worker process (decord, else
        FFmpeg) in its place. The decode thread waits for it, so the consumer never does, and
        up to `threads` such files are decoded at once. A still image goes to the CPU at once
        (Pillow: NVDEC decodes video streams only)."""
        if is_image(path):
            return self._cpu.decode_one(row, path, window)
        video = self.decode(row, path, window)
        if not video.error.startswith('NVDEC'):
            return video
        cpu = self._cpu.decode_one(row, path, window)
        cpu.seconds += video.seconds  # the attempt on the GPU is part of this file's decoding
        if not cpu.error:
            cpu.note = f'{video.error}; decoded on the CPU instead' + (f' ({cpu.note})' if cpu.note else '')
        return cpu

    def decode(self, row: int, path: str, window: Window = WHOLE) -> DecodedVideo:
        """Decode `window` of `path` once on the GPU and plan every expert's rows in it (never raises)."""
        import torch

        t0 = time.perf_counter()
        out = precheck(row, path, self.samplings, window)
        if out.error or not self.video_samplings:
            out.seconds = time.perf_counter() - t0
            return out
        frame_times = self._frame_times(path)
        if isinstance(frame_times, str):  # the CPU path tries FFmpeg where decord fails, and gives the reason
            out.error = f'NVDEC skipped: decord cannot index this file ({frame_times})'
            out.seconds = time.perf_counter() - t0
            return out
        local = self._local
        try:
            if local.stream is None:
                torch.cuda.set_device(self.gpu)
                local.stream = torch.cuda.Stream(self.device)
            with torch.cuda.stream(local.stream):
                frames, plans = self._decode_frames(local, path, frame_times, display_rotation(path), window)
                frames.record_stream(self._consumer)  # freed only after the experts' kernels ran
            local.stream.synchronize()
        except _Mismatch as err:  # the decoder itself is fine: keep it for the next video
            out.error = f'NVDEC cannot decode this file ({err})'
        except Exception as err:  # noqa: BLE001 - NVDEC raises its own types for unsupported input
            local.decoder = None  # a decoder that failed is not reused
            out.error = f'NVDEC cannot decode this file ({first_error(err)})'
        if out.error:
            out.seconds = time.perf_counter() - t0
            return out
        out.frames = frames
        out.duration = float(frame_times[-1, 1])
        out.windows = window.count(out.duration)
        out.plans = plans
        out.seconds = time.perf_counter() - t0
        return out

    def _frame_times(self, path: str) -> np.ndarray | str:
        """decord's frame times of `path` from a timing process, or why there are none. A file
        that hangs or crashes that process gets a reason (the CPU path then tries it and gives its
        own), as `DecodePool` fails such a file, and later files are indexed by fresh processes."""
        video = self._timing.decode_one(0, path)
        return video.frame_times if video.frame_times is not None else video.error or 'no frame times'

    def _decode_frames(self, local: _Thread, path: str, frame_times: np.ndarray, rotation: int, window: Window):
        """The needed frames of `window` in display orientation at the decode size, and every expert's rows.

        Frames are fetched `PIECE` at a time and shrunk before the next piece: a long video cut
        into clips needs thousands of frames, too many to hold at full resolution (2,048 frames of
        1080p are 12.7 GB as RGB bytes, and 4x that as floats for the resize).
        """
        import PyNvVideoCodec as nvc
        import torch

        if local.decoder is None:
            local.decoder = nvc.SimpleDecoder(path, gpu_id=self.gpu, cuda_stream=local.stream.cuda_stream,
                                              use_device_memory=True, output_color_type=nvc.OutputColorType.RGB,
                                              max_width=MAX_WIDTH, max_height=MAX_HEIGHT)
        else:
            local.decoder.reconfigure_decoder(path)
        dec = local.decoder
        if len(dec) != len(frame_times):  # a count from stream metadata (Matroska/WebM headers have none)
            raise _Mismatch(f'NVDEC counts {len(dec)} frames, decord {len(frame_times)}')
        planned, needed = plan_frames(frame_times, self.video_samplings, window)
        pieces = []
        if not len(needed):  # a window without rows (sparse sampling): no frames
            return torch.zeros((0, 1, 1, 3), dtype=torch.uint8, device=self.device), row_plans(planned, needed)
        for start in range(0, len(needed), PIECE):
            part = needed[start:start + PIECE].tolist()
            decoded = dec.get_batch_frames_by_index(part)
            if len(decoded) != len(part):
                raise _Mismatch(f'decoded {len(decoded)} of {len(part)} frames')
            frames = torch.stack([torch.from_dlpack(f) for f in decoded])  # a copy: the decoder reuses its surfaces
            pieces.append(self._orient_and_resize(frames, rotation))
        return (pieces[0] if len(pieces) == 1 else torch.cat(pieces)), row_plans(planned, needed)

    def _orient_and_resize(self, frames, rotation: int):
        """Display orientation, then the decord path's decode size (short side, even dimensions)."""
        import torch
        import torch.nn.functional as F

        if rotation:
            frames = torch.rot90(frames, k=-rotation // 90, dims=(1, 2)).contiguous()
        h, w = frames.shape[1:3]
        width, height = resize_dims(h, w, decode_short_side(self.video_samplings.values()))
        if width > 0:
            x = frames.permute(0, 3, 1, 2).float()
            x = F.interpolate(x, size=(height, width), mode='bilinear', align_corners=False, antialias=True)
            frames = x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
        return frames
