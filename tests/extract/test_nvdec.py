"""NVDEC decoding gives the decord path's rows: same frames, same indices, same timestamps.

The GPU tests run where PyNvVideoCodec and a CUDA device are present (skipped elsewhere). decord
runs in a worker process there: the two libraries' FFmpeg builds must not share a process. Other
tests load decord into pytest's process, so each GPU test runs in a pytest process of its own.
"""
from __future__ import annotations

import os
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from extract.decode import read_frame_times
from extract.decoders import choose_decoder, nvdec_available
from extract.nvdec import NvdecPool, display_rotation
from extract.pool import DecodePool
from extract.sampling import DecodedVideo, Sampling, Window
from tests.conftest import IN_OWN_PROCESS

gpu = pytest.mark.skipif(bool(nvdec_available()), reason=f'NVDEC unavailable: {nvdec_available()}')

SAMPLINGS = {'f': Sampling('frames', fps=1.0, short_side=64), 'c': Sampling('clips', fps=2.0, clip_len=4, short_side=64)}
DECODABLE = ['good.mp4', 'vfr.mp4', 'hevc.mp4', 'vp9.webm', 'mpeg4.avi', 'rotated.mp4', 'odd_size.mp4',
             'one_frame.mp4', 'no_audio.mp4']
BAD = ['zero.mp4', 'text.mp4', 'missing.mp4']


def test_rotation_is_read_from_the_track_header(odd_videos: Path) -> None:
    assert display_rotation(odd_videos / 'rotated.mp4') == 270  # -display_rotation 90: 90 degrees anticlockwise
    assert display_rotation(odd_videos / 'good.mp4') == 0
    assert display_rotation(odd_videos / 'vp9.webm') == 0 and display_rotation(odd_videos / 'text.mp4') == 0


