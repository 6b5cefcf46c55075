"""Decode each video once and cut it into every selected expert's rows (frames or clips).

Row plans are computed from the decoder's own per-frame timestamps, so variable frame rate is
exact: a frame row is the frame on screen at the centre of its sampling bin, a clip row is
`clip_len` frames around that centre, and every row carries the exact [start, end) seconds of
the frames it holds. Only the union of the frames that some expert needs is decoded, once.

CPU decoding uses decord in worker processes (spawned, so they never share a process with
torch's CUDA state or with PyNvVideoCodec's FFmpeg, which crashes beside decord's). A file that
decord cannot open, or stops reading early, is decoded again by the FFmpeg binary
(`decode_ffmpeg`), and the video's note says so.
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
import dataclasses
import math
import multiprocessing
import os
import re
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from shared.resources import memory_limit

__all__ = ['Sampling', 'RowPlan', 'DecodedVideo', 'plan_rows', 'plan_frames', 'row_plans', 'precheck',
           'read_frame_times', 'index_video', 'decode_video', 'DecodePool', 'decode_short_side', 'DECODERS',
           'choose_decoder', 'ahead', 'spread']

DECODERS = ('auto', 'decord', 'nvdec')
#: every audio expert (VGGish, whisper) takes 16 kHz mono
AUDIO_RATE = 16000


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How one expert samples a video.

    Args:
        kind: ``frames`` (one frame per row) or ``clips`` (`clip_len` frames per row).
        fps: rows per second.
        clip_len: frames per clip.
        clip_fps: frame rate inside a clip; None takes consecutive frames at the video's own rate.
        max_rows: the store's T; a longer video gets T rows spread evenly over its duration.
        short_side: the short side the decoder may shrink frames to (a speed option, see
            `ExpertCfg.decode_resize`); 0: frames at the video's native size.
    """

    kind: str = 'frames'
    fps: float = 1.0
    clip_len: int = 1
    clip_fps: float | None = None
    max_rows: int = 128
    short_side: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ('frames', 'clips', 'audio'):
            raise ValueError(f'sampling kind must be frames, clips or audio, got {self.kind!r}')
        if not 0 < self.fps < math.inf:  # written so that NaN fails too
            raise ValueError(f'fps must be a positive number, got {self.fps}')
        if self.clip_fps is not None and not 0 < self.clip_fps < math.inf:
            raise ValueError(f"clip_fps must be a positive number, or null for the video's own rate, "
                             f'got {self.clip_fps}')
        for name in ('clip_len', 'max_rows'):
            if getattr(self, name) < 1:
                raise ValueError(f'{name} must be >= 1, got {getattr(self, name)}')


@dataclasses.dataclass
class RowPlan:
    """One expert's rows in a decoded video: indices into `DecodedVideo.frames`, and times."""

    index: np.ndarray  # (L, clip_len) int
    timestamps: np.ndarray  # (L, 2) float32 seconds


@dataclasses.dataclass
class DecodedVideo:
    """The frames one video contributes, shared by all experts, or why there are none."""

    row: int
    frames: Any = None  # (F, H, W, 3) uint8: numpy (decord), or a CUDA tensor (NVDEC)
    plans: dict[str, RowPlan] = dataclasses.field(default_factory=dict)
    duration: float = 0.0
    error: str = ''
    note: str = ''
    seconds: float = 0.0
    audio: np.ndarray | None = None  # mono float32 at AUDIO_RATE; None: no audio stream (or audio_error)
    audio_error: str = ''
    frame_times: np.ndarray | None = None  # (N, 2) seconds of every frame: from `index_video` only

    @property
    def nbytes(self) -> int:
        """Memory held by the decoded frames (numpy or torch: both have `nbytes`) and audio."""
        return int(getattr(self.frames, 'nbytes', 0)) + (self.audio.nbytes if self.audio is not None else 0)


