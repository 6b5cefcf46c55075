"""FFmpeg, found once: the system `ffmpeg`, else the binary that the imageio-ffmpeg wheel ships."""
from __future__ import annotations

import dataclasses
import functools
import os
import re
import shutil
import subprocess

__all__ = ['ffmpeg_exe', 'MediaInfo', 'probe', 'MediaError', 'load_audio']


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
    info: dict = {'duration': duration}
    v = re.search(r'Stream #\S+.*?: Video: (\w+).*?, (\d{2,5})x(\d{2,5})', text)
    if v:
        info.update(video_codec=v.group(1), width=int(v.group(2)), height=int(v.group(3)))
        fps = re.search(r'Stream #\S+.*?: Video: .*?([\d.]+) fps', text)
        if fps:
            info['fps'] = float(fps.group(1))
    a = re.search(r'Stream #\S+.*?: Audio: (\w+).*?, (\d+) Hz, ([^,]+)', text)
    if a:
        info.update(audio_codec=a.group(1), sample_rate=int(a.group(2)), channels=a.group(3).strip())
    return MediaInfo(**info)


def load_audio(path: str | os.PathLike, sample_rate: int = 16000) -> tuple['np.ndarray | None', str]:
    """The first audio stream as mono float32 at `sample_rate` (FFmpeg resamples and downmixes).

    Returns:
        (audio, error): audio is None with error '' when the file has no audio stream, None with
        the reason when it cannot be read, else an array in [-1, 1] (possibly empty).
    """
    import ffmpeg  # ffmpeg-python builds the command; the binary is ffmpeg_exe()
    import numpy as np

    try:
        info = probe(path)
    except MediaError as err:
        return None, str(err)
    if not info.has_audio:
        return None, ''
    try:
        out, _ = (ffmpeg.input(os.fspath(path))
                  .output('pipe:', format='f32le', acodec='pcm_f32le', ac=1, ar=sample_rate, map='0:a:0')
                  .global_args('-nostdin', '-hide_banner', '-loglevel', 'error')
                  .run(cmd=ffmpeg_exe(), capture_stdout=True, capture_stderr=True))
    except ffmpeg.Error as err:
        last = (err.stderr or b'').decode(errors='replace').strip().splitlines()
        return None, f'cannot decode audio: {last[-1] if last else "ffmpeg failed"}'
    return np.frombuffer(out, np.float32).copy(), ''