def test_decord_and_pynvvideocodec_never_share_a_process(odd_videos: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading one beside the other is refused with a reason: on a GPU, PyNvVideoCodec segfaulted
    in a process where decord had read a file (no GPU is needed to check the refusals)."""
    monkeypatch.setitem(sys.modules, 'PyNvVideoCodec', types.ModuleType('PyNvVideoCodec'))
    with pytest.raises(RuntimeError, match='PyNvVideoCodec is loaded in this process, and decord crashes beside it'):
        read_frame_times(str(odd_videos / 'good.mp4'))
    monkeypatch.delitem(sys.modules, 'PyNvVideoCodec')
    monkeypatch.setitem(sys.modules, 'decord', types.ModuleType('decord'))
    with pytest.raises(RuntimeError, match='decord is loaded in this process, and PyNvVideoCodec crashes beside it'):
        NvdecPool(SAMPLINGS, 'cuda')  # refused before it touches the device


@pytest.mark.own_process
def test_own_process_tests_run_apart_from_decord() -> None:
    """The GPU tests' isolation (tests/conftest.py): this body runs in a child pytest process,
    which has not loaded decord, whatever the tests before it loaded into this one."""
    assert os.environ.get(IN_OWN_PROCESS) == '1'
    assert 'decord' not in sys.modules


def test_auto_stays_on_the_cpu_without_a_gpu() -> None:
    assert choose_decoder('auto', 'cpu')[0] == 'decord'
    with pytest.raises(ValueError, match='GPU'):
        choose_decoder('nvdec', 'cpu')


def test_auto_judges_the_videos_by_the_median_of_a_few(odd_videos: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    from extract.decoders import spread
    from shared.media import ffmpeg_exe

    monkeypatch.setattr('extract.decoders.nvdec_available', lambda: '')  # as on a GPU with PyNvVideoCodec
    big, small = str(tmp_path / 'big.mp4'), str(odd_videos / 'good.mp4')
    subprocess.run([ffmpeg_exe(), '-v', 'error', '-f', 'lavfi', '-i', 'testsrc2=size=1280x720:rate=25:duration=0.2',
                    '-c:v', 'libx264', '-pix_fmt', 'yuv420p', big], check=True)
    assert choose_decoder('auto', 'cuda', big) == ('nvdec', '1280x720 videos: NVDEC from 921600 pixels')
    assert choose_decoder('auto', 'cuda', [small])[0] == 'decord'
    decoder, why = choose_decoder('auto', 'cuda', [big, str(odd_videos / 'text.mp4'), small, small])
    assert decoder == 'decord' and why.startswith('320x240 videos (median of 3 probed)')  # text.mp4: not probed
    assert choose_decoder('auto', 'cuda', [small], clips=True)[0] == 'nvdec'
    not_probed = choose_decoder('auto', 'cuda', [str(odd_videos / 'text.mp4')])
    assert not_probed == ('decord', 'no sampled video could be probed')
    assert spread(list(range(10))) == [0, 2, 4, 7, 9] and spread([1, 2]) == [1, 2]


def test_frame_index_processes_survive_a_crash_and_a_hang(odd_videos: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The NVDEC path's decord timing processes (no GPU needed for this part): a file that kills
    or hangs one gets a reason, and the next file is indexed by fresh processes."""
    from extract import pool as pool_module
    from tests.extract._crash import index_or_crash

    monkeypatch.setattr(pool_module, 'TIMEOUT_S_PER_MB', 0.0)
    good = str(odd_videos / 'good.mp4')
    for name in ('crash.mp4', 'hang.mp4'):
        (tmp_path / name).write_bytes((odd_videos / 'good.mp4').read_bytes())
    pool = NvdecPool.__new__(NvdecPool)  # the timing side only: __init__ needs a CUDA device
    pool._timing = DecodePool({}, workers=1, timeout=2.0, work=index_or_crash)
    with pool._timing:
        assert pool._frame_times(str(tmp_path / 'crash.mp4')) == 'the decoder process crashed on this video'
        np.testing.assert_array_equal(pool._frame_times(good), read_frame_times(good))
        assert pool._frame_times(str(tmp_path / 'hang.mp4')).startswith('decoding took longer than 2 s')
        np.testing.assert_array_equal(pool._frame_times(good), read_frame_times(good))
        assert pool._frame_times(str(odd_videos / 'text.mp4')).startswith('cannot open video')


def test_a_decode_thread_that_hangs_is_left_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    """The NVDEC pool's threads (no GPU needed for this part): a file whose decode never returns
    fails after the time limit, the next files are decoded by a new thread, in order, and the run
    stops once more than MAX_LEFT_BEHIND threads hung. The hung threads never block the exit."""
    import threading

    from extract import nvdec
    from extract import pool as pool_module

    monkeypatch.setattr(pool_module, 'TIMEOUT_S_PER_MB', 0.0)
    release = threading.Event()

    def fake_decode(row: int, path: str, window: Window) -> DecodedVideo:
        if path.startswith('hang'):
            release.wait()
        return DecodedVideo(row, note=f'{path} in {threading.current_thread().name}')

    pool = NvdecPool.__new__(NvdecPool)  # the threads only: __init__ needs a CUDA device
    pool.threads, pool.depth, pool.max_bytes, pool._pool, pool._left_behind = 2, 4, 1 << 30, None, 0
    pool.window_s = 30.0
    pool._cpu, pool._gpu_or_cpu = DecodePool({}, workers=1, timeout=0.2), fake_decode  # a limit of 3 x 0.2 s
    names = ['a', 'hang1', 'b', 'c', 'hang2', 'd', 'hang3', 'e']
    got = pool.imap(list(enumerate(names)))
    try:
        first = [next(got) for _ in range(6)]
        assert [v.row for v in first] == list(range(6))
        assert [bool(v.error) for v in first] == [False, True, False, False, True, False]
        assert first[1].error == 'NVDEC took longer than 1 s on this file and was left behind (it may hang on it)'
        assert pool._left_behind == 2 and len(pool._pool._threads) == 2  # replaced
        with pytest.raises(nvdec.DecoderStalled, match='NVDEC hung on 3 files .*hang3.*--decoder decord'):
            next(got)
        t0 = time.perf_counter()
        pool._pool.shutdown(wait=False)  # the two live threads stop; the three hung ones are not waited for
        assert time.perf_counter() - t0 < 5
    finally:
        release.set()


@gpu
@pytest.mark.own_process
def test_nvdec_rows_equal_decord_rows(odd_videos: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr('extract.nvdec.PIECE', 5)  # several pieces per video, the last one short
    items = [(i, str(odd_videos / n)) for i, n in enumerate(DECODABLE)]
    with DecodePool(SAMPLINGS, workers=1) as pool:
        ref = list(pool.imap(items))
    with NvdecPool(SAMPLINGS, 'cuda', threads=2) as pool:
        got = list(pool.imap(items))
    # NVDEC lacks H.264 4:4:4 (odd_size.mp4); any other file handed to the CPU is a gap in the GPU path
    on_cpu = {n: g.note for n, g in zip(DECODABLE, got) if not torch.is_tensor(g.frames)}
    assert set(on_cpu) == {'odd_size.mp4'}, on_cpu
    for name, r, g in zip(DECODABLE, ref, got):
        assert not r.error and not g.error, (name, r.error, g.error)
        frames = g.frames.cpu().numpy() if torch.is_tensor(g.frames) else g.frames
        assert frames.shape == r.frames.shape, name
        assert abs(g.duration - r.duration) < 1e-3, name
        for e in SAMPLINGS:
            np.testing.assert_array_equal(g.plans[e].index, r.plans[e].index, err_msg=name)
            np.testing.assert_allclose(g.plans[e].timestamps, r.plans[e].timestamps, atol=1e-3, err_msg=name)
        # the same frames: each is closer to decord's frame of that index than to its neighbours.
        # Colour conversion and resize filters differ by a few levels (6.6 at this size on an H100);
        # MPEG-4 Part 2 differs more (12.6; its inverse DCT is not bit-exact, a likely reason)
        a, b = frames.astype(np.int16), r.frames.astype(np.int16)
        same = np.abs(a - b).mean()
        assert same < (16.0 if name == 'mpeg4.avi' else 9.0), (name, same)
        if len(a) > 1:
            assert same < min(np.abs(a[1:] - b[:-1]).mean(), np.abs(a[:-1] - b[1:]).mean()), name


@gpu
@pytest.mark.own_process
def test_nvdec_fails_bad_files_with_reasons_and_keeps_order(odd_videos: Path) -> None:
    names = ['good.mp4', *BAD, 'truncated.mp4', 'hevc.mp4']
    with NvdecPool(SAMPLINGS, 'cuda', threads=2) as pool:
        out = list(pool.imap([(i, str(odd_videos / n)) for i, n in enumerate(names)]))
    assert [v.row for v in out] == list(range(len(names)))
    assert not out[0].error and not out[-1].error
    assert 'empty file' in out[1].error and out[2].error and 'file not found' in out[3].error
    assert out[4].error or len(out[4].frames) > 0  # truncated: failed, or the frames before the break


@gpu
@pytest.mark.own_process
def test_extraction_with_nvdec_writes_decord_timestamps(odd_videos: Path, tmp_path: Path) -> None:
    from extract.run import RunOptions, run
    from shared.datasets.folder import folder_name
    from shared.store import DONE, open_store, store_path

    data = tmp_path / 'videos'
    data.mkdir()
    for n in [*DECODABLE, 'zero.mp4', 'text.mp4']:
        (data / n).write_bytes((odd_videos / n).read_bytes())
    stores = {}
    for decoder in ('decord', 'nvdec'):
        opts = RunOptions(dataset=f'folder:{data}', experts=['object'], features_root=tmp_path / decoder,
                          device='cuda', decoder=decoder, weights='random', workers=2, progress=False,
                          settings={'resize': [40], 'input_size': 32})
        assert run(opts) == 0
        stores[decoder] = open_store(store_path(tmp_path / decoder, folder_name(data), 'object'),
                                     warn_random=False).read()
    a, b = stores['decord'], stores['nvdec']
    np.testing.assert_array_equal(a.status, b.status)
    np.testing.assert_array_equal(a.lengths, b.lengths)
    np.testing.assert_allclose(a.timestamps, b.timestamps, atol=1e-3)
    assert (a.status == DONE).sum() == len(DECODABLE)
