"""Decoding: row plans from real frame timestamps, and decord (with FFmpeg behind it) on real (odd) files."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from extract.decode import _with_ffmpeg, decode_video
from extract.images import MAX_IMAGE_PIXELS
from extract.pool import DecodePool
from extract.sampling import WHOLE, DecodedVideo, Sampling, plan_rows
from shared.media import ffmpeg_exe


def _times(n: int, fps: float = 25.0) -> np.ndarray:
    t = np.arange(n) / fps
    return np.stack([t, t + 1 / fps], axis=1)


def test_frame_rows_take_the_frame_at_each_bin_centre() -> None:
    idx, stamps = plan_rows(_times(75), Sampling('frames', fps=1.0))
    assert idx[:, 0].tolist() == [12, 37, 62]  # frames on screen at 0.5, 1.5, 2.5 s
    np.testing.assert_allclose(stamps, [[0.48, 0.52], [1.48, 1.52], [2.48, 2.52]], atol=1e-6)
    idx, _ = plan_rows(_times(75), Sampling('frames', fps=2.0))
    assert len(idx) == 6
    idx, stamps = plan_rows(_times(63), Sampling('frames', fps=1.0))  # 2.52 s: the last part second has its row
    assert idx[:, 0].tolist() == [12, 37, 62] and stamps[-1, 1] == pytest.approx(2.52)


def test_long_videos_are_spread_over_max_rows() -> None:
    idx, stamps = plan_rows(_times(25 * 100), Sampling('frames', fps=1.0, max_rows=10))
    assert len(idx) == 10 and np.all(np.diff(idx[:, 0]) == 250) and stamps[-1, 1] <= 100.0


def test_clips_are_consecutive_and_clamped_at_the_ends() -> None:
    idx, stamps = plan_rows(_times(75), Sampling('clips', fps=1.0, clip_len=16))
    assert idx.shape == (3, 16)
    assert np.all(np.diff(idx, axis=1) == 1)
    assert idx[0, 0] == 4 and idx[-1, -1] == 69  # 16 frames around frames 12 and 62
    short, _ = plan_rows(_times(5), Sampling('clips', fps=1.0, clip_len=8))
    assert short.tolist() == [[0, 1, 2, 3, 4, 4, 4, 4]]  # a clip longer than the video repeats its end
    end, _ = plan_rows(_times(70), Sampling('clips', fps=1.0, clip_len=16))  # frame 62 is 8 from the end
    assert end[-1].tolist() == list(range(54, 70))  # moved back inside the video, ending at its last frame
    np.testing.assert_allclose(stamps[0], [4 / 25, 20 / 25], atol=1e-6)


def test_clip_fps_resamples_inside_the_clip() -> None:
    idx, _ = plan_rows(_times(75), Sampling('clips', fps=1.0, clip_len=8, clip_fps=12.5))
    assert np.all(np.diff(idx[1]) == 2)  # 12.5 fps in a 25 fps video: every other frame


@pytest.mark.parametrize('rate', [25.0, 30.0])
def test_clips_at_the_videos_rate_are_its_consecutive_frames(rate: float) -> None:
    """An I3D clip (64 frames at 25 fps) of a 10 s video at its own rate is 64 consecutive frames
    (as CE's windows are), also around 0.5 s and 9.5 s, where a centred
    clip would reach past the video. Centred (``clip_placement=centred``, stores made before), a
    25 fps clip's times fell on frame boundaries, taken as float rounding went, which repeated and
    skipped frames, and the first clip held frame 0 20 times. A video shorter than the clip repeats
    its last frame."""
    n = int(10 * rate)
    s = Sampling('clips', fps=1.0, clip_len=64, clip_fps=rate)
    idx, stamps = plan_rows(_times(n, rate), s)
    assert idx.shape == (10, 64) and np.all(np.diff(idx, axis=1) == 1)
    assert idx[0].tolist() == list(range(64)) and idx[-1].tolist() == list(range(n - 64, n))
    mid = int(1.5 * rate)  # the frame on screen at 1.5 s is in the middle of row 1
    assert idx[1, 31] <= mid <= idx[1, 32]
    np.testing.assert_allclose(stamps[0], [0, 64 / rate], atol=1e-6)
    short, _ = plan_rows(_times(30, rate), s)
    assert short[0].tolist() == list(range(30)) + [29] * 34
    if rate == 25.0:
        old, _ = plan_rows(_times(n, rate), dataclasses.replace(s, clip_placement='centred'))
        assert old[0].tolist()[:20] == [0] * 20 and set(np.diff(old[1]).tolist()) == {0, 1, 2}
    with pytest.raises(ValueError, match="clip_placement must be one of 'inside', 'centred', 'strided', got 'wrap'"):
        Sampling('clips', clip_placement='wrap')
    for kind, clip_len, clip_fps in (('frames', 1, None), ('clips', 16, None), ('clips', 1, 25.0)):
        with pytest.raises(ValueError, match="clip_placement 'strided' .* is for clips taken at a clip_fps"):
            Sampling(kind, clip_len=clip_len, clip_fps=clip_fps, clip_placement='strided')  # it was silently ignored


def test_clips_of_a_long_decoded_video_are_its_consecutive_frames(tmp_path: Path) -> None:
    """decord's frame times are float32: past 32 s a frame's start is off by more than 1e-6 s, so
    the I3D clips of a real 25 fps video of 40 s, whose times all fall on frame boundaries, took
    the earlier frame there and repeated and skipped frames (rows from 31 s); each is 64
    consecutive frames."""
    from extract.decode import read_frame_times

    path = tmp_path / 'long.mp4'
    subprocess.run([ffmpeg_exe(), '-y', '-v', 'error', '-f', 'lavfi', '-i', 'color=c=gray:s=16x16:r=25:d=40',
                    '-c:v', 'libx264', '-pix_fmt', 'yuv420p', str(path)], check=True)
    times = read_frame_times(str(path))
    assert isinstance(times, np.ndarray) and len(times) == 1000
    assert np.abs(times[:, 0] - np.arange(1000) / 25).max() > 1e-6  # the float32 rounding this is about
    idx, _ = plan_rows(times, Sampling('clips', fps=1.0, clip_len=64, clip_fps=25.0))
    assert idx.shape == (40, 64) and np.all(np.diff(idx, axis=1) == 1)
    assert idx[35].tolist() == list(range(856, 920))  # 34.24-36.8 s: frame 887, on screen at 35.5 s, in the middle


def test_variable_frame_rate_uses_real_timestamps() -> None:
    t = np.concatenate([np.arange(25) / 25, 1 + np.arange(10) / 10])  # 25 fps then 10 fps
    times = np.stack([t, np.append(t[1:], 2.0)], axis=1)
    idx, stamps = plan_rows(times, Sampling('frames', fps=1.0))
    assert idx[:, 0].tolist() == [12, 30]  # 1.5 s lies in frame 25 + 5
    np.testing.assert_allclose(stamps[1], [1.5, 1.6], atol=1e-6)


SAMPLINGS = {'f': Sampling('frames', fps=1.0, short_side=64), 'c': Sampling('clips', fps=1.0, clip_len=4, short_side=64)}


@pytest.mark.parametrize('name', ['good.mp4', 'hevc.mp4', 'vp9.webm', 'mpeg4.avi', 'no_audio.mp4'])
def test_codecs_decode(odd_videos: Path, name: str) -> None:
    v = decode_video(0, str(odd_videos / name), SAMPLINGS)
    assert not v.error, v.error
    assert v.frames.shape[1:] == (64, 86, 3)  # short side resized at decode, even width (85.3 -> 86)
    assert len(v.plans['f'].index) == 2 and v.plans['c'].index.shape == (2, 4)
    assert abs(v.duration - 2.0) < 0.05


def test_rotation_odd_size_vfr_and_one_frame(odd_videos: Path) -> None:
    rot = decode_video(0, str(odd_videos / 'rotated.mp4'), SAMPLINGS)
    assert rot.frames.shape[1] > rot.frames.shape[2]  # portrait after the display rotation
    odd = decode_video(0, str(odd_videos / 'odd_size.mp4'), SAMPLINGS)
    assert not odd.error and odd.frames.shape[-1] == 3
    vfr = decode_video(0, str(odd_videos / 'vfr.mp4'), {'f': Sampling('frames', fps=1.0, short_side=64)})
    # 25 frames at 25 fps, then 25 at 10 fps: 3.5 s; rows carry each frame's real display interval
    assert abs(vfr.duration - 3.5) < 0.1 and len(vfr.plans['f'].index) == 4
    first, third = vfr.plans['f'].timestamps[0], vfr.plans['f'].timestamps[2]
    assert first[0] <= 0.5 < first[1] and abs((first[1] - first[0]) - 0.04) < 1e-3
    assert third[0] <= 2.5 < third[1] and third[1] - third[0] > 0.07  # a 10 fps frame lasts ~0.1 s
    one = decode_video(0, str(odd_videos / 'one_frame.mp4'), SAMPLINGS)
    assert len(one.frames) == 1 and one.plans['c'].index.tolist() == [[0, 0, 0, 0]]


def test_a_shrunk_frame_keeps_the_aspect_ratio_to_the_nearest_even_width(tmp_path: Path) -> None:
    """320x180 (16:9) at a short side of 64 is 113.8 wide: it is decoded 114 wide, the nearest even
    width (1.78:1), not 112 (1.75:1, every frame squeezed by 1.6 %)."""
    path = tmp_path / 'wide.mp4'
    subprocess.run([ffmpeg_exe(), '-y', '-v', 'error', '-f', 'lavfi', '-i', 'testsrc2=size=320x180:rate=25:duration=1',
                    '-c:v', 'libx264', '-pix_fmt', 'yuv420p', str(path)], check=True, capture_output=True)
    out = decode_video(0, str(path), {'f': Sampling('frames', fps=1.0, short_side=64)})
    assert not out.error and out.frames.shape[1:] == (64, 114, 3)


@pytest.mark.parametrize('name,reason', [('zero.mp4', 'empty file'), ('text.mp4', 'cannot open video'),
                                         ('missing.mp4', 'file not found')])
def test_undecodable_files_give_reasons(odd_videos: Path, name: str, reason: str) -> None:
    v = decode_video(3, str(odd_videos / name), SAMPLINGS)
    assert v.row == 3 and v.frames is None and reason in v.error


@pytest.mark.parametrize('name', ['text.mp4', 'truncated.mp4'])
def test_a_file_decord_cannot_open_fails_without_decords_stray_line(odd_videos: Path, name: str,
                                                                    capfd: pytest.CaptureFixture) -> None:
    """decord wrote '[14:16:57] .../video_reader.cc:83: ERROR opening: PATH, Invalid data ...' to fd 2
    beside the store's own reason for the failure."""
    from extract.decode import read_frame_times

    v = decode_video(0, str(odd_videos / name), SAMPLINGS)
    assert 'cannot open video: Error reading' in v.error and 'Invalid data' in v.error
    assert read_frame_times(str(odd_videos / name)).startswith('cannot open video')
    assert capfd.readouterr().err == ''


def test_what_else_is_written_while_decord_opens_a_file_is_kept(capfd: pytest.CaptureFixture) -> None:
    """Only decord's line for the file being opened is dropped: other lines, another file's too, come out."""
    from extract.decode import _without_open_error

    line = '[14:16:57] /github/workspace/src/video/video_reader.cc:83: ERROR opening: {}, Invalid data found\n'
    with _without_open_error('/v/a.mp4'):
        os.write(2, line.format('/v/a.mp4').encode() + b'[h264 @ 0x1] a real complaint\n')
        os.write(2, line.format('/v/b.mp4').encode())
    assert capfd.readouterr().err == '[h264 @ 0x1] a real complaint\n' + line.format('/v/b.mp4')


def test_a_process_without_stderr_still_gets_the_reason_decord_cannot_open(odd_videos: Path, python: str,
                                                                          repo_root: Path, subprocess_env: dict) -> None:
    """With fd 2 closed (a daemon) there is nothing to keep clean: the reason is decord's, not EBADF's."""
    code = ('from extract.decode import decode_video; from extract.sampling import Sampling; '
            f'print(decode_video(0, {str(odd_videos / "text.mp4")!r}, {{"f": Sampling("frames", 1.0)}}).error)')
    out = subprocess.run([python, '-c', code], cwd=repo_root, env=subprocess_env, stdout=subprocess.PIPE,
                         preexec_fn=lambda: os.close(2), text=True, timeout=120).stdout
    assert out.startswith('cannot open video: Error reading') and 'Bad file descriptor' not in out, out


def test_files_that_are_not_regular_files_fail_at_once(tmp_path: Path) -> None:
    fifo, folder = tmp_path / 'pipe.mp4', tmp_path / 'folder.mp4'
    os.mkfifo(fifo)  # a decoder opening it would wait for a writer for ever
    folder.mkdir()
    assert decode_video(0, str(fifo), SAMPLINGS).error == 'not a regular file (a pipe, socket or device)'
    v = decode_video(1, str(folder), {**SAMPLINGS, 'a': Sampling('audio')})
    assert v.error == v.audio_error == 'a directory, not a video file'


@pytest.mark.parametrize('name', ['good.mp4', 'rotated.mp4', 'vfr.mp4', 'vp9.webm', 'mpeg4.avi', 'odd_size.mp4',
                                  'one_frame.mp4'])
def test_ffmpeg_fallback_gives_decords_rows_times_and_pixels(odd_videos: Path, name: str) -> None:
    path = str(odd_videos / name)
    for samplings in (SAMPLINGS, {'f': Sampling('frames', fps=1.0, short_side=1024)}):  # resized, full size
        want, got = decode_video(0, path, samplings), DecodedVideo(0)
        assert 'FFmpeg' not in want.note  # the reference is decord's, not FFmpeg compared with itself
        assert _with_ffmpeg(got, path, samplings, WHOLE, 'test') == '' and 'decoded with FFmpeg' in got.note
        assert got.duration == pytest.approx(want.duration, abs=1e-3)
        for k in samplings:
            np.testing.assert_array_equal(got.plans[k].index, want.plans[k].index)
            np.testing.assert_allclose(got.plans[k].timestamps, want.plans[k].timestamps, atol=1e-3)
        np.testing.assert_array_equal(got.frames, want.frames)


def test_mpegts_goes_to_ffmpeg(odd_videos: Path) -> None:
    # decord 0.6 opens this file, then fails on reading its frames after seconds of retries
    path = str(odd_videos / 'mpegts.ts')
    ts, mp4 = decode_video(0, path, SAMPLINGS), decode_video(0, str(odd_videos / 'good.mp4'), SAMPLINGS)
    assert not ts.error and ts.note == 'MPEG-TS, which decord misreads: decoded with FFmpeg'
    for k in SAMPLINGS:  # the same 2 s of testsrc2 at 25 fps: the same rows, from 0 s though TS starts at 1.4 s
        np.testing.assert_array_equal(ts.plans[k].index, mp4.plans[k].index)
        np.testing.assert_allclose(ts.plans[k].timestamps, mp4.plans[k].timestamps, atol=1e-3)
    assert np.abs(ts.frames.astype(int) - mp4.frames).mean() < 3  # same frames (two encodes of one source)
    assert decode_video(0, str(odd_videos / 'audio_only.mp4'), SAMPLINGS).error == 'no video stream'


def test_av1_decodes_with_ffmpeg(odd_videos: Path) -> None:
    if not (odd_videos / 'av1.mp4').exists():
        pytest.skip('this FFmpeg cannot encode AV1 (libaom-av1)')
    v = decode_video(0, str(odd_videos / 'av1.mp4'), SAMPLINGS)
    assert not v.error and v.note.startswith('decord cannot read this file') and 'decoded with FFmpeg' in v.note
    good = decode_video(0, str(odd_videos / 'good.mp4'), SAMPLINGS)
    np.testing.assert_array_equal(v.plans['c'].index, good.plans['c'].index)
    assert np.abs(v.frames.astype(int) - good.frames).mean() < 3  # 0.4 measured; a frame off by one: 5.9


def test_mpeg_program_stream_rows_are_cut_at_the_right_times(odd_videos: Path) -> None:
    import decord

    from extract.decode import read_frame_times

    path = str(odd_videos / 'mpeg2.mpg')
    wrong = read_frame_times(path)
    if not isinstance(wrong, str):  # how many frames lack a time depends on how this FFmpeg muxes
        pytest.skip("decord dates every frame of this FFmpeg's mpeg2.mpg")
    assert wrong == "decord's frame times are wrong here (6 of 60 frames without a time)"
    v = decode_video(0, path, SAMPLINGS)  # NVDEC hands such a file to the CPU, which gets here
    assert not v.error and v.note.startswith("decord's frame times are wrong here (")
    truth = {k: plan_rows(_times(60, 30.0), s) for k, s in SAMPLINGS.items()}  # frame n is shown from n/30 s
    for k in SAMPLINGS:
        np.testing.assert_allclose(v.plans[k].timestamps, truth[k][1], atol=1e-3)
    # the frames too: decord decodes every frame in turn right (a seek by its wrong times lands elsewhere)
    needed = np.unique(np.concatenate([index.ravel() for index, _ in truth.values()]))
    want = decord.VideoReader(path, width=86, height=64).get_batch(list(range(60))).asnumpy()[needed]
    np.testing.assert_array_equal(v.frames, want)


def test_ffmpeg_takes_over_where_decord_stops_early(odd_videos: Path) -> None:
    import decord

    path = str(odd_videos / 'corrupt.mp4')
    vr = decord.VideoReader(path)
    try:  # where the junk lands depends on this FFmpeg's encoding of good.mp4
        vr.get_batch(list(range(len(vr))))
        pytest.skip("decord reads this FFmpeg's corrupt.mp4 to the end")
    except decord.DECORDError:
        pass
    v = decode_video(0, path, SAMPLINGS)  # decord stops at the junk (a prefix before)
    assert not v.error and v.note.startswith('decord stopped early (') and 'decoded with FFmpeg' in v.note
    assert v.duration == pytest.approx(2.0, abs=0.05) and v.plans['c'].index.shape == (2, 4)


def test_a_prefix_keeps_the_rows_it_decoded_with_their_own_times(odd_videos: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import decord

    from extract import decode_ffmpeg
    from shared.media import MediaError

    path = str(odd_videos / 'good.mp4')
    whole = decode_video(0, path, SAMPLINGS)

    def stops(self, index):
        raise decord.DECORDError('Unable to handle EOF')

    def no_ffmpeg(path):
        raise MediaError('no FFmpeg here')

    real = decord.VideoReader.__getitem__
    monkeypatch.setattr(decord.VideoReader, 'get_batch', stops)
    monkeypatch.setattr(decord.VideoReader, '__getitem__', lambda self, i: stops(self, i) if i > 12 else real(self, i))
    monkeypatch.setattr(decode_ffmpeg, 'frame_times', no_ffmpeg)
    # 25 fps: frames 0-12 decode. The frame row at 0.5 s (frame 12) is whole; the first clip (frames
    # 10-13) is not, and is dropped rather than re-cut from frames it does not have
    v = decode_video(0, path, SAMPLINGS)
    assert not v.error and v.note.startswith('decoded the first 13 frames only') and v.duration == pytest.approx(0.52)
    assert len(v.plans['f'].index) == 1 and len(v.plans['c'].index) == 0
    for k in SAMPLINGS:  # the rows kept are the whole decode's first rows: same times, same frames
        n = len(v.plans[k].index)
        np.testing.assert_array_equal(v.plans[k].timestamps, whole.plans[k].timestamps[:n])
        np.testing.assert_array_equal(v.frames[v.plans[k].index], whole.frames[whole.plans[k].index[:n]])


def test_ffmpeg_takes_over_where_decord_cannot_open(odd_videos: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import decord

    def fails(*args, **kwargs):
        raise decord.DECORDError('ERROR cannot find video stream with wanted index: -1')

    monkeypatch.setattr(decord, 'VideoReader', fails)
    v = decode_video(0, str(odd_videos / 'good.mp4'), SAMPLINGS)
    assert not v.error and v.note.startswith('decord cannot read this file (ERROR cannot find video stream')
    assert v.frames.shape == (8, 64, 86, 3) and len(v.plans['f'].index) == 2
    text = decode_video(0, str(odd_videos / 'text.mp4'), SAMPLINGS)
    assert text.error.startswith('cannot open video: ERROR cannot find') and 'FFmpeg: ' in text.error


def test_narrow_frames_that_decord_pads_into_extra_channels_go_to_ffmpeg(tmp_path: Path) -> None:
    """Issue 18 item 4: decord gave the frames of a 16x16 H.264 file as (16, 16, 6), the row
    padding taken for channels, and the experts' normalisation then stopped the whole run. FFmpeg
    takes such a file; its pixels are those of decord's rows without the padding."""
    import decord

    from tests.extract.conftest import _ff

    path = tmp_path / 'tiny.mp4'
    _ff('-f', 'lavfi', '-i', 'testsrc=size=16x16:rate=1:duration=10', '-c:v', 'libx264', '-pix_fmt', 'yuv420p',
        str(path))
    raw = np.stack([decord.VideoReader(str(path), num_threads=1)[i].asnumpy() for i in range(10)])
    if raw.shape[-1] == 3:
        pytest.skip("this decord's frames of a 16-pixel-wide file are RGB")
    v = decode_video(0, str(path), SAMPLINGS)
    assert not v.error and v.note.startswith('decord cannot read this file (decord gives frames of shape (16, 16, 6)')
    assert v.note.endswith('decoded with FFmpeg') and v.frames.shape == (10, 16, 16, 3) and v.duration == 10.0
    assert v.plans['f'].index.ravel().tolist() == list(range(10))
    pixels = raw.reshape(10, 16, -1)[:, :, :16 * 3].reshape(10, 16, 16, 3)  # each row's pixels, then padding
    np.testing.assert_array_equal(v.frames, pixels)
    assert pixels.std() > 50  # testsrc's colour bars, not a blank frame


def test_truncated_file_fails_or_keeps_a_prefix(odd_videos: Path) -> None:
    v = decode_video(0, str(odd_videos / 'truncated.mp4'), SAMPLINGS)
    assert v.error or (len(v.frames) > 0 and v.duration <= 2.0)


def test_pool_keeps_order(odd_videos: Path) -> None:
    names = ['good.mp4', 'zero.mp4', 'hevc.mp4', 'text.mp4', 'vp9.webm']
    with DecodePool(SAMPLINGS, workers=2) as pool:
        out = list(pool.imap([(i, str(odd_videos / n)) for i, n in enumerate(names)]))
    assert [v.row for v in out] == list(range(5))
    assert [bool(v.error) for v in out] == [False, True, False, True, False]


def test_pool_workers_run_below_the_main_process() -> None:
    import os

    from extract.pool import WORKER_NICE

    with DecodePool(SAMPLINGS, workers=1) as pool:
        assert pool._start().submit(os.nice, 0).result() == min(19, os.nice(0) + WORKER_NICE)


@pytest.mark.parametrize('per_mb,fails', [(0.0, True), (1e6, False)])
def test_pool_gives_up_on_a_video_after_a_limit_that_grows_with_the_file(odd_videos: Path, per_mb: float,
                                                                         fails: bool, monkeypatch: pytest.MonkeyPatch
                                                                         ) -> None:
    from extract import pool as pool_module

    monkeypatch.setattr(pool_module, 'TIMEOUT_S_PER_MB', per_mb)
    good = str(odd_videos / 'good.mp4')  # 88 KB; the limit: 0.01 s, or 88,000 s at 1e6 s per MB
    with DecodePool(SAMPLINGS, workers=1, timeout=0.01) as pool:
        out = list(pool.imap([(0, good), (1, good)]))
    assert [v.row for v in out] == [0, 1]
    if fails:  # the pool was killed and restarted, and the next video given the same limit
        assert all('decoding took longer than 0 s' in v.error and v.frames is None for v in out)
    else:
        assert all(not v.error and len(v.frames) == 8 for v in out)


def _copies(odd_videos: Path, tmp_path: Path, names: list[str]) -> list[tuple[int, str]]:
    """(row, path) items; `crash.mp4` and `hang.mp4` are copies of good.mp4 that `_crash` treats specially."""
    items = []
    for i, name in enumerate(names):
        path = odd_videos / name
        if name in ('crash.mp4', 'hang.mp4'):
            path = tmp_path / name
            path.write_bytes((odd_videos / 'good.mp4').read_bytes())
        items.append((i, str(path)))
    return items


def test_decode_one_from_threads_blames_a_crash_on_its_video(odd_videos: Path, tmp_path: Path) -> None:
    import concurrent.futures as cf

    from tests.extract._crash import decode_or_crash

    items = _copies(odd_videos, tmp_path, ['good.mp4', 'crash.mp4', 'hevc.mp4', 'vp9.webm', 'text.mp4', 'vfr.mp4'])
    with DecodePool(SAMPLINGS, workers=2, work=decode_or_crash) as pool:
        with cf.ThreadPoolExecutor(4) as threads:  # as NVDEC's decode threads call it
            out = list(threads.map(lambda item: pool.decode_one(*item), items))
    assert [v.row for v in out] == list(range(len(items)))
    assert out[1].error == 'the decoder process crashed on this video'
    assert out[4].error.startswith('cannot open video')
    for k in (0, 2, 3, 5):  # in flight when the pool broke, or not: decoded all the same
        ref = decode_video(k, items[k][1], SAMPLINGS)
        assert not out[k].error, out[k].error
        np.testing.assert_array_equal(out[k].frames, ref.frames)


def test_pool_blames_a_crash_on_its_video_and_decodes_the_others(odd_videos: Path, tmp_path: Path) -> None:
    from tests.extract._crash import decode_or_crash

    names = ['good.mp4', 'hevc.mp4', 'crash.mp4', 'vp9.webm', 'vfr.mp4', 'crash.mp4', 'no_audio.mp4']
    items = _copies(odd_videos, tmp_path, names)
    with DecodePool(SAMPLINGS, workers=3, work=decode_or_crash) as pool:  # videos before, beside and after each crash in flight
        out = list(pool.imap(items))
    assert [v.row for v in out] == list(range(len(names)))
    assert [v.error for v in out if v.error] == ['the decoder process crashed on this video'] * 2
    assert [bool(v.error) for v in out] == [n == 'crash.mp4' for n in names]


def test_decode_one_fails_a_hung_video_then_goes_on(odd_videos: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import threading
    import time

    from extract import pool as pool_module
    from tests.extract._crash import decode_or_crash

    monkeypatch.setattr(pool_module, 'TIMEOUT_S_PER_MB', 0.0)
    hang, good = (path for _, path in _copies(odd_videos, tmp_path, ['hang.mp4', 'good.mp4']))
    with DecodePool(SAMPLINGS, workers=1, timeout=2.0, work=decode_or_crash) as pool:
        v = pool.decode_one(0, hang)
        assert v.error.startswith('decoding took longer than 2 s') and v.frames is None
        assert not pool.decode_one(1, good).error  # the hung process was replaced
        # a run that is stopped stops its waiting callers too
        got: list = []
        caller = threading.Thread(target=lambda: got.append(pool.decode_one(2, hang)))
        t0 = time.perf_counter()
        caller.start()
        time.sleep(0.5)
        pool.close(kill=True)
        caller.join(timeout=10)
        assert got and got[0].error == 'decoding was stopped' and time.perf_counter() - t0 < 2.0


@pytest.mark.parametrize('max_bytes,later', [(1, 1), (1 << 40, 4)])
def test_pool_decodes_fewer_ahead_when_videos_are_large(odd_videos: Path, monkeypatch: pytest.MonkeyPatch,
                                                        max_bytes: int, later: int) -> None:
    """One video per worker until the first is in; then as many ahead as `max_bytes` holds of the
    largest video so far (at least one), and never more than `prefetch` per worker."""
    import extract.pool as pool_module

    depths: list[int] = []

    def recording(queue, todo, depth, submit, seconds) -> None:  # noqa: ANN001 - the wrapped function's arguments
        depths.append(depth)
        real(queue, todo, depth, submit, seconds)

    real = pool_module.prefetch
    monkeypatch.setattr(pool_module, 'prefetch', recording)
    names = ['good.mp4', 'vp9.webm', 'mpeg4.avi', 'good.mp4', 'rotated.mp4', 'good.mp4']
    with DecodePool(SAMPLINGS, workers=2, prefetch=2, max_bytes=max_bytes) as pool:
        out = list(pool.imap([(i, str(odd_videos / n)) for i, n in enumerate(names)]))
    assert [v.row for v in out] == list(range(6)) and all(v.frames is not None and v.nbytes > 0 for v in out)
    assert depths[0] == 2 and set(depths[1:]) == {later}




def test_video_frames_over_the_image_pixel_limit_are_refused_before_decoding(tmp_path: Path, python: str,
                                                                            subprocess_env: dict) -> None:
    """A 2-frame MJPEG of 1.2 MB whose frames are just over `MAX_IMAGE_PIXELS` (as a still image
    would be refused): decord took 1.1 GB to decode one such frame. Every decode path refuses it
    from the header, in a process of its own here so that its peak memory can be read."""
    side = int(MAX_IMAGE_PIXELS ** 0.5) + 8
    path = tmp_path / 'huge.avi'
    subprocess.run([ffmpeg_exe(), '-y', '-v', 'error', '-f', 'lavfi', '-i', f'color=c=gray:s={side}x{side}:r=2:d=1',
                    '-c:v', 'mjpeg', '-q:v', '31', str(path)], check=True, capture_output=True)
    script = f'''
import json, resource
from extract.decode import _with_ffmpeg, decode_video, read_frame_times
from extract.decode_ffmpeg import frame_times
from extract.sampling import WHOLE, DecodedVideo, Sampling
from shared.media import MediaError
s = {{'f': Sampling('frames', fps=1.0, short_side=64), 'a': Sampling('audio')}}
v = decode_video(0, {str(path)!r}, s)
try:
    frame_times({str(path)!r})
    ffmpeg = ''
except MediaError as err:
    ffmpeg = str(err)
fallback = _with_ffmpeg(DecodedVideo(0), {str(path)!r}, s, WHOLE, 'test')
index = read_frame_times({str(path)!r})
# this process's peak from its own memory map: ru_maxrss of a process started by vfork counts its parent's
hwm = next(int(ln.split()[1]) for ln in open('/proc/self/status') if ln.startswith('VmHWM:'))
mb = max(hwm, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) // 1024
print(json.dumps([v.error, v.audio_error, v.frames is None, index if isinstance(index, str) else 'read', ffmpeg,
                  fallback, mb]))
'''
    proc = subprocess.run([python, '-c', script], env=subprocess_env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    error, audio_error, no_frames, index, ffmpeg, fallback, peak_mb = json.loads(proc.stdout.splitlines()[-1])
    why = (f'video frames of {side}x{side} pixels are over the limit of {MAX_IMAGE_PIXELS} pixels '
           '(extract.images.MAX_IMAGE_PIXELS): refused before decoding')
    assert error == index == ffmpeg == fallback == why and no_frames
    assert audio_error == ''  # no audio stream: not an error; the audio experts see a silent video
    assert peak_mb < 500  # one frame is 300 MB as RGB
