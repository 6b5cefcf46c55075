"""The FFmpeg binary as a second CPU decoder, for valid files that decord cannot read.

decord 0.6 fails on files that FFmpeg itself plays: AV1, which it does not open; H.264 in MPEG-TS
from a broadcast or a camera ("Unable to handle EOF because the video might have corrupted
frames", decord issues #248 and #143); low-bitrate MPEG program streams, whose first frames it
gives no time; and damaged packets, where it stops and FFmpeg conceals the damage. `decode_video`
then asks this module, which runs the same FFmpeg that reads the audio
(`shared.media.ffmpeg_exe`) in two passes:

1. `frame_times`: decode the video stream once, without output, and read each decoded frame's
   presentation time and display size from the `showinfo` filter;
2. `read_frames`: decode it again and keep only the frames some expert needs (`select` by the
   same decoded-frame numbers), scaled to the decode size, as raw RGB.

Both passes number the frames FFmpeg decodes, after its rotation by the display matrix, so the
indices of pass 1 address the frames of pass 2. On files both can read, this gives decord's rows,
times and pixels exactly (the tests compare them). Two decodes cost more than decord's one: this
is a fallback, used only where decord failed.
"""
from __future__ import annotations

import functools
import os
import re
import subprocess
from collections.abc import Iterable

import numpy as np

from extract.images import video_frames_too_large
from shared.media import VIDEO_STREAM, MediaError, ffmpeg_exe

__all__ = ['frame_times', 'read_frames']

_SHOWINFO = re.compile(r'\bn:\s*(\d+)\s+pts:\s*(\S+)\s+pts_time:(\S+)(?:\s+duration:\s*(\S+)\s+duration_time:(\S+))?'
                       r'.*?\bs:(\d+)x(\d+)')
#: showinfo's time base: its pts_time has 6 significant digits, 0.1 s at the times of an MPEG-TS (-copyts)
_TIME_BASE = re.compile(r'config in time_base: (\d+)/(\d+)')
_FILE_START = re.compile(r'Duration: .*?, start: (-?\d+(?:\.\d+)?)')
_INPUT = ['-nostdin', '-hide_banner', '-threads', '1']


@functools.cache
def _stream() -> list[str]:
    """The first video stream that is not a cover picture (rotated for display by default), and
    every decoded frame passed on once: never duplicated or dropped to make a constant rate.

    FFmpeg 5.1 renamed `-vsync` to `-fps_mode`, and FFmpeg 9 dropped `-vsync`; the FFmpeg on a
    cluster's PATH may be older than 5.1.
    """
    try:
        new = subprocess.run([ffmpeg_exe(), '-hide_banner', '-loglevel', 'error', '-f', 'lavfi', '-i',
                              'nullsrc=s=16x16:d=0.04', '-fps_mode', 'passthrough', '-f', 'null', '-'],
                             stdin=subprocess.DEVNULL, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        new = True
    return ['-map', '0:V:0', '-an', '-sn', '-dn', '-fps_mode' if new else '-vsync', 'passthrough']


def _reason(lines: Iterable[str]) -> str:
    """FFmpeg's last meaningful complaint."""
    lines = [ln.strip() for ln in lines if ln.strip() and 'showinfo' not in ln]
    for ln in reversed(lines):
        if 'matches no streams' in ln or 'does not contain any stream' in ln:
            return 'no video stream'
    return lines[-1][:300] if lines else 'FFmpeg decoded no frame'


def frame_times(path: str | os.PathLike) -> tuple[np.ndarray, tuple[int, int], str]:
    """Every decodable frame's [start, end) seconds from the file's start (a player's 0), the display
    (height, width) of the first, and what FFmpeg said when it stopped early ('' when it read the
    whole stream).

    An end is the frame's duration after its start when FFmpeg knows it, else NaN (the caller
    closes each interval at the next frame's start). The stderr is parsed as it streams: a long
    video writes one line per frame. A hang is the decode pool's to stop: it kills this worker,
    and FFmpeg ends on its next write to the closed pipe.

    Raises:
        MediaError: not one frame decoded (the reason from FFmpeg), or frames over the size limit
            (`extract.images.video_frames_too_large`, from the input's description that FFmpeg
            writes before it decodes a frame).
    """
    # -copyts: the frames' own times, less the file's start below. Without it FFmpeg moves a file's times
    # to start at 0 by the start of the streams it decodes, and of an MPEG-TS whose video starts after
    # its audio it decodes only the video: its first frame would be at 0, not where a player shows it
    cmd = [ffmpeg_exe(), *_INPUT, '-loglevel', 'info', '-copyts', '-i', os.fspath(path), *_stream(),
           '-vf', 'showinfo', '-f', 'null', '-']
    times: list[tuple[float, float]] = []
    size = (0, 0)
    other: list[str] = []
    sized = False  # the input's size was checked (the first video stream FFmpeg describes is the input's)
    file_start = None  # the input's "start:", the player's 0 (the output has no Duration line)
    tb: tuple[int, int] | None = None
    with subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True, errors='replace') as proc:
        assert proc.stderr is not None
        for line in proc.stderr:
            m = _SHOWINFO.search(line) if 'showinfo' in line else None
            if m is None and not sized and (v := VIDEO_STREAM.search(line)):
                sized = True
                too_large = video_frames_too_large(int(v.group(2)), int(v.group(3)))
                if too_large:
                    proc.kill()
                    raise MediaError(too_large)
            if m is None and file_start is None and (d := _FILE_START.search(line)):
                file_start = float(d.group(1))
            if m is None and tb is None and (b := _TIME_BASE.search(line)) and int(b.group(2)):
                tb = (int(b.group(1)), int(b.group(2)))
            if m is None:
                other = [*other[-19:], line]
                continue
            times.append(_interval(m, tb))
            if not size[0]:
                size = (int(m.group(7)), int(m.group(6)))
    if not times:
        raise MediaError(_reason(other))
    t = np.asarray(times, np.float64)
    if tb and file_start:  # in ticks: the file's start (whole microseconds) on the frames' tick, exact times
        t = (t - round(file_start * tb[1] / tb[0])) * tb[0] / tb[1]
    elif tb:
        t = t * tb[0] / tb[1]
    else:
        t = t - (file_start or 0.0)
    return t, size, _reason(other) if proc.returncode else ''


