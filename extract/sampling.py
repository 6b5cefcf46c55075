"""How each expert samples a video, row plans cut from the decoder's per-frame times, and the
decoded-video record that every decoding backend (decord, FFmpeg, NVDEC) returns.

Row plans are computed from the decoder's own per-frame timestamps, so variable frame rate is
exact: a frame row is the frame on screen at the centre of its sampling bin, a clip row is
`clip_len` frames around that centre, and every row carries the exact [start, end) seconds of
the frames it holds. Only the union of the frames that some expert needs is decoded, once.

A long video is decoded a window of seconds at a time (`Window`): each window holds the rows whose
middle falls in it, for every expert, so the frames in flight are bounded by the window, not by the
video's duration, and the windows' rows, in order, are the whole video's rows.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import stat
from collections.abc import Iterable
from typing import Any

import numpy as np

__all__ = ['AUDIO_RATE', 'CLIP_PLACEMENTS', 'Sampling', 'RowPlan', 'DecodedVideo', 'Window', 'WHOLE', 'plan_rows',
           'plan_frames', 'row_plans', 'decode_short_side', 'resize_dims', 'precheck', 'first_error']

#: every audio expert (VGGish, whisper) takes 16 kHz mono
AUDIO_RATE = 16000
#: `Sampling.clip_placement`
CLIP_PLACEMENTS = ('inside', 'centred', 'strided')
#: seconds added to a clip's times before the frame on screen is looked up, beside one float32 spacing
#: of the time (decord's frame times are float32: off by up to 1.9e-6 s past 32 s, 1.2e-4 s past an
#: hour): far above float error, far below a frame's duration
CLIP_TIME_NUDGE = 1e-6


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
        clip_placement: where a clip taken at `clip_fps` lies. ``inside``: centred on its row's time,
            moved into the video where it would reach past its start or end, as a clip of
            consecutive frames is (a shorter video repeats its last frame), and a time on a frame
            boundary takes the later frame. ``centred`` (stores made before): centred, the first or
            last frame repeated where the clip reaches past the video, and a time on a boundary
            taking either frame as float rounding fell (at 25 fps around x.5 s of 25 fps video
            every time is on one, so frames were repeated and skipped). ``strided``: CE's sliding
            windows (supplementary A.5, Action(KN): "Frames extracted at 25fps and processed with a
            window length of 64 frames and a stride of 25 frames"; its released features'
            `aggregated_i3d_25fps_256px_stride25_offset0_inner_stride1`): clip k starts at the start
            of row k's bin (frame 25k of the 25 fps stream), the rows are the windows that fit in
            the video (at least one, which a shorter video fills by repeating its last frame), and
            a video with more than `max_rows` windows keeps `max_rows` of them, spread evenly.
        resampler: kind ``audio``: how the waveform is brought to `AUDIO_RATE`
            (`shared.media.RESAMPLERS`); each resampler the experts ask for is one waveform.
    """

    kind: str = 'frames'
    fps: float = 1.0
    clip_len: int = 1
    clip_fps: float | None = None
    max_rows: int = 128
    short_side: int = 0
    clip_placement: str = 'inside'
    resampler: str = 'ffmpeg'

    def __post_init__(self) -> None:
        from shared.media import RESAMPLERS

        if self.resampler not in RESAMPLERS:
            raise ValueError(f'resampler must be one of {", ".join(map(repr, RESAMPLERS))}, got {self.resampler!r}')
        if self.kind not in ('frames', 'clips', 'audio'):
            raise ValueError(f'sampling kind must be frames, clips or audio, got {self.kind!r}')
        if self.clip_placement not in CLIP_PLACEMENTS:
            raise ValueError(f'clip_placement must be one of {", ".join(map(repr, CLIP_PLACEMENTS))}, '
                             f'got {self.clip_placement!r}')
        if self.clip_placement == 'strided' and (self.kind != 'clips' or not self.clip_fps or self.clip_len < 2):
            raise ValueError("clip_placement 'strided' (CE's sliding windows) is for clips taken at a clip_fps, "
                             f'not for kind {self.kind!r} with clip_len {self.clip_len} and clip_fps {self.clip_fps}')
        if not 0 < self.fps < math.inf:  # written so that NaN fails too
            raise ValueError(f'fps must be a positive number, got {self.fps}')
        if self.clip_fps is not None and not 0 < self.clip_fps < math.inf:
            raise ValueError(f"clip_fps must be a positive number, or null for the video's own rate, "
                             f'got {self.clip_fps}')
        for name in ('clip_len', 'max_rows'):
            if getattr(self, name) < 1:
                raise ValueError(f'{name} must be >= 1, got {getattr(self, name)}')


