"""Decode each video once with decord and cut it into every selected expert's rows (frames or clips).

A file that decord cannot open, or stops reading early, is decoded again by the FFmpeg binary
(`decode_ffmpeg`), and the video's note says so. `extract.pool.DecodePool` runs these functions
in worker processes.
"""
from __future__ import annotations

import contextlib
import functools
import os
import re
import time
from typing import Any

import numpy as np

from extract.decoders import refuse_ffmpeg_clash
from extract.images import decode_image, video_frames_too_large
from extract.sampling import (WHOLE, DecodedVideo, RowPlan, Sampling, Window, decode_short_side, first_error,
                              plan_frames, precheck, resize_dims, row_plans)
from shared.logs import without_stderr_lines
from shared.media import MediaError, MediaInfo, is_image, probe

__all__ = ['read_frame_times', 'index_video', 'decode_video']

def read_frame_times(path: str) -> np.ndarray | str:
    """The per-frame [start, end) seconds that `decode_video` plans rows from, or why there are none.

    The NVDEC backend calls this in a decord worker process, so both backends cut identical rows.
    """
    too_large = _frames_too_large(path)
    if too_large:
        return too_large
    decord = _decord()
    try:
        vr = _open(decord, path, num_threads=1)
        n = len(vr)
        if n == 0:
            raise RuntimeError('no video frames')
        times = np.asarray(vr.get_frame_timestamp(range(n)), dtype=np.float64).reshape(n, 2)
        wrong = _wrong_times(times)
        return f"decord's frame times are wrong here ({wrong})" if wrong else _repair_times(times + _video_offset(path))
    except Exception as err:  # noqa: BLE001 - decord raises DECORDError/RuntimeError for bad input
        return f'cannot open video: {first_error(err)}'


def index_video(row: int, path: str, samplings: dict[str, Sampling], window: Window = WHOLE) -> DecodedVideo:
    """`read_frame_times` as a `DecodePool` work function: the NVDEC backend's helper processes
    read each file's frame times this way, with the pool's time limit and crash handling (the
    whole file's times, whatever the `window`)."""
    times = read_frame_times(path)
    if isinstance(times, str):
        return DecodedVideo(row, error=times)
    return DecodedVideo(row, frame_times=times)


