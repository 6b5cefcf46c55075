"""Downmix of multi-channel audio (issue 19, item 3): the channel mean, gain 1.0, as whisper's
`load_audio` and VGGish's `wavfile_to_examples` take it; FFmpeg's `-ac 1` to float output adds the
channels at 1/sqrt(2) each (3 dB louder). Mono files stay bit-identical to `-ac 1`.

Tolerance against whisper: max-abs 2/32768 on the [-1, 1] waveform (whisper's s16 output is
quantised to 1/32768, rounded or truncated; ours is float32).
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from shared.media import ffmpeg_exe, load_audio

TOL = 2.0 / 32768


def _ff(*args: str) -> None:
    subprocess.run([ffmpeg_exe(), '-y', '-v', 'error', *args], check=True, capture_output=True)


def _tone(freq: int, rate: int, volume: float) -> list[str]:
    return ['-f', 'lavfi', '-i', f'sine=frequency={freq}:duration=2:sample_rate={rate},volume={volume}']


@pytest.fixture(scope='module')
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp('audio')
    out = {}
    # stereo, left and right different (440 Hz loud, 1000 Hz quiet); AAC at 44.1 kHz (resampled) in an
    # MP4 with a video stream, and 16-bit WAV at 16 kHz
    join = ['-filter_complex', '[0:a][1:a]join=inputs=2:channel_layout=stereo[a]', '-map', '[a]']
    out['stereo.mp4'] = d / 'stereo.mp4'
    _ff('-f', 'lavfi', '-i', 'testsrc2=size=320x240:rate=25:duration=2', *_tone(440, 44100, 0.8),
        *_tone(1000, 44100, 0.3), '-filter_complex', '[1:a][2:a]join=inputs=2:channel_layout=stereo[a]',
        '-map', '0:v', '-map', '[a]', '-c:v', 'libx264', '-pix_fmt', 'yuv420p', '-c:a', 'aac', '-shortest',
        str(out['stereo.mp4']))
    out['stereo.wav'] = d / 'stereo.wav'
    _ff(*_tone(440, 16000, 0.8), *_tone(1000, 16000, 0.3), *join, '-c:a', 'pcm_s16le', str(out['stereo.wav']))
    out['3ch.wav'] = d / '3ch.wav'
    _ff(*_tone(440, 16000, 0.8), *_tone(1000, 16000, 0.3), *_tone(250, 16000, 0.5), '-filter_complex',
        '[0:a][1:a][2:a]join=inputs=3:channel_layout=2.1[a]', '-map', '[a]', '-c:a', 'pcm_f32le', str(out['3ch.wav']))
    out['mono.m4a'] = d / 'mono.m4a'
    _ff(*_tone(440, 44100, 0.8), '-c:a', 'aac', str(out['mono.m4a']))
    out['mono.wav'] = d / 'mono.wav'
    _ff('-f', 'lavfi', '-i', 'anoisesrc=duration=2:sample_rate=22050:amplitude=0.5', '-c:a', 'pcm_s16le',
        str(out['mono.wav']))
    return out


def _ffmpeg_f32(path: Path, *args: str) -> np.ndarray:
    raw = subprocess.run([ffmpeg_exe(), '-nostdin', '-v', 'error', '-i', str(path), '-map', '0:a:0', *args,
                          '-ar', '16000', '-f', 'f32le', '-acodec', 'pcm_f32le', 'pipe:'],
                         check=True, capture_output=True).stdout
    return np.frombuffer(raw, np.float32)


@pytest.mark.parametrize('name', ['stereo.mp4', 'stereo.wav'])
def test_stereo_is_whispers_channel_mean(files, name, tmp_path, monkeypatch):
    import whisper.audio

    (tmp_path / 'ffmpeg').symlink_to(ffmpeg_exe())  # whisper runs `ffmpeg` from PATH
    monkeypatch.setenv('PATH', f'{tmp_path}{os.pathsep}{os.environ.get("PATH", "")}')
    ours, err = load_audio(files[name])
    ref = whisper.audio.load_audio(str(files[name]))
    assert err == '' and ours.shape == ref.shape
    gap = float(np.abs(ours - ref).max())
    gain = float(np.sqrt((ours.astype(np.float64) ** 2).mean() / (ref.astype(np.float64) ** 2).mean()))
    assert gap <= TOL, f'max-abs {gap * 32768:.2f}/32768 against whisper (rms gain {gain:.4f})'
    assert gain == pytest.approx(1.0, abs=1e-3)


def test_stereo_is_the_mean_of_its_channels(files):
    """VGGish's rule, np.mean over channels, on each channel decoded alone."""
    left = _ffmpeg_f32(files['stereo.wav'], '-af', 'pan=mono|c0=c0')
    right = _ffmpeg_f32(files['stereo.wav'], '-af', 'pan=mono|c0=c1')
    ours, _ = load_audio(files['stereo.wav'])
    np.testing.assert_allclose(ours, (left + right) / 2, rtol=0, atol=1e-7)


def test_three_channels_are_averaged(files):
    chans = [_ffmpeg_f32(files['3ch.wav'], '-af', f'pan=mono|c0=c{i}') for i in range(3)]
    ours, _ = load_audio(files['3ch.wav'])
    np.testing.assert_allclose(ours, sum(chans) / 3, rtol=0, atol=1e-7)


@pytest.mark.parametrize('name', ['mono.m4a', 'mono.wav'])
def test_mono_is_bit_identical_to_ffmpeg_ac1(files, name):
    """What every store made before this change read from a mono file."""
    ours, _ = load_audio(files[name])
    assert np.array_equal(ours, _ffmpeg_f32(files[name], '-ac', '1'))


@pytest.mark.parametrize('name', ['audio', 'speech'])
def test_an_audio_store_made_before_the_downmix_changed_is_not_extended(name: str, tmp_path: Path) -> None:
    """Stereo used to reach the audio experts 3 dB louder: a store made then (no `downmix` in its
    config) is refused, naming the setting, instead of being extended with rows at the new level."""
    from extract.experts import create_expert
    from shared.store import StoreError, StoreSpec, create_store
    from tests.extract.test_av_experts import _word2vec

    extra = {'word_vectors': str(_word2vec(tmp_path / 'w.bin', ['zzz']))} if name == 'speech' else {}
    e = create_expert(name, weights='random', **extra)

    def spec(info: dict) -> StoreSpec:
        return StoreSpec(dataset='d', expert=name, feature_dim=e.cfg.feature_dim, max_rows=e.cfg.max_rows,
                         chunk_size=4, has_tokens=e.has_tokens, **info)

    old = e.store_info()
    old['config'] = {k: v for k, v in old['config'].items() if k != 'downmix'}
    create_store(tmp_path / 's.zarr', ['a', 'b'], spec(old))
    with pytest.raises(StoreError, match="downmix: store has 'ffmpeg -ac 1' .made before this setting"):
        create_store(tmp_path / 's.zarr', ['a', 'b'], spec(e.store_info()))
    create_store(tmp_path / 'new.zarr', ['a', 'b'], spec(e.store_info()))
    create_store(tmp_path / 'new.zarr', ['a', 'b'], spec(e.store_info()))  # a store made now resumes
