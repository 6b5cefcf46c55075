"""Streams that do not start at the file's start: every row's time, video or audio, is on the
player's clock (seconds from the file's start), whichever decoder read the file."""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from extract import decode_ffmpeg
from extract.decode import decode_video, read_frame_times
from extract.run import main
from extract.sampling import Sampling, plan_rows
from shared.datasets.folder import folder_name
from shared.media import ffmpeg_exe, load_audio, probe
from shared.store import DONE, open_store

VIDEO = ['-f', 'lavfi', '-i', 'testsrc2=size=160x120:rate=25:duration=4']


def _ff(*args: str) -> None:
    subprocess.run([ffmpeg_exe(), '-y', '-v', 'error', *args], check=True, capture_output=True)


@pytest.fixture(scope='module')
def late(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Files whose audio starts 1.5 s after their video, or their video 1.5 s after their audio (or all of
    a file 1.5 s after its clock's 0)."""
    d = tmp_path_factory.mktemp('late')
    enc = ['-c:v', 'libx264', '-pix_fmt', 'yuv420p', '-c:a', 'aac']
    _ff(*VIDEO, '-itsoffset', '1.5', '-f', 'lavfi', '-i', 'sine=frequency=440:duration=2.5', *enc,
        str(d / 'audio_late.mp4'))
    _ff('-itsoffset', '1.5', *VIDEO, '-f', 'lavfi', '-i', 'sine=frequency=440:duration=4', *enc,
        str(d / 'video_late.mp4'))
    # MPEG-TS: the file starts at 1.4 s, its video 1.5 s after its audio
    _ff('-itsoffset', '1.5', *VIDEO, '-f', 'lavfi', '-i', 'sine=frequency=440:duration=4', *enc, '-f', 'mpegts',
        str(d / 'video_late.ts'))
    # Matroska whose file, video and audio all start at 1.5 s: a player shows its first frame at 0
    _ff(*VIDEO, '-f', 'lavfi', '-i', 'sine=frequency=440:duration=4', *enc, '-output_ts_offset', '1.5',
        str(d / 'file_late.mkv'))
    return d


def test_probe_gives_each_streams_start(late: Path) -> None:
    a = probe(late / 'audio_late.mp4')
    assert a.start == a.video_start == 0.0 and 1.45 < a.audio_start < 1.55
    ts = probe(late / 'video_late.ts')
    assert ts.start == ts.audio_start and 1.45 < ts.video_start - ts.start < 1.6


@pytest.mark.parametrize('resampler', ['ffmpeg', 'kaiser_best'])
def test_audio_that_starts_late_starts_late_in_the_waveform(late: Path, resampler: str) -> None:
    """The silence before a late audio stream is at the rate of the waveform it goes into: 16 kHz
    from FFmpeg, or the stream's own before `shared.resample` brings it to 16 kHz."""
    audio, error = load_audio(late / 'audio_late.mp4', 16000, resampler)
    assert not error and audio is not None
    heard = np.flatnonzero(np.abs(audio) > 1e-3)
    # the tone plays from 1.5 s to 4 s beside the video, not from 0
    assert 1.45 < heard[0] / 16000 < 1.55 and abs(len(audio) / 16000 - 4.0) < 0.1


def test_an_audio_start_past_the_end_of_the_file_adds_no_silence(late: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A broken timeline (an MPEG-TS pts jump: up to 2**33 ticks at 90 kHz, 26 hours) is not silence to
    put before the audio: that took GBs. Its audio is read as it is."""
    import dataclasses

    import shared.media

    path = late / 'audio_late.mp4'
    real = probe(path)
    monkeypatch.setattr(shared.media, 'probe', lambda p: dataclasses.replace(real, audio_start=real.start + 95443.0))
    audio, error = load_audio(path)
    assert not error and audio is not None and abs(len(audio) / 16000 - 2.5) < 0.1  # the tone's 2.5 s alone


@pytest.mark.parametrize('name', ['video_late.mp4', 'video_late.ts', 'file_late.mkv'])
def test_video_that_starts_late_has_its_frames_at_their_times(late: Path, name: str) -> None:
    path = str(late / name)
    truth = probe(path).video_start - probe(path).start
    ffmpeg, _, _ = decode_ffmpeg.frame_times(path)
    assert len(ffmpeg) == 100 and abs(ffmpeg[0, 0] - truth) < 1e-3 and abs(ffmpeg[-1, 1] - truth - 4.0) < 1e-3
    if name.endswith(('.mp4', '.mkv')):  # decord's times (the NVDEC backend's too) are the same
        decord = read_frame_times(path)
        assert not isinstance(decord, str)
        np.testing.assert_allclose(decord, ffmpeg, atol=1e-4)
    v = decode_video(0, path, {'f': Sampling('frames', fps=1.0)})
    # four rows, one a second of video from its first frame: none before it is shown
    stamps = v.plans['f'].timestamps
    np.testing.assert_allclose(stamps[:, 0], truth + np.arange(4) + 0.48, atol=1e-3)


def test_mpegts_frame_times_are_whole_ticks_from_the_files_start(late: Path) -> None:
    """An MPEG-TS's frame times are counted in its 90 kHz ticks from the file's start (1.4 s: 126000
    ticks, which 1.4 * 90000 in floats falls just short of): the first frame is where the probe puts
    the video's start, to its 6 digits, not a tick (11 us) later."""
    path = str(late / 'video_late.ts')
    info = probe(path)
    assert info.start == 1.4
    ffmpeg, _, _ = decode_ffmpeg.frame_times(path)
    assert abs(ffmpeg[0, 0] - (info.video_start - info.start)) < 2e-6
    ticks = ffmpeg[:, 0] * 90000
    np.testing.assert_allclose(ticks, np.round(ticks), rtol=0, atol=1e-6)


def test_a_file_replaced_at_the_same_path_is_probed_again(late: Path, tmp_path: Path) -> None:
    """The probe of the file read last is remembered by path, size and modification time: another file
    put at the same path (a video fixed and extracted again by a running process) gets its own
    video start, not the one before it."""
    import shutil

    path = tmp_path / 'clip.mp4'
    rows = lambda: decode_video(0, str(path), {'f': Sampling('frames', fps=1.0)}).plans['f'].timestamps[:, 0]  # noqa: E731
    shutil.copy(late / 'audio_late.mp4', path)
    np.testing.assert_allclose(rows(), np.arange(4) + 0.48, atol=1e-3)
    shutil.copy(late / 'video_late.mp4', path)
    truth = probe(path).video_start - probe(path).start
    assert truth > 1.4
    np.testing.assert_allclose(rows(), truth + np.arange(4) + 0.48, atol=1e-3)


def test_rows_start_at_the_first_frame() -> None:
    t = 1.52 + np.arange(100) / 25
    times = np.stack([t, t + 0.04], axis=1)
    index, stamps = plan_rows(times, Sampling('frames', fps=1.0))
    assert index[:, 0].tolist() == [12, 37, 62, 87]  # not frame 0 twice, for 0.5 s and 1.5 s
    index, _ = plan_rows(times, Sampling('clips', fps=1.0, clip_len=8, clip_fps=25.0))
    assert index[0].tolist() == list(range(9, 17))  # around frame 12, the first row's
    # frames before 0 (an MP4 edit list cuts them; decord gives them) get no rows
    early = np.stack([np.arange(-25, 50) / 25, np.arange(-24, 51) / 25], axis=1)
    assert plan_rows(early, Sampling('frames', fps=1.0))[0][:, 0].tolist() == [37, 62]
    index, stamps = plan_rows(early, Sampling('clips', fps=1.0, clip_len=32))
    assert index[0].tolist() == list(range(25, 57)) and stamps[0, 0] == 0.0


def test_a_long_video_that_starts_late_spreads_its_rows_over_its_own_frames() -> None:
    """A video stream 20 s into its file, longer than T rows: the T rows spread evenly over the
    seconds it is shown (20 to 120 s), not over the file's 120 s, whose last sixth would put the
    last rows past its end, all on its last frame."""
    t = 20.0 + np.arange(25 * 100) / 25
    times = np.stack([t, t + 0.04], axis=1)
    index, stamps = plan_rows(times, Sampling('frames', fps=1.0, max_rows=10))
    assert index[:, 0].tolist() == [125 + 250 * k for k in range(10)]  # frames at 25, 35, ..., 115 s
    assert len(np.unique(index)) == 10 and stamps[0, 0] == pytest.approx(25.0)


def test_extracted_audio_and_video_rows_share_the_clock(late: Path, tmp_path: Path) -> None:
    data = tmp_path / 'videos'
    data.mkdir()
    (data / 'audio_late.mp4').write_bytes((late / 'audio_late.mp4').read_bytes())
    assert main(['--dataset', f'folder:{data}', '--features-root', str(tmp_path / 'f'), '--expert', 'audio',
                 '--weights', 'random', '--workers', '0', '--no-progress']) == 0
    store = open_store(tmp_path / 'f' / folder_name(data) / 'audio.zarr', warn_random=False)
    rows = store.read()
    # 4 s of sound on the player's clock, the first 1.5 s of it silence: 4 rows of 0.96 s, the first of silence
    assert int(rows.lengths[0]) == 4
    feats = rows.features[0, :4].astype(np.float32)
    assert not np.allclose(feats[0], feats[2]) and np.allclose(feats[2], feats[3], atol=0.05)


def test_audio_longer_than_its_rows_keeps_rows_spread_over_all_of_it(tmp_path: Path) -> None:
    from extract.experts import create_expert
    from extract.experts._base import VideoInput

    path = tmp_path / 'tone.mp4'
    _ff('-f', 'lavfi', '-i', 'sine=frequency=440:duration=5', '-c:a', 'aac', str(path))
    audio, _ = load_audio(path)
    every = create_expert('audio', weights='random').load('cpu').process(VideoInput(audio=audio))
    two = create_expert('audio', weights='random', max_rows=2).load('cpu').process(VideoInput(audio=audio))
    assert len(every.features) == 5
    # the examples at the centres of the two halves, not the first two: the rest of the sound is kept
    np.testing.assert_allclose(two.timestamps, [[0.96, 1.92], [2.88, 3.84]], atol=1e-5)
    np.testing.assert_allclose(two.features, every.features[[1, 3]], atol=1e-5)


def test_log_mel_examples_are_computed_a_block_at_a_time_alike() -> None:
    import torch

    from extract.experts.audio import (EXAMPLE_BLOCK, HOP, LOG_OFFSET, WINDOW, example_count, log_mel_examples,
                                       mel_matrix)

    # 2.5 blocks of examples and a partial one: blocks (and a few examples picked) give the whole file's
    wave = torch.from_numpy(np.random.default_rng(0).uniform(-0.5, 0.5, 16000 * 160).astype(np.float32))
    k = example_count(len(wave))
    assert k == 166 > 2 * EXAMPLE_BLOCK
    frames = wave[: (k * 96 - 1) * HOP + WINDOW].unfold(0, WINDOW, HOP)  # the whole file's way, at once
    spec = torch.fft.rfft(frames * torch.hann_window(WINDOW, periodic=True), n=512).abs()
    whole = torch.log(spec @ torch.from_numpy(mel_matrix()) + LOG_OFFSET).reshape(k, 96, 64)
    np.testing.assert_allclose(log_mel_examples(wave), whole, atol=1e-5)
    np.testing.assert_allclose(log_mel_examples(wave, np.array([165, 0, 70])), whole[[165, 0, 70]], atol=1e-5)


def test_rapidocr_reads_no_words_in_a_frame_too_thin_for_it(tmp_path: Path) -> None:
    from gensim.models import Word2Vec

    from extract.experts import create_expert
    from extract.experts._base import VideoInput

    vectors = tmp_path / 'w.bin'
    Word2Vec([['word']] * 5, vector_size=8, min_count=1, workers=1, seed=1).wv.save_word2vec_format(str(vectors),
                                                                                                 binary=True)
    expert = create_expert('ocr.rapidocr', word_vectors=str(vectors)).load('cpu')
    # 4000x16 (a banner, a test strip): RapidOCR's detector shrinks it to 0 rows and raised, failing the video
    frames = np.full((2, 16, 4000, 3), 200, np.uint8)
    out = expert.process(VideoInput(frames=frames, timestamps=np.array([[0.0, 0.04], [1.0, 1.04]], np.float32)))
    assert out.status == DONE and len(out.features) == 0 and not out.available