def decode_video(row: int, path: str, samplings: dict[str, Sampling], window: Window = WHOLE,
                 threads: int = 1) -> DecodedVideo:
    """Decode `window` of `path` once (decord for frames, FFmpeg for audio) and plan every expert's
    rows in it; `windows` of the result says how many windows the video has. A still image
    (`shared.media.is_image`) is a one-frame video (`extract.images.decode_image`).

    Errors never raise: they become `error` (video) and `audio_error` (audio). A window past the
    point where a truncated file stops has no rows (and a note), not an error.
    """
    if is_image(path):  # a one-frame video, read by Pillow in this same worker
        return decode_image(row, path, samplings, window)
    t0 = time.perf_counter()
    out = precheck(row, path, samplings, window)
    samplings = {n: s for n, s in samplings.items() if s.kind != 'audio'}
    if not out.error and samplings and window.index == 0:  # later windows come only after a first that passed
        out.error = _frames_too_large(path)  # before decord or FFmpeg decodes a frame
    if out.error or not samplings:
        out.seconds = time.perf_counter() - t0
        return out
    if _is_mpegts(path):  # decord gives up on MPEG-TS after seconds of retries (8 s for a 15 s clip)
        said = _with_ffmpeg(out, path, samplings, window, 'MPEG-TS, which decord misreads')
        out.error = (said if said == 'no video stream' else f'cannot open video: {said}') if said else ''
        out.seconds = time.perf_counter() - t0
        return out
    decord = _decord()
    try:
        vr = _open(decord, path, num_threads=threads)
        n = len(vr)
        if n == 0:
            raise RuntimeError('no video frames')
        h, w = _rgb_size(vr)  # display orientation: decord applies rotation metadata
        width, height = resize_dims(h, w, decode_short_side(samplings.values()))
        if width > 0:
            vr = _open(decord, path, num_threads=threads, width=width, height=height)
            _rgb_size(vr)
        frame_times = np.asarray(vr.get_frame_timestamp(range(n)), dtype=np.float64).reshape(n, 2)
    except Exception as err:  # noqa: BLE001 - decord raises DECORDError/RuntimeError for bad input
        reason = first_error(err)
        said = _with_ffmpeg(out, path, samplings, window, f'decord cannot read this file ({reason})')
        if said:
            out.error = said if said == 'no video stream' else f'cannot open video: {reason} (FFmpeg: {said})'
        out.seconds = time.perf_counter() - t0
        return out
    wrong = _wrong_times(frame_times)
    if wrong and not _with_ffmpeg(out, path, samplings, window, f"decord's frame times are wrong here ({wrong})"):
        out.seconds = time.perf_counter() - t0
        return out
    if wrong:  # FFmpeg failed too: decord's frames, on the times it has
        out.note = f"decord's frame times are wrong here ({wrong}); FFmpeg could not read the file either"
    frame_times = _repair_times(frame_times + _video_offset(path))
    out.windows = window.count(float(frame_times[-1, 1]))
    plans, needed = plan_frames(frame_times, samplings, window)
    try:
        if len(needed):
            frames = vr.get_batch(needed.tolist()).asnumpy()
        else:  # a window without rows (sparse sampling) decodes nothing
            frames = np.zeros((0, *_rgb_size(vr), 3), np.uint8)
    except Exception as err:  # noqa: BLE001 - truncated or corrupt stream: keep what decodes
        frames, needed, note = _decode_prefix(vr, needed, err)
        # decord also stops early on some valid files: FFmpeg may read further
        alt = DecodedVideo(row, window=window.index)
        said = _with_ffmpeg(alt, path, samplings, window, f'decord stopped early ({first_error(err)})')
        if not said and (frames is None or alt.duration > float(frame_times[int(needed[-1]), 1]) + 1e-6):
            out.frames, out.plans, out.duration, out.note = alt.frames, alt.plans, alt.duration, alt.note
            out.windows = alt.windows
            out.seconds = time.perf_counter() - t0
            return out
        if frames is None and window.index == 0:
            out.error = f'cannot decode video: {note}'
            return out
        if frames is None:  # the file stops before this window: the rows end with the last window's
            out.note = f'no frames from {window.index * window.seconds:g} s on ({note})'
            out.frames = np.zeros((0, 1, 1, 3), np.uint8)
            out.plans = {name: RowPlan(idx[:0], stamps[:0]) for name, (idx, stamps) in plans.items()}
            out.seconds = time.perf_counter() - t0
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


def _frames_too_large(path: str) -> str:
    """Why the frames of `path` are too large to decode (`extract.images.video_frames_too_large`),
    from FFmpeg's reading of its header; '' when they are not, or when FFmpeg cannot read it (the
    decoders then give their own reason). decord tells a frame's size only by decoding one, at
    full size: 1.1 GB for a 12000x12000 frame."""
    info = _probe(path)
    return video_frames_too_large(info.width, info.height) if info is not None else ''


def _probe(path: str) -> MediaInfo | None:
    """`shared.media.probe`, remembered for the file this process read last (by path, size and
    mtime): each window of a video asks for its start, and the first for its size too. None when
    FFmpeg cannot read the file (the decoders then give their own reason)."""
    try:
        st = os.stat(path)
        return _probe_file(path, st.st_size, st.st_mtime_ns)
    except (MediaError, OSError):  # OSError: an FFmpeg binary that cannot be run
        return None


@functools.lru_cache(maxsize=2)
def _probe_file(path: str, size: int, mtime_ns: int) -> MediaInfo:
    return probe(path)


def _video_offset(path: str) -> float:
    """Seconds from the file's start (a player's 0, and the audio's: `shared.media.load_audio`) to
    its video stream's: decord's frame times count from the video stream's start. 0 when FFmpeg
    cannot read the file."""
    info = _probe(path)
    return info.video_start - info.start if info is not None else 0.0


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

