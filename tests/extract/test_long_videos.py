"""Long videos (issue 22, item 3): every row is kept (1 per second for frame and clip experts), and
the memory a video takes in flight is bounded by the decode window, not by its duration. Real
FFmpeg-made videos, the object and action experts with random weights, `python -m extract` in a
child process whose peak resident memory is measured."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from extract.decode import decode_video
from extract.pool import DecodePool
from extract.sampling import Sampling, Window, plan_rows
from shared.datasets import load_manifest
from shared.media import ffmpeg_exe
from shared.store import open_store, store_path

#: small frames, model inputs and an object model with a small backbone (ResNet-18) keep a 10-minute
#: video fast; clips of 8 frames at 10 fps take most of every second's frames, as the papers'
#: 16-frame clips at 25-30 fps do
SMALL_OBJECT = ['--set', 'object.arch=timm:resnet18', '--set', 'object.feature_dim=512']
SETTINGS = ['--set', 'max_rows=600', *SMALL_OBJECT, '--set', 'object.resize=[32,32]', '--set', 'action.resize=[32]',
            '--set', 'action.input_size=32', '--set', 'action.clip_len=8']

#: runs the extraction as a child and prints its peak resident memory: RUSAGE_CHILDREN of a fresh
#: process holds only that child and its decode workers (the largest of them)
_MEASURE = ('import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; '
            'print(rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)')


def _video(path: Path, seconds: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([ffmpeg_exe(), '-y', '-v', 'error', '-f', 'lavfi', '-i',
                    f'testsrc2=size=320x180:rate=10:duration={seconds}', '-c:v', 'libx264', '-preset', 'ultrafast',
                    '-pix_fmt', 'yuv420p', str(path)], check=True, capture_output=True)


def _extract(folder: Path, features: Path, *extra: str) -> int:
    """Peak resident memory (KiB) of `python -m extract` on `folder`, with one decode worker."""
    cmd = [sys.executable, '-c', _MEASURE, sys.executable, '-m', 'extract', '--dataset', f'folder:{folder}',
           '--expert', 'object,action', '--weights', 'random', '--features-root', str(features), '--device', 'cpu',
           '--workers', '1', '--no-progress', *SETTINGS, *extra]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=Path(__file__).parents[2])
    rc, peak = out.stdout.split()[-2:]
    assert rc == '0', out.stderr[-2000:]
    return int(peak)


@pytest.mark.slow
def test_a_ten_minute_video_keeps_every_second_in_the_memory_of_a_one_minute_one(tmp_path: Path) -> None:
    short, long = tmp_path / 'short', tmp_path / 'long'
    _video(short / 'one_minute.mp4', 60)
    _video(long / 'ten_minutes.mp4', 600)
    features = tmp_path / 'features'
    peaks = {name: _extract(folder, features) for name, folder in (('short', short), ('long', long))}
    print(json.dumps({'peak_rss_mib': {k: round(v / 1024) for k, v in peaks.items()}}))
    for folder, seconds in ((short, 60), (long, 600)):
        manifest = load_manifest(f'folder:{folder}')
        for expert in ('object', 'action'):
            rows = open_store(store_path(features, manifest.name, expert), warn_random=False).read()
            n = int(rows.lengths[0])
            # a row for every second begun (the encoder may end the last frame just past the whole second)
            assert seconds <= n <= seconds + 1, f'{expert}: {n} rows for {seconds} s'
            mids = rows.timestamps[0, :seconds].mean(axis=1)
            np.testing.assert_array_less(np.abs(mids - (np.arange(seconds) + 0.5)), 0.5)  # row i: second i
            assert rows.features[0, :n].any(axis=1).all()
    assert peaks['long'] <= 1.5 * peaks['short'], peaks


def _clip(path: Path, seconds: float, audio: bool = False) -> str:
    """A small 10 fps clip, its index first (`faststart`: a cut copy still opens), a keyframe every 1.5 s."""
    path.parent.mkdir(parents=True, exist_ok=True)
    video = ['-f', 'lavfi', '-i', f'testsrc2=size=96x64:rate=10:duration={seconds}']
    tone = ['-f', 'lavfi', '-i', f'sine=frequency=440:duration={seconds}', '-c:a', 'aac'] if audio else []
    subprocess.run([ffmpeg_exe(), '-y', '-v', 'error', *video, *tone, '-c:v', 'libx264', '-pix_fmt', 'yuv420p',
                    '-g', '15', '-movflags', '+faststart', str(path)], check=True, capture_output=True)
    return str(path)


SAMPLINGS = {'f': Sampling('frames', fps=1.0), 'c': Sampling('clips', fps=1.0, clip_len=6),
             'sparse': Sampling('frames', fps=0.2)}


def test_a_row_whose_middle_is_on_a_window_boundary_is_in_exactly_one_window() -> None:
    """A slideshow frame of 2 s from 2 s to 4 s, or a clip centred on the boundary, is the next
    window's row: counted twice it would be a duplicated row, in neither a lost one."""
    stamps = np.array([[0, 2], [2, 4], [4, 5], [5, 7], [6, 8]], np.float32)  # middles 1, 3, 4.5, 6, 7
    windows = [Window(k, 3.0) for k in range(Window(0, 3.0).count(8.0))]
    assert [np.flatnonzero(w.rows(stamps, 8.0)).tolist() for w in windows] == [[0], [1, 2], [3, 4]]


