"""FFmpeg, found once: the system `ffmpeg`, else the binary that the imageio-ffmpeg wheel ships; and which
files are still images (by suffix)."""
from __future__ import annotations

import dataclasses
import functools
import os
import re
import shutil
import subprocess
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy is imported where audio is loaded: probing files needs none of it
    import numpy as np

__all__ = ['ffmpeg_exe', 'MediaInfo', 'probe', 'MediaError', 'load_audio', 'RESAMPLERS', 'IMAGE_EXTENSIONS', 'is_image',
           'count_media', 'media_unit', 'VIDEO_STREAM']

#: how `load_audio` brings a file's audio to the asked rate: ``ffmpeg`` (FFmpeg's swr with its defaults, as
#: whisper's `load_audio`), or a filter of `shared.resample` (resampy's, as VGGish's `vggish_input`)
RESAMPLERS = ('ffmpeg', 'kaiser_best', 'kaiser_best_v0.3')

#: still images (MEE's "videos without motion and sound"): a file with one of these suffixes, in any
#: manifest, is decoded as a one-frame video (`extract.images`); every other file is a video
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.webp', '.bmp', '.gif')

#: a video stream's codec and size in FFmpeg's description of a file (`probe`, `extract.decode_ffmpeg`);
#: two digits at least, so that a codec tag such as 0x47504A4D is not taken for a size
VIDEO_STREAM = re.compile(r'Stream #\S+.*?: Video: (\w+).*?, (\d{2,5})x(\d{2,5})')


def is_image(path: str | os.PathLike) -> bool:
    """Whether `path` names a still image: by its suffix (`IMAGE_EXTENSIONS`, any case), not its bytes."""
    return os.path.splitext(os.fspath(path))[1].lower() in IMAGE_EXTENSIONS


def count_media(paths: Iterable[str | os.PathLike]) -> str:
    """How many files `paths` are, in words: '40 videos', '1 still image', '30 videos and 10 still
    images' (a dataset of stills, COCO or demo_images, is not '40 videos')."""
    paths = list(paths)
    images = sum(map(is_image, paths))
    videos = len(paths) - images

    def n(count: int, noun: str) -> str:
        return f'{count} {noun}{"s" * (count != 1)}'

    if images and videos:
        return f'{n(videos, "video")} and {n(images, "still image")}'
    return n(images, 'still image') if images else n(videos, 'video')


def media_unit(paths: Iterable[str | os.PathLike]) -> str:
    """A progress bar's unit for `paths`: 'video', 'image', or 'file' when they are both."""
    kinds = {is_image(p) for p in paths}
    return 'file' if len(kinds) > 1 else 'image' if kinds == {True} else 'video'


class MediaError(RuntimeError):
    """FFmpeg could not read or write a file."""


@functools.cache
def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary: `$VIDEOEXPERTS_FFMPEG`, `ffmpeg` on PATH, or imageio-ffmpeg's."""
    exe = os.environ.get('VIDEOEXPERTS_FFMPEG') or shutil.which('ffmpeg')
    if exe:
        return exe
    try:
        import imageio_ffmpeg
    except ImportError as err:  # pragma: no cover - it is a dependency
        raise MediaError('no ffmpeg on PATH and imageio-ffmpeg is not installed') from err
    return imageio_ffmpeg.get_ffmpeg_exe()


@dataclasses.dataclass(frozen=True)
class MediaInfo:
    """What `ffmpeg -i` says about a file (no ffprobe: the imageio-ffmpeg wheel lacks it)."""

    duration: float
    video_codec: str = ''
    width: int = 0
    height: int = 0
    fps: float = 0.0
    audio_codec: str = ''
    sample_rate: int = 0
    channels: str = ''
    #: seconds: where the file's timeline starts (a player's 0), and where its first video and audio
    #: streams start on it (an MPEG-TS from a broadcast starts at 1.4 s or more, a stream muxed with an
    #: offset starts later than the others); a stream's start is the file's where FFmpeg gives none
    start: float = 0.0
    video_start: float = 0.0
    audio_start: float = 0.0

    @property
    def has_video(self) -> bool:
        return bool(self.video_codec)

    @property
    def has_audio(self) -> bool:
        return bool(self.audio_codec)


def probe(path: str | os.PathLike) -> MediaInfo:
    """Container duration and the first video and audio stream of `path`.

    Raises:
        MediaError: ffmpeg cannot open the file.
    """
    proc = subprocess.run([ffmpeg_exe(), '-hide_banner', '-nostdin', '-i', os.fspath(path)],
                          capture_output=True, text=True, errors='replace', check=False)
    text = proc.stderr
    m = re.search(r'Duration: (\d+):(\d+):(\d+(?:\.\d+)?)', text)
    if not m:
        last = text.strip().splitlines()[-1] if text.strip() else 'no output'
        raise MediaError(f'ffmpeg cannot read {path}: {last}')
    duration = int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))
    start = re.search(r'Duration: .*?, start: (-?\d+(?:\.\d+)?)', text)
    info: dict = {'duration': duration}
    info['start'] = info['video_start'] = info['audio_start'] = float(start.group(1)) if start else 0.0
    v = VIDEO_STREAM.search(text)
    if v:
        info.update(video_codec=v.group(1), width=int(v.group(2)), height=int(v.group(3)))
        fps = re.search(r'Stream #\S+.*?: Video: .*?([\d.]+) fps', text)
        if fps:
            info['fps'] = float(fps.group(1))
        info['video_start'] = _stream_start(text, v.start(), info['start'])
    a = re.search(r'Stream #\S+.*?: Audio: (\w+).*?, (\d+) Hz, ([^,]+)', text)
    if a:
        info.update(audio_codec=a.group(1), sample_rate=int(a.group(2)), channels=a.group(3).strip())
        info['audio_start'] = _stream_start(text, a.start(), info['start'])
    return MediaInfo(**info)