def _decord() -> Any:
    """decord, with its FFmpeg quiet: a file it cannot read fails with a reason in the store,
    and FFmpeg's per-frame complaints (hundreds of lines for one MPEG-TS file) would bury the log."""
    refuse_ffmpeg_clash('decord')
    import decord

    decord.logging.set_level(decord.logging.FATAL)
    return decord


#: decord's own line for a file it cannot open ("[14:16:57] .../video_reader.cc:83: ERROR opening: PATH,
#: Invalid data ..."): dmlc's logger writes it to fd 2 whatever `decord.logging`'s level, and the
#: RuntimeError that follows is what the video's failure (or its FFmpeg fallback) records
_OPEN_ERROR = re.compile(r'\[[\d:]+\] \S*video_reader\.cc:\d+: ERROR opening: (.*), [^,]*$')


def _open(decord: Any, path: str, **kwargs: Any) -> Any:
    """decord.VideoReader(path, **kwargs), without decord's stray "ERROR opening" line for `path`."""
    with _without_open_error(path):
        return decord.VideoReader(path, **kwargs)


def _without_open_error(path: str) -> contextlib.AbstractContextManager[None]:
    """Nothing on stderr of decord's line that it cannot open `path` (reported as the video's failure)."""
    def drop(line: str) -> bool:
        m = _OPEN_ERROR.match(line)
        return m is not None and m.group(1) == path

    return without_stderr_lines(drop)


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


def _with_ffmpeg(out: DecodedVideo, path: str, samplings: dict[str, Sampling], window: Window, why: str) -> str:
    """Decode `window` of `out`'s video with the FFmpeg binary instead of decord (`decode_ffmpeg`);
    returns '' when it did, else FFmpeg's reason. `why` goes into the video's note."""
    from extract import decode_ffmpeg

    try:
        times, (h, w), stopped = _ffmpeg_times(path, window)
        frame_times = _repair_times(times)
        plans, needed = plan_frames(frame_times, samplings, window)
        width, height = resize_dims(h, w, decode_short_side(samplings.values()))
        size = (height, width) if width > 0 else (h, w)
        frames = decode_ffmpeg.read_frames(path, needed, *size) if len(needed) else np.zeros((0, *size, 3), np.uint8)
    except (MediaError, OSError) as err:  # OSError: an FFmpeg binary that cannot be run
        return str(err)
    out.frames = frames
    out.duration = float(frame_times[-1, 1])
    out.windows = window.count(out.duration)
    out.plans = row_plans(plans, needed)
    out.note = f'{why}: decoded with FFmpeg'
    if stopped:
        out.note += f', which stopped after {len(times)} frames ({stopped})'
    return ''


#: FFmpeg's frame times of the files this process read last: its first pass decodes the whole
#: file, which a long video's later windows would otherwise repeat, one pass per window. The first
#: window always reads them afresh (a file changed in place is read again).
_FFMPEG_TIMES: dict[tuple[str, int, int], tuple[np.ndarray, tuple[int, int], str]] = {}
_FFMPEG_TIMES_KEPT = 4


def _ffmpeg_times(path: str, window: Window) -> tuple[np.ndarray, tuple[int, int], str]:
    """`decode_ffmpeg.frame_times`, remembered for the last few files (by path, size and mtime)."""
    from extract import decode_ffmpeg

    st = os.stat(path)
    key = (path, st.st_size, st.st_mtime_ns)
    if window.index == 0 or key not in _FFMPEG_TIMES:
        _FFMPEG_TIMES.pop(key, None)
        if len(_FFMPEG_TIMES) >= _FFMPEG_TIMES_KEPT:
            _FFMPEG_TIMES.pop(next(iter(_FFMPEG_TIMES)))
        _FFMPEG_TIMES[key] = decode_ffmpeg.frame_times(path)
    return _FFMPEG_TIMES[key]


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
    reason = first_error(err)
    if not good:
        return None, needed, reason
    kept = needed[: len(good)]
    return np.stack(good), kept, f'decoded the first {int(kept[-1]) + 1} frames only ({reason})'