@pytest.mark.parametrize('workers', [0, 1])
def test_windows_in_order_are_the_whole_video(tmp_path: Path, workers: int) -> None:
    """A video decoded 3 s at a time gives, window after window, the rows and pixels of one whole
    decode; each window holds only its own frames; the next video's windows follow in order."""
    items = [(0, _clip(tmp_path / 'a.mp4', 8)), (1, _clip(tmp_path / 'b.mp4', 1)), (2, _clip(tmp_path / 'c.mp4', 7.5))]
    with DecodePool(SAMPLINGS, workers=workers, window_s=3.0) as pool:
        windows = list(pool.imap(items))
    assert [(v.row, v.window, v.windows) for v in windows] == [
        (0, 0, 3), (0, 1, 3), (0, 2, 3), (1, 0, 1), (2, 0, 3), (2, 1, 3), (2, 2, 3)]
    for row, path in items:
        whole = decode_video(row, path, SAMPLINGS)
        parts = [v for v in windows if v.row == row]
        assert not whole.error and not any(v.error for v in parts)
        for name in SAMPLINGS:
            plan = whole.plans[name]
            np.testing.assert_array_equal(np.concatenate([v.plans[name].timestamps for v in parts]), plan.timestamps)
            np.testing.assert_array_equal(np.concatenate([v.frames[v.plans[name].index] for v in parts]),
                                          whole.frames[plan.index])
        if len(parts) > 1:  # the frames in flight: a window's, not the video's
            assert max(len(v.frames) for v in parts) < 0.5 * len(whole.frames)


@pytest.mark.slow
def test_an_extraction_by_windows_equals_one_of_whole_videos(tmp_path: Path) -> None:
    """Frame, clip, per-video (face) and audio experts through the runner: stores made 2 s at a time
    hold what stores made of whole videos hold."""
    from extract.run import main
    from tests.extract.conftest import TINY

    videos = tmp_path / 'videos'
    for name, seconds in (('a', 5), ('b', 1), ('c', 4.5)):
        _clip(videos / f'{name}.mp4', seconds, audio=True)
    stores = {}
    for window in ('2', '0'):
        features = tmp_path / f'features_{window}'
        assert main(['--dataset', f'folder:{videos}', '--features-root', str(features), '--expert',
                     'object,action,face,audio', *TINY, *SMALL_OBJECT, '--workers', '1', '--no-progress',
                     '--decode-window', window]) == 0
        name = load_manifest(f'folder:{videos}').name
        stores[window] = {e: open_store(store_path(features, name, e), warn_random=False).read()
                          for e in ('object', 'action', 'face', 'audio')}
    for expert, got in stores['2'].items():
        want = stores['0'][expert]
        np.testing.assert_array_equal(got.lengths, want.lengths)
        np.testing.assert_array_equal(got.status, want.status)
        np.testing.assert_array_equal(got.timestamps, want.timestamps)
        np.testing.assert_allclose(got.features.astype(np.float32), want.features.astype(np.float32), atol=2e-3)
    assert list(stores['2']['object'].lengths) == [5, 1, 5]