@dataclasses.dataclass(frozen=True)
class Window:
    """The part of a video one decode covers: window `index` of windows `seconds` long.

    Args:
        index: 0 for the first window, which also reads the audio and tells how many there are.
        seconds: the window's length; 0 for the whole video in one window.
    """

    index: int = 0
    seconds: float = 0.0

    def count(self, duration: float) -> int:
        """Windows of a video of `duration` seconds (at least one)."""
        return max(1, math.ceil(duration / self.seconds - 1e-9)) if self.seconds > 0 else 1

    def rows(self, stamps: np.ndarray, duration: float) -> np.ndarray:
        """Which of an expert's rows (their (L, 2) seconds) lie in this window: those whose middle does
        (the last window takes every row past its start, whatever the rounding)."""
        if self.seconds <= 0:
            return np.ones(len(stamps), bool)
        mid = stamps.astype(np.float64).mean(axis=1)
        last = self.index + 1 >= self.count(duration)
        return (mid >= self.index * self.seconds) & (last | (mid < (self.index + 1) * self.seconds))


#: the whole video in one window
WHOLE = Window()


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
    #: mono float32 at AUDIO_RATE by each resampler the audio experts ask for (`Sampling.resampler`);
    #: None: no audio stream (or audio_error)
    audio: dict[str, np.ndarray] | None = None
    audio_error: str = ''
    frame_times: np.ndarray | None = None  # (N, 2) seconds of every frame: from `index_video` only
    window: int = 0  # which window of the video these frames and rows are
    windows: int = 1  # windows of the video, in all
    # experts with nothing to take from this file, and why (a still image: clip and audio experts)
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        """Memory held by the decoded frames (numpy or torch: both have `nbytes`) and audio."""
        return int(getattr(self.frames, 'nbytes', 0)) + sum(a.nbytes for a in (self.audio or {}).values())


def plan_rows(frame_times: np.ndarray, s: Sampling) -> tuple[np.ndarray, np.ndarray]:
    """Rows of one expert from the per-frame [start, end) times of a video.

    Returns:
        (index, timestamps): frame indices (L, clip_len) into the video, and (L, 2) seconds.
    """
    n_frames = len(frame_times)
    starts = frame_times[:, 0]
    duration = float(frame_times[-1, 1])
    # rows start with the first frame: a video stream that starts after the file (after its audio)
    # has no rows of its first frame repeated before it is shown (frames before 0, which an MP4's
    # edit list cuts and decord still gives, are not shown either)
    origin = min(max(float(starts[0]), 0.0), float(np.nextafter(duration, 0)))
    n = max(1, math.ceil((duration - origin) * s.fps - 1e-6))
    step = 1.0 / s.fps
    if n > s.max_rows:
        n, step = s.max_rows, (duration - origin) / s.max_rows
    centres = np.minimum(origin + (np.arange(n) + 0.5) * step, np.nextafter(duration, 0))
    if s.kind == 'clips' and s.clip_fps and s.clip_placement == 'strided':
        # CE's sliding windows: one starting every 1 / fps s from the first frame, those that fit
        length = s.clip_len / s.clip_fps
        # a window that ends on the video's end fits: decord's float32 end is off by up to half its
        # spacing (3.8e-6 s at 100 s), past the 1e-6 s that dropped the last window of such videos
        slack = CLIP_TIME_NUDGE + float(np.spacing(np.float32(duration)))
        n = max(1, math.floor((duration - origin - length + slack) * s.fps) + 1)
        # the windows on the stride grid; T of them, spread as the audio expert spreads its examples
        k = np.arange(n) if n <= s.max_rows else ((np.arange(s.max_rows) + 0.5) * n / s.max_rows).astype(np.int64)
        centres = origin + k / s.fps + length / 2
    centre_idx = np.clip(np.searchsorted(starts, centres, side='right') - 1, 0, n_frames - 1)
    if s.kind == 'frames' or s.clip_len == 1:
        index = centre_idx[:, None]
    elif s.clip_fps:
        offsets = (np.arange(s.clip_len) - s.clip_len / 2 + 0.5) / s.clip_fps
        middles, nudge = centres, 0.0
        if s.clip_placement != 'centred':  # a clip lies inside the video, as one of consecutive frames does
            half = s.clip_len / s.clip_fps / 2
            middles = np.clip(centres, origin + half, max(duration - half, origin + half))
        times = np.clip(middles[:, None] + offsets[None, :], origin, np.nextafter(duration, 0))
        if s.clip_placement != 'centred':
            # a time on a frame boundary (all 64 of a clip at 25 fps around x.5 s of 25 fps video) takes
            # the later frame, whichever way the rounding of either time went: decord's float32 starts
            # too, which a fixed 1e-6 s missed past 32 s (168 of a 200 s video's rows repeated frames)
            nudge = CLIP_TIME_NUDGE + np.spacing(times.astype(np.float32)).astype(np.float64)
        index = np.clip(np.searchsorted(starts, times + nudge, side='right') - 1, 0, n_frames - 1)
    else:
        shown = int(np.searchsorted(starts, origin, side='left'))  # the first frame at or after the origin
        first = np.clip(centre_idx - s.clip_len // 2, shown, max(n_frames - s.clip_len, shown))
        index = np.minimum(first[:, None] + np.arange(s.clip_len)[None, :], n_frames - 1)
    stamps = np.stack([frame_times[index[:, 0], 0], frame_times[index[:, -1], 1]], axis=1)
    return index.astype(np.int64), stamps.astype(np.float32)


def decode_short_side(samplings: Iterable[Sampling]) -> int:
    """The short side to decode to: 0 (native size) unless every sampling allows a smaller one,
    and then the largest they allow, so that no expert's frames are shrunk past what it asked for."""
    sides = [s.short_side for s in samplings]
    return 0 if not sides or 0 in sides else max(sides)


def resize_dims(height: int, width: int, short_side: int) -> tuple[int, int]:
    """Decode size: short side to `short_side` (never upscaled), even dimensions; (-1, -1) for
    the native size (`short_side` 0, or no smaller)."""
    scale = short_side / min(height, width)
    if not short_side or scale >= 1.0:
        return -1, -1
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)