def _stream_start(text: str, at: int, file_start: float) -> float:
    """The start of the stream whose line begins at `at` in FFmpeg's description: its ', start X'
    (FFmpeg 7.1 on writes it where it is not 0), else the file's own (an older FFmpeg writes none);
    never before the file's, which is the earliest of its streams."""
    line = text[at:].split('\n', 1)[0]
    m = re.search(r', start (-?\d+(?:\.\d+)?)', line)
    return max(float(m.group(1)), file_start) if m else file_start


def load_audio(path: str | os.PathLike, sample_rate: int = 16000,
               resampler: str = 'ffmpeg') -> tuple[np.ndarray | None, str]:
    """The first audio stream as mono float32 at `sample_rate`: the channels averaged here, and
    resampled by `resampler` (`RESAMPLERS`): by FFmpeg, every channel before they are averaged, or
    by `shared.resample` after (resampy's order, VGGish's reference: mean, then resample).

    The channel mean (gain 1.0) is the downmix the audio models' references take: VGGish's
    `wavfile_to_examples` averages the channels, and whisper's `load_audio` gets the mean of a
    stereo file from FFmpeg (its s16 output makes FFmpeg scale its downmix matrix to a gain of 1).
    FFmpeg's own `-ac 1` to float output adds the channels at 1/sqrt(2) each, 3 dB louder. Mono
    files come out bit-identical to `-ac 1`. Files of more than two channels get the mean of all of
    them (VGGish's rule; FFmpeg's downmix, and so whisper's, weights the channels by position).

    The array starts where the file starts (`MediaInfo.start`): an audio stream that starts later
    is preceded by silence, as a player plays it beside the video.

    Returns:
        (audio, error): audio is None with error '' when the file has no audio stream, None with
        the reason when it cannot be read, else an array in [-1, 1] (possibly empty).
    """
    import ffmpeg  # ffmpeg-python builds the command; the binary is ffmpeg_exe()
    import numpy as np

    if resampler not in RESAMPLERS:
        raise ValueError(f'resampler must be one of {", ".join(map(repr, RESAMPLERS))}, got {resampler!r}')
    try:
        info = probe(path)
    except MediaError as err:
        return None, str(err)
    if not info.has_audio:
        return None, ''
    # FFmpeg resamples, or hands over the stream's own rate (float32 holds 16- and 24-bit samples exactly)
    rate = {'ar': sample_rate} if resampler == 'ffmpeg' else {}
    try:  # WAV, for its header's channel count and rate; samples as they come, all channels
        out, _ = (ffmpeg.input(os.fspath(path))
                  .output('pipe:', format='wav', acodec='pcm_f32le', map='0:a:0', **rate)
                  .global_args('-nostdin', '-hide_banner', '-loglevel', 'error')
                  .run(cmd=ffmpeg_exe(), capture_stdout=True, capture_stderr=True))
    except ffmpeg.Error as err:
        last = (err.stderr or b'').decode(errors='replace').strip().splitlines()
        return None, f'cannot decode audio: {last[-1] if last else "ffmpeg failed"}'
    try:
        channels, wav_rate, data = _wav_channels_and_data(out)
    except ValueError as err:
        return None, f'cannot decode audio: {err}'
    samples = np.frombuffer(data[:len(data) - len(data) % (4 * channels)], np.float32).reshape(-1, channels)
    # FFmpeg's WAV starts at the stream's first sample: an audio stream that starts after the file does
    # (after its video) gets that silence first, so that audio times are the video's (a player's) times
    lead = info.audio_start - info.start
    # a start past the file's end is a broken timeline (an MPEG-TS's pts jump), not silence to add:
    # up to 26 hours of it (2**33 ticks at 90 kHz) would take GBs
    lead = round(lead * wav_rate) if lead <= info.duration else 0
    mono = np.zeros(lead + len(samples), np.float32)
    mono[lead:] = samples[:, 0]  # summed channel by channel: no float64 copy of a long file
    for c in range(1, channels):
        mono[lead:] += samples[:, c]
    if channels > 1:
        mono /= np.float32(channels)
    if wav_rate != sample_rate:
        from shared.resample import resample, resampled_length

        if resampled_length(len(mono), wav_rate, sample_rate) < 1:  # resampy refuses; nothing to hear either
            return np.zeros(0, np.float32), ''
        mono = resample(mono, wav_rate, sample_rate, resampler)
    return mono, ''


def _wav_channels_and_data(wav: bytes) -> tuple[int, int, bytes]:
    """(channels, sample rate, sample bytes) of a WAV file that FFmpeg wrote to a pipe (its sizes
    may be unset)."""
    import struct

    if wav[:4] != b'RIFF' or wav[8:12] != b'WAVE':
        raise ValueError('ffmpeg did not write a WAV header')
    pos, channels, rate = 12, 0, 0
    while pos + 8 <= len(wav):
        cid, size = wav[pos:pos + 4], struct.unpack('<I', wav[pos + 4:pos + 8])[0]
        if cid == b'fmt ':
            channels, rate = struct.unpack('<HI', wav[pos + 10:pos + 16])
        elif cid == b'data':
            if channels < 1 or rate < 1:
                raise ValueError('WAV data before its format')
            return channels, rate, wav[pos + 8:]  # to the end: a piped WAV's data size is a placeholder
        pos += 8 + size + (size & 1)
    raise ValueError('no audio data in the WAV ffmpeg wrote')
