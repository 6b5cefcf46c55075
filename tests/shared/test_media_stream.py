"""`load_audio` reads FFmpeg's output a block at a time, averaging the channels as they come: its
memory peaks at the mono waveform, not at all of a file's channels (a 2-hour 6-channel 48 kHz file
was 8 GB of pipe data in memory), and FFmpeg is stopped and reaped whatever happens to the reader."""
from __future__ import annotations

import subprocess
import threading
import tracemalloc
import wave
from pathlib import Path

import numpy as np
import pytest

import shared.media
from shared.media import load_audio, load_audios


@pytest.fixture(scope='module')
def six_channels(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """120 s of 6-channel 16-bit noise at 16 kHz (FFmpeg hands over 46 MB of float32), and its samples."""
    samples = np.random.default_rng(0).integers(-20000, 20000, size=(16000 * 120, 6), dtype=np.int16)
    path = tmp_path_factory.mktemp('media') / 'six.wav'
    with wave.open(str(path), 'wb') as w:
        w.setnchannels(6)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(samples.tobytes())
    return path, samples


def test_a_multichannel_file_takes_the_memory_of_its_mean(six_channels: tuple[Path, np.ndarray]) -> None:
    """The whole pipe read at once, and a copy of its samples, peaked at 100 MB here; now the mean (7.7 MB)
    and a few read blocks. The mean is the one it was: channel by channel in float32, then divided."""
    path, samples = six_channels
    tracemalloc.start()
    try:
        audio, error = load_audio(path, 16000, 'kaiser_best')  # at the file's rate: nothing resampled
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert error == '' and audio is not None and audio.dtype == np.float32
    want = samples[:, 0].astype(np.float32) / 32768  # FFmpeg's s16 to float: exact
    for c in range(1, 6):
        want += samples[:, c].astype(np.float32) / 32768
    want /= np.float32(6)
    assert np.array_equal(audio, want)
    budget = audio.nbytes + 3 * shared.media._READ_BLOCK
    assert peak < budget, f'peak {peak / 2**20:.1f} MiB, budget {budget / 2**20:.1f} MiB'


_POPEN = subprocess.Popen


class _Popens:
    """subprocess.Popen, remembering the FFmpeg processes that `load_audio` starts."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def __call__(self, cmd: list[str], **kwargs) -> subprocess.Popen:
        proc = _POPEN(cmd, **kwargs)
        if 'pcm_f32le' in cmd:
            self.procs.append(proc)
        return proc


@pytest.mark.parametrize('resamplers', [('kaiser_best',), ('ffmpeg', 'kaiser_best')])
def test_an_interrupted_read_leaves_no_ffmpeg_behind(six_channels: tuple[Path, np.ndarray],
                                                     resamplers: tuple[str, ...],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C while the samples are read: FFmpeg (blocked on the full pipe) is killed and reaped, not left
    running, or a zombie, beside a worker that goes on with other files."""
    popens, header = _Popens(), shared.media._wav_header

    def interrupted(stream) -> tuple[int, int]:
        if threading.current_thread() is not threading.main_thread():  # where a signal's exception is raised
            return header(stream)
        header(stream)
        raise KeyboardInterrupt

    monkeypatch.setattr(shared.media.subprocess, 'Popen', popens)
    monkeypatch.setattr(shared.media, '_wav_header', interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_audios(six_channels[0], 16000, resamplers)
    assert len(popens.procs) == 1 and popens.procs[0].returncode is not None


def test_ffmpeg_killed_while_it_writes_is_an_error_that_says_so(six_channels: tuple[Path, np.ndarray],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    popens, header = _Popens(), shared.media._wav_header

    def killed(stream) -> tuple[int, int]:
        popens.procs[0].kill()
        return header(stream)

    monkeypatch.setattr(shared.media.subprocess, 'Popen', popens)
    monkeypatch.setattr(shared.media, '_wav_header', killed)
    assert load_audio(six_channels[0], 16000, 'kaiser_best') == (None, 'cannot decode audio: ffmpeg was killed by SIGKILL')
    assert popens.procs[0].returncode == -9