def first_error(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    text = [t for t in text if t.strip() and not t.startswith(('Stack trace', '  ['))]
    # decord's messages start with its clock and source line, once per level: "[21:00:12] .../video_reader.cc:430: "
    return re.sub(r'^(?:\[\d\d:\d\d:\d\d\] \S+:\d+: )+', '', text[-1] if text else type(err).__name__)[:300]


def precheck(row: int, path: str, samplings: dict[str, Sampling], window: Window = WHOLE) -> DecodedVideo:
    """What every backend does first: a missing, empty or unreadable file, or one that is not a
    regular file (a FIFO would block the decoder for ever), is an error; audio is read when asked,
    with the first window (the audio experts take the whole waveform)."""
    out = DecodedVideo(row, window=window.index)
    out.error = _not_a_video_file(path)
    if out.error:
        out.audio_error = out.error
    elif window.index == 0:
        from shared.media import load_audios

        resamplers = sorted({s.resampler for s in samplings.values() if s.kind == 'audio'})
        if resamplers:  # one FFmpeg run for all (the audio and speech experts: the file decoded once)
            out.audio, out.audio_error = load_audios(path, AUDIO_RATE, resamplers)
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


def plan_frames(frame_times: np.ndarray, samplings: dict[str, Sampling], window: Window = WHOLE
                ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], np.ndarray]:
    """Every expert's rows (`plan_rows`) in `window`, and the sorted frames they need: each decoded
    once. The rows are planned over the whole video, so every window cuts them alike."""
    duration = float(frame_times[-1, 1])
    plans = {}
    for name, s in samplings.items():
        index, stamps = plan_rows(frame_times, s)
        keep = window.rows(stamps, duration)
        plans[name] = index[keep], stamps[keep]
    return plans, np.unique(np.concatenate([idx.ravel() for idx, _ in plans.values()]).astype(np.int64))


def row_plans(plans: dict[str, tuple[np.ndarray, np.ndarray]], needed: np.ndarray) -> dict[str, RowPlan]:
    """`plans` with their frame indices into the decoded frames (`needed`) instead of the video."""
    return {name: RowPlan(np.searchsorted(needed, idx), stamps) for name, (idx, stamps) in plans.items()}