def plan_rows(frame_times: np.ndarray, s: Sampling) -> tuple[np.ndarray, np.ndarray]:
    """Rows of one expert from the per-frame [start, end) times of a video.

    Returns:
        (index, timestamps): frame indices (L, clip_len) into the video, and (L, 2) seconds.
    """
    n_frames = len(frame_times)
    starts = frame_times[:, 0]
    duration = float(frame_times[-1, 1])
    n = max(1, math.ceil(duration * s.fps - 1e-6))
    step = 1.0 / s.fps
    if n > s.max_rows:
        n, step = s.max_rows, duration / s.max_rows
    centres = np.minimum((np.arange(n) + 0.5) * step, np.nextafter(duration, 0))
    centre_idx = np.clip(np.searchsorted(starts, centres, side='right') - 1, 0, n_frames - 1)
    if s.kind == 'frames' or s.clip_len == 1:
        index = centre_idx[:, None]
    elif s.clip_fps:
        offsets = (np.arange(s.clip_len) - s.clip_len / 2 + 0.5) / s.clip_fps
        times = np.clip(centres[:, None] + offsets[None, :], 0.0, np.nextafter(duration, 0))
        index = np.clip(np.searchsorted(starts, times, side='right') - 1, 0, n_frames - 1)
    else:
        first = np.clip(centre_idx - s.clip_len // 2, 0, max(n_frames - s.clip_len, 0))
        index = np.minimum(first[:, None] + np.arange(s.clip_len)[None, :], n_frames - 1)
    stamps = np.stack([frame_times[index[:, 0], 0], frame_times[index[:, -1], 1]], axis=1)
    return index.astype(np.int64), stamps.astype(np.float32)


def decode_short_side(samplings: Iterable[Sampling]) -> int:
    """The short side to decode to: 0 (native size) unless every sampling allows a smaller one,
    and then the largest they allow, so that no expert's frames are shrunk past what it asked for."""
    sides = [s.short_side for s in samplings]
    return 0 if not sides or 0 in sides else max(sides)


def _resize_dims(height: int, width: int, short_side: int) -> tuple[int, int]:
    """Decode size: short side to `short_side` (never upscaled), even dimensions; (-1, -1) for
    the native size (`short_side` 0, or no smaller)."""
    scale = short_side / min(height, width)
    if not short_side or scale >= 1.0:
        return -1, -1
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


def spread(items: Sequence[Any], k: int = 5) -> list[Any]:
    """Up to `k` items spread evenly from the first to the last (the videos `auto` probes)."""
    if len(items) <= k:
        return list(items)
    return [items[round(i * (len(items) - 1) / (k - 1))] for i in range(k)]


def _first_error(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    text = [t for t in text if t.strip() and not t.startswith(('Stack trace', '  ['))]
    # decord's messages start with its clock and source line, once per level: "[21:00:12] .../video_reader.cc:430: "
    return re.sub(r'^(?:\[\d\d:\d\d:\d\d\] \S+:\d+: )+', '', text[-1] if text else type(err).__name__)[:300]


def precheck(row: int, path: str, samplings: dict[str, Sampling]) -> DecodedVideo:
    """What every backend does first: a missing, empty or unreadable file, or one that is not a
    regular file (a FIFO would block the decoder for ever), is an error; audio is read when asked."""
    out = DecodedVideo(row)
    out.error = _not_a_video_file(path)
    if out.error:
        out.audio_error = out.error
    elif any(s.kind == 'audio' for s in samplings.values()):
        from shared.media import load_audio

        out.audio, out.audio_error = load_audio(path, AUDIO_RATE)
    return out


def _not_a_video_file(path: str) -> str:
    """Why `path` cannot be opened as a video file, before any decoder tries; '' if it may be."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return f'file not found: {path}'
    except OSError as err:
        return f'cannot read the file: {err.strerror or err}'
    if stat.S_ISDIR(st.st_mode):
        return 'a directory, not a video file'
    if not stat.S_ISREG(st.st_mode):
        return 'not a regular file (a pipe, socket or device)'
    if st.st_size == 0:
        return 'empty file (0 bytes)'
    if not os.access(path, os.R_OK):
        return 'cannot read the file: permission denied'
    return ''


def read_frame_times(path: str) -> np.ndarray | str:
    """The per-frame [start, end) seconds that `decode_video` plans rows from, or why there are none.

    The NVDEC backend calls this in a decord worker process, so both backends cut identical rows.
    """
    decord = _decord()
    try:
        vr = decord.VideoReader(path, num_threads=1)
        n = len(vr)
        if n == 0:
            raise RuntimeError('no video frames')
        times = np.asarray(vr.get_frame_timestamp(range(n)), dtype=np.float64).reshape(n, 2)
        wrong = _wrong_times(times)
        return f"decord's frame times are wrong here ({wrong})" if wrong else _repair_times(times)
    except Exception as err:  # noqa: BLE001 - decord raises DECORDError/RuntimeError for bad input
        return f'cannot open video: {_first_error(err)}'


def index_video(row: int, path: str, samplings: dict[str, Sampling]) -> DecodedVideo:
    """`read_frame_times` as a `DecodePool` work function: the NVDEC backend's helper processes
    read each file's frame times this way, with the pool's time limit and crash handling."""
    times = read_frame_times(path)
    if isinstance(times, str):
        return DecodedVideo(row, error=times)
    return DecodedVideo(row, frame_times=times)


def decode_video(row: int, path: str, samplings: dict[str, Sampling], threads: int = 1) -> DecodedVideo:
    """Decode `path` once (decord for frames, FFmpeg for audio) and plan every expert's rows.

    Errors never raise: they become `error` (video) and `audio_error` (audio).
    """
    t0 = time.perf_counter()
    out = precheck(row, path, samplings)
    samplings = {n: s for n, s in samplings.items() if s.kind != 'audio'}
    if out.error or not samplings:
        out.seconds = time.perf_counter() - t0
        return out
    if _is_mpegts(path):  # decord gives up on MPEG-TS after seconds of retries (8 s for a 15 s clip)
        said = _with_ffmpeg(out, path, samplings, 'MPEG-TS, which decord misreads')
        out.error = (said if said == 'no video stream' else f'cannot open video: {said}') if said else ''
        out.seconds = time.perf_counter() - t0
        return out
    decord = _decord()
    try:
        vr = decord.VideoReader(path, num_threads=threads)
        n = len(vr)
        if n == 0:
            raise RuntimeError('no video frames')
        h, w = _rgb_size(vr)  # display orientation: decord applies rotation metadata
        width, height = _resize_dims(h, w, decode_short_side(samplings.values()))
        if width > 0:
            vr = decord.VideoReader(path, num_threads=threads, width=width, height=height)
            _rgb_size(vr)
        frame_times = np.asarray(vr.get_frame_timestamp(range(n)), dtype=np.float64).reshape(n, 2)
    except Exception as err:  # noqa: BLE001 - decord raises DECORDError/RuntimeError for bad input
        reason = _first_error(err)
        said = _with_ffmpeg(out, path, samplings, f'decord cannot read this file ({reason})')
        if said:
            out.error = said if said == 'no video stream' else f'cannot open video: {reason} (FFmpeg: {said})'
        out.seconds = time.perf_counter() - t0
        return out
    wrong = _wrong_times(frame_times)
    if wrong and not _with_ffmpeg(out, path, samplings, f"decord's frame times are wrong here ({wrong})"):
        out.seconds = time.perf_counter() - t0
        return out
    if wrong:  # FFmpeg failed too: decord's frames, on the times it has
        out.note = f"decord's frame times are wrong here ({wrong}); FFmpeg could not read the file either"
    frame_times = _repair_times(frame_times)
    plans, needed = plan_frames(frame_times, samplings)
    try:
        frames = vr.get_batch(needed.tolist()).asnumpy()
    except Exception as err:  # noqa: BLE001 - truncated or corrupt stream: keep what decodes
        frames, needed, note = _decode_prefix(vr, needed, err)
        # decord also stops early on some valid files: FFmpeg may read further
        alt = DecodedVideo(row)
        said = _with_ffmpeg(alt, path, samplings, f'decord stopped early ({_first_error(err)})')
        if not said and (frames is None or alt.duration > float(frame_times[int(needed[-1]), 1]) + 1e-6):
            out.frames, out.plans, out.duration, out.note = alt.frames, alt.plans, alt.duration, alt.note
            out.seconds = time.perf_counter() - t0
            return out
        if frames is None:
            out.error = f'cannot decode video: {note}'
            return out
        out.note = note
        # the rows whose frames were all decoded, with their own times
        last = int(needed[-1])
        plans = {name: (idx[idx.max(axis=1) <= last], stamps[idx.max(axis=1) <= last])
                 for name, (idx, stamps) in plans.items()}
        frame_times = frame_times[: last + 1]
    out.frames = frames
    out.duration = float(frame_times[-1, 1])
    out.plans = row_plans(plans, needed)
    out.seconds = time.perf_counter() - t0
    return out


def plan_frames(frame_times: np.ndarray, samplings: dict[str, Sampling]
                ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], np.ndarray]:
    """Every expert's rows (`plan_rows`), and the sorted frames they need: each decoded once."""
    plans = {name: plan_rows(frame_times, s) for name, s in samplings.items()}
    return plans, np.unique(np.concatenate([idx.ravel() for idx, _ in plans.values()]))


def row_plans(plans: dict[str, tuple[np.ndarray, np.ndarray]], needed: np.ndarray) -> dict[str, RowPlan]:
    """`plans` with their frame indices into the decoded frames (`needed`) instead of the video."""
    return {name: RowPlan(np.searchsorted(needed, idx), stamps) for name, (idx, stamps) in plans.items()}


def _is_mpegts(path: str) -> bool:
    """An MPEG transport stream (.ts, or .m2ts/.mts with 4-byte packet headers): its sync byte
    0x47 every 188 or 192 bytes, whatever the file's name."""
    try:
        with open(path, 'rb') as f:
            head = f.read(4 * 192)
    except OSError:
        return False
    return any(len(head) > first + 2 * size and all(head[first + k * size] == 0x47 for k in range(3))
               for first, size in ((0, 188), (4, 192)))


#: libraries that bundle FFmpeg builds of their own, which crash when both are loaded into one process
FFMPEG_BUNDLERS = ('decord', 'PyNvVideoCodec')


def refuse_ffmpeg_clash(wanted: str) -> None:
    """Raise instead of loading `wanted` (one of `FFMPEG_BUNDLERS`) beside the other one.

    With both in one process, the process dies in native code: on an H100, PyNvVideoCodec 2.2.4
    segfaulted creating its decoder once decord 0.6.0 had read a file in that process, though the
    same calls passed in a fresh one. A clear error is better than a dead run.

    Raises:
        RuntimeError: the other library is loaded in this process.
    """
    other = next(m for m in FFMPEG_BUNDLERS if m != wanted)
    if other in sys.modules:
        raise RuntimeError(f'{other} is loaded in this process, and {wanted} crashes beside it (each bundles its '
                           f'own FFmpeg): use {wanted} in a process of its own')


def _decord() -> Any:
    """decord, with its FFmpeg quiet: a file it cannot read fails with a reason in the store,
    and FFmpeg's per-frame complaints (hundreds of lines for one MPEG-TS file) would bury the log."""
    refuse_ffmpeg_clash('decord')
    import decord

    decord.logging.set_level(decord.logging.FATAL)
    return decord


def _rgb_size(vr: Any) -> tuple[int, int]:
    """(height, width) of a decord reader's frames; raises where they do not come out as RGB.

    decord hands out FFmpeg's frame without a copy when a row's padded length (`linesize`) is a
    multiple of the width, and then takes `linesize / width` for the channels (`ToDLTensor` in its
    src/video/ffmpeg/ffmpeg_common.h). FFmpeg pads a row of RGB to a multiple of 32 pixels, so
    frames 16 pixels wide come out (H, 16, 6), 24 or 48 wide (H, W, 4): each row's pixels followed
    by padding, which the experts would take for colour. FFmpeg reads such files right.

    Raises:
        RuntimeError: decord's frames are not (H, W, 3).
    """
    shape = tuple(vr[0].shape)
    if len(shape) != 3 or shape[2] != 3:
        raise RuntimeError(f'decord gives frames of shape {shape}, not RGB: it takes the row padding of '
                           'narrow frames for channels')
    return shape[0], shape[1]


def _with_ffmpeg(out: DecodedVideo, path: str, samplings: dict[str, Sampling], why: str) -> str:
    """Decode `out`'s video with the FFmpeg binary instead of decord (`decode_ffmpeg`); returns
    '' when it did, else FFmpeg's reason. `why` goes into the video's note."""
    from extract import decode_ffmpeg
    from shared.media import MediaError

    try:
        times, (h, w), stopped = decode_ffmpeg.frame_times(path)
        frame_times = _repair_times(times)
        plans, needed = plan_frames(frame_times, samplings)
        width, height = _resize_dims(h, w, decode_short_side(samplings.values()))
        frames = decode_ffmpeg.read_frames(path, needed, *((height, width) if width > 0 else (h, w)))
    except (MediaError, OSError) as err:  # OSError: an FFmpeg binary that cannot be run
        return str(err)
    out.frames = frames
    out.duration = float(frame_times[-1, 1])
    out.plans = row_plans(plans, needed)
    out.note = f'{why}: decoded with FFmpeg'
    if stopped:
        out.note += f', which stopped after {len(times)} frames ({stopped})'
    return ''


def _wrong_times(frame_times: np.ndarray) -> str:
    """What is wrong with decord's raw per-frame times, or ''. In a low-bitrate MPEG program
    stream (.mpg, .vob) decord gives the first frames a time of -1e14 s and shifts the rest; rows
    would be cut at the wrong times, and its seeks, which go by those times, return other frames."""
    starts = frame_times[:, 0]
    missing = int((~np.isfinite(starts) | (starts < -1.0) | (starts > 1e7)).sum())
    return f'{missing} of {len(starts)} frames without a time' if missing else ''


def _repair_times(frame_times: np.ndarray) -> np.ndarray:
    """Display intervals: a frame is shown from its start until the next frame starts.

    decord reports end = start + 1/fps, which is wrong under variable frame rate; the last
    frame keeps the typical frame duration.
    """
    t = np.asarray(frame_times, np.float64).copy()
    t[:, 0] = np.maximum.accumulate(np.nan_to_num(t[:, 0], nan=0.0))
    dur = t[:, 1] - t[:, 0]
    typical = float(np.median(dur[np.isfinite(dur) & (dur > 0)])) if (np.isfinite(dur) & (dur > 0)).any() else 0.04
    nxt = np.append(t[1:, 0], t[-1, 0] + typical)
    t[:, 1] = np.where(nxt > t[:, 0], nxt, t[:, 0] + typical)
    return t


def _decode_prefix(vr, needed: np.ndarray, err: BaseException) -> tuple[np.ndarray | None, np.ndarray, str]:
    """After a batch decode failed: the needed frames before the first one that fails."""
    good: list[np.ndarray] = []
    for i in needed.tolist():
        try:
            good.append(vr[i].asnumpy())
        except Exception:  # noqa: BLE001
            break
    reason = _first_error(err)
    if not good:
        return None, needed, reason
    kept = needed[: len(good)]
    return np.stack(good), kept, f'decoded the first {int(kept[-1]) + 1} frames only ({reason})'


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
        limit = self._limit(path)
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

    def _limit(self, path: str) -> float:
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


#: frame area from which `auto` takes NVDEC for 1-fps frame sampling. Decode-only on an H100 host
#: (BENCHMARKS.md, 15 s H.264 clips at 30 fps), 15 decord processes against 4 NVDEC threads, in
#: videos/s: 320x240 76.0 / 35.1, 640x360 41.2 / 28.3, 1280x720 10.8 / 13.4, 1920x1080 6.2 / 6.7.
NVDEC_MIN_PIXELS = 1280 * 720


def choose_decoder(requested: str, device: str, sample: str | Sequence[str] | None = None,
                   clips: bool = False) -> tuple[str, str]:
    """The decoder to use and why.

    `auto` takes NVDEC on a CUDA device where PyNvVideoCodec works when an expert samples clips
    (many frames per row: NVDEC decoded 4.1x as many videos/s as 15 decord processes at 320x240),
    or when the videos have `NVDEC_MIN_PIXELS` or more; otherwise decord worker processes. The
    videos are judged by `sample`: a few of the run's videos (the median of those that can be
    probed), so that one odd first video does not decide for a collection of mixed sizes.

    Raises:
        ValueError: an unknown decoder, or nvdec asked for where it cannot run.
    """
    if requested not in DECODERS:
        raise ValueError(f'unknown decoder {requested!r} (one of {", ".join(DECODERS)})')
    from extract.nvdec import nvdec_available

    if requested == 'nvdec':
        if not device.startswith('cuda'):
            raise ValueError(f'--decoder nvdec decodes on the GPU, but the device is {device}')
        reason = nvdec_available()
        if reason:
            raise ValueError(f'--decoder nvdec: {reason}')
        return 'nvdec', 'asked for'
    if requested == 'decord':
        return 'decord', 'asked for'
    if not device.startswith('cuda'):
        return 'decord', 'no GPU in use'
    reason = nvdec_available()
    if reason:
        return 'decord', f'no NVDEC: {reason}'
    if clips:
        return 'nvdec', 'clip sampling decodes many frames per row: NVDEC is faster'
    from shared.media import MediaError, probe

    sizes = []
    for path in [sample] if isinstance(sample, str) else sample or []:
        try:
            info = probe(path)
        except (MediaError, OSError):
            continue
        if info.width:
            sizes.append((info.width * info.height, f'{info.width}x{info.height}'))
    if not sizes:
        return 'decord', 'no sampled video could be probed'
    pixels, size = sorted(sizes)[len(sizes) // 2]
    what = f'{size} videos' if len(sizes) == 1 else f'{size} videos (median of {len(sizes)} probed)'
    if pixels >= NVDEC_MIN_PIXELS:
        return 'nvdec', f'{what}: NVDEC from {NVDEC_MIN_PIXELS} pixels'
    return 'decord', f'{what}: decord processes are faster below {NVDEC_MIN_PIXELS} pixels'
