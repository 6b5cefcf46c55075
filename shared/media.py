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

__all__ = ['ffmpeg_exe', 'MediaInfo', 'probe', 'MediaError', 'load_audio', 'load_audios', 'RESAMPLERS', 'IMAGE_EXTENSIONS', 'is_image',
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

    FFmpeg's output is read and averaged a block at a time: memory peaks at about the mono
    waveform at the rate FFmpeg hands over (the stream's own for `shared.resample`), not at all of
    its channels (a 2-hour 6-channel 48 kHz file is 8 GB of float32 samples, its mean 1.4 GB).

    Returns:
        (audio, error): audio is None with error '' when the file has no audio stream, None with
        the reason when it cannot be read, else an array in [-1, 1] (possibly empty).
    """
    audios, error = load_audios(path, sample_rate, (resampler,))
    return (None if audios is None else audios[resampler]), error


def load_audios(path: str | os.PathLike, sample_rate: int = 16000,
                resamplers: Iterable[str] = ('ffmpeg',)) -> tuple[dict[str, np.ndarray] | None, str]:
    """`load_audio` by each of `resamplers`, each array bit-identical to its `load_audio`, from one
    FFmpeg run: the file is decoded once, and FFmpeg writes the stream at `sample_rate` (for
    ``ffmpeg``) and at its own rate (for every `shared.resample` filter) to a pipe each.

    Returns:
        (audios, error): audios by resampler, or None as `load_audio`'s audio is.
    """
    import numpy as np

    resamplers = list(dict.fromkeys(resamplers))
    for resampler in resamplers:
        if resampler not in RESAMPLERS:
            raise ValueError(f'resampler must be one of {", ".join(map(repr, RESAMPLERS))}, got {resampler!r}')
    try:
        info = probe(path)
    except MediaError as err:
        return None, str(err)
    if not info.has_audio:
        return None, ''
    # FFmpeg resamples, or hands over the stream's own rate (float32 holds 16- and 24-bit samples exactly)
    rates = ([sample_rate] if 'ffmpeg' in resamplers else []) + ([0] if set(resamplers) - {'ffmpeg'} else [])
    monos, error = _decode_mono(path, info, rates)
    if monos is None:
        return None, error
    out = {}
    for resampler in resamplers:
        mono, wav_rate = monos[sample_rate if resampler == 'ffmpeg' else 0]
        if wav_rate != sample_rate:
            from shared.resample import resample, resampled_length

            if resampled_length(len(mono), wav_rate, sample_rate) < 1:  # resampy refuses; nothing to hear either
                mono = np.zeros(0, np.float32)
            else:
                mono = resample(mono, wav_rate, sample_rate, resampler)
        out[resampler] = mono
    return out, ''


#: bytes of FFmpeg's output averaged at a time
_READ_BLOCK = 1 << 22


def _decode_mono(path: str | os.PathLike, info: MediaInfo, rates: list[int]
                 ) -> tuple[dict[int, tuple[np.ndarray, int]] | None, str]:
    """The first audio stream's channel mean at each of `rates` (0: the stream's own), by one FFmpeg
    process with an output per rate: {rate: (mono float32, its rate)}, or (None, why not)."""
    import signal
    import tempfile
    import threading

    cmd = [ffmpeg_exe(), '-nostdin', '-hide_banner', '-loglevel', 'error', '-i', os.fspath(path)]
    pipes = [os.pipe() for _ in rates[1:]]  # (read end, write end) of each output after the first (stdout)
    for i, rate in enumerate(rates):
        # WAV, for its header's channel count and rate; samples as they come, all channels
        cmd += ['-map', '0:a:0', '-acodec', 'pcm_f32le', *(['-ar', str(rate)] if rate else []), '-f', 'wav',
                f'pipe:{pipes[i - 1][1]}' if i else 'pipe:1']
    results: dict[int, tuple[np.ndarray, int] | Exception] = {}

    def read(rate: int, stream) -> None:
        try:
            results[rate] = _read_mono(stream, info)
        except Exception as err:  # handed to the caller's thread
            results[rate] = err

    proc, threads, killed = None, [], False
    readers = [os.fdopen(r, 'rb') for r, _ in pipes]
    # stderr to a file: a pipe that nobody reads would block FFmpeg once full (a broken stream's
    # messages), and FFmpeg would block the pipes read here
    with tempfile.TemporaryFile() as err_file:
        try:
            try:
                proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err_file,
                                        pass_fds=[w for _, w in pipes])
            finally:
                for _, w in pipes:
                    os.close(w)  # FFmpeg's copy is the only one: its exit is the reader's EOF
            readers.insert(0, proc.stdout)
            # each output on a thread of its own: FFmpeg writes them in turn, and blocks on a full one
            threads = [threading.Thread(target=read, args=(rate, stream), daemon=True)
                       for rate, stream in zip(rates[1:], readers[1:])]
            for t in threads:
                t.start()
            read(rates[0], proc.stdout)  # in this thread: a KeyboardInterrupt reaches the finally below
            for t in threads:
                t.join()
            if any(isinstance(r, Exception) for r in results.values()):
                try:  # FFmpeg failed (its error says why), or it would block on the output no longer read
                    proc.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    killed = True
            proc.wait()
        finally:
            # an error or a KeyboardInterrupt here: FFmpeg is stopped and reaped (no zombie, no orphan)
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
            for t in threads:  # at the end of their pipes now: closed under them, a read could raise
                if t.ident is not None:
                    t.join()
            for stream in readers:
                stream.close()
        if proc.returncode and not killed:
            err_file.seek(0)
            last = err_file.read().decode(errors='replace').strip().splitlines()
            why = (last[-1] if last else f'ffmpeg was killed by {signal.Signals(-proc.returncode).name}'
                   if proc.returncode < 0 else 'ffmpeg failed')
            return None, f'cannot decode audio: {why}'
    for result in results.values():
        if isinstance(result, ValueError):
            return None, f'cannot decode audio: {result}'
        if isinstance(result, Exception):
            raise result
    return results, ''


def _read_mono(stream, info: MediaInfo) -> tuple[np.ndarray, int]:
    """(channel mean, rate) of the WAV that FFmpeg writes to `stream`, read a block at a time.

    Raises:
        ValueError: no WAV header, or no data in it.
    """
    import numpy as np

    channels, rate = _wav_header(stream)
    # FFmpeg's WAV starts at the stream's first sample: an audio stream that starts after the file does
    # (after its video) gets that silence first, so that audio times are the video's (a player's) times
    lead = info.audio_start - info.start
    # a start past the file's end is a broken timeline (an MPEG-TS's pts jump), not silence to add:
    # up to 26 hours of it (2**33 ticks at 90 kHz) would take GBs
    lead = round(lead * rate) if lead <= info.duration else 0
    frame = 4 * channels
    # room for the container's duration (pages never written take no memory), grown if it runs longer
    mono = np.zeros(lead + round(min(info.duration, 6 * 3600) * rate) + rate, np.float32)
    n, rest = lead, b''
    while True:
        block = stream.read(_READ_BLOCK - _READ_BLOCK % frame)
        if not block:
            break
        block, rest = (rest + block if rest else block), b''
        k = len(block) // frame
        if len(block) % frame:  # a partial frame: the rest comes with the next block (or is dropped at the end)
            rest = block[k * frame:]
        if n + k > len(mono):
            mono = np.concatenate([mono[:n], np.zeros(max(n + k, len(mono) * 3 // 2) - n, np.float32)])
        samples = np.frombuffer(block, np.float32, k * channels).reshape(k, channels)
        out = mono[n:n + k]
        out[:] = samples[:, 0]  # summed channel by channel in float32 (no float64 copy), then divided
        for c in range(1, channels):
            out += samples[:, c]
        if channels > 1:
            out /= np.float32(channels)
        n += k
    out = samples = None  # views of the buffer that is resized
    mono.resize(n, refcheck=False)  # in place: no copy
    return mono, rate


def _wav_header(stream) -> tuple[int, int]:
    """(channels, sample rate) of a WAV file that FFmpeg writes to a pipe (its sizes may be unset),
    read up to the start of its samples."""
    import struct

    head = stream.read(12)
    if head[:4] != b'RIFF' or head[8:12] != b'WAVE':
        raise ValueError('ffmpeg did not write a WAV header')
    channels = rate = 0
    while True:
        chunk = stream.read(8)
        if len(chunk) < 8:
            raise ValueError('no audio data in the WAV ffmpeg wrote')
        cid, size = chunk[:4], struct.unpack('<I', chunk[4:])[0]
        if cid == b'data':  # to the end: a piped WAV's data size is a placeholder
            if channels < 1 or rate < 1:
                raise ValueError('WAV data before its format')
            return channels, rate
        body = stream.read(size + (size & 1))
        if cid == b'fmt ' and len(body) >= 8:
            channels, rate = struct.unpack('<HI', body[2:8])