def test_howto100m_keeps_every_second_of_an_hour_and_other_datasets_keep_their_rows(tmp_path: Path) -> None:
    """The `howto100m` preset sets every expert's T (max_rows) to an hour of 1-per-second rows;
    the datasets whose stores and results exist keep the experts' own T; --set still wins."""
    from extract.presets import HOWTO100M_MAX_ROWS
    from extract.run import RunOptions, build_experts

    def rows(dataset: str, **settings: object) -> dict[str, int]:
        opts = RunOptions(dataset=dataset, experts=['object', 'action', 'audio'], data_root=tmp_path,
                          settings=dict(settings))
        return {e.name: e.cfg.max_rows for e in build_experts(opts)}

    assert HOWTO100M_MAX_ROWS == 3600
    assert rows('howto100m') == {'object': 3600, 'action': 3600, 'audio': 3600}
    assert rows('msrvtt') == rows('demo') == {'object': 128, 'action': 128, 'audio': 1024}
    assert rows('howto100m', **{'action.max_rows': 600})['action'] == 600
    frame_times = np.stack([np.arange(7200) / 2, np.arange(1, 7201) / 2], axis=1)  # an hour at 2 fps
    index, stamps = plan_rows(frame_times, Sampling('frames', fps=1.0, max_rows=HOWTO100M_MAX_ROWS))
    np.testing.assert_array_equal(stamps[:, 0], np.arange(3600) + 0.5)  # second i: the frame shown at i + 0.5 s


def test_a_truncated_long_video_keeps_the_rows_before_its_end_in_windows(tmp_path: Path) -> None:
    """The windows past the point where a cut file stops have no rows, not an error: the video's
    rows are those a whole decode keeps."""
    data = Path(_clip(tmp_path / 'whole.mp4', 8)).read_bytes()
    cut = tmp_path / 'cut.mp4'
    cut.write_bytes(data[: len(data) * 2 // 5])
    whole = decode_video(0, str(cut), SAMPLINGS)
    with DecodePool(SAMPLINGS, workers=0, window_s=2.0) as pool:
        parts = list(pool.imap([(0, str(cut))]))
    assert not whole.error and not any(v.error for v in parts) and len(parts) > 1
    for name in SAMPLINGS:
        got = np.concatenate([v.plans[name].timestamps for v in parts])
        np.testing.assert_array_equal(got, whole.plans[name].timestamps)
    assert len(whole.plans['f'].timestamps) < 8


def test_a_videos_decoding_note_is_said_once_not_once_a_window(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """An MPEG-TS file goes to FFmpeg in each of its decode windows; the warning that says so comes once."""
    from extract.run import main
    from tests.extract.conftest import TINY

    videos = tmp_path / 'videos'
    _clip(videos / 'a.ts', 4)
    assert main(['--dataset', f'folder:{videos}', '--features-root', str(tmp_path / 'f'), '--expert', 'object',
                 *TINY, *SMALL_OBJECT, '--workers', '0', '--no-progress', '--decode-window', '1']) == 0
    said = [r.getMessage() for r in caplog.records if 'MPEG-TS' in r.getMessage()]
    assert said == ['a.ts: MPEG-TS, which decord misreads: decoded with FFmpeg'], said