def _interval(m: re.Match, tb: tuple[int, int] | None) -> tuple[float, float]:
    """A showinfo line's [start, end): in ticks of `tb` when it is known, else in seconds; NaN where
    FFmpeg gives no time, an end of NaN where it gives no duration."""
    pts, dur = (m.group(2), m.group(4)) if tb else (m.group(3), m.group(5))
    start = float(pts) if pts not in ('NOPTS', 'nan') else float('nan')
    length = float(dur) if dur not in (None, 'NOPTS', 'nan') else float('nan')
    return start, start + length if length > 0 else float('nan')


def _ranges(index: np.ndarray) -> list[tuple[int, int]]:
    """Sorted unique frame numbers as inclusive runs: clips are runs of consecutive frames."""
    breaks = np.flatnonzero(np.diff(index) != 1)
    starts = np.concatenate([[0], breaks + 1])
    ends = np.concatenate([breaks, [len(index) - 1]])
    return [(int(index[s]), int(index[e])) for s, e in zip(starts, ends)]


def read_frames(path: str | os.PathLike, index: np.ndarray, height: int, width: int) -> np.ndarray:
    """Decoded frames `index` (sorted, unique, from `frame_times`) as (len(index), height, width, 3) uint8.

    Raises:
        MediaError: FFmpeg failed or returned another number of frames.
    """
    terms = '+'.join(f'between(n\\,{a}\\,{b})' for a, b in _ranges(np.asarray(index)))
    # decord scales with FFmpeg's bilinear filter: the same pixels as decord gives other files
    vf = f"select='{terms}',scale={width}:{height}:flags=bilinear,format=rgb24"
    cmd = [ffmpeg_exe(), *_INPUT, '-loglevel', 'error', '-i', os.fspath(path), *_stream(), '-vf', vf,
           '-f', 'rawvideo', '-pix_fmt', 'rgb24', 'pipe:1']
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, check=False)
    frame = height * width * 3
    if len(proc.stdout) != len(index) * frame:
        said = proc.stderr.decode(errors='replace').splitlines()
        raise MediaError(f'FFmpeg returned {len(proc.stdout) // frame} of {len(index)} frames'
                         + (f' ({_reason(said)})' if said else ''))
    # a copy: frames from bytes are read-only, and the experts' tensors are made from them
    return np.frombuffer(proc.stdout, np.uint8).reshape(len(index), height, width, 3).copy()
