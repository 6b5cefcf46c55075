"""Extraction end to end: real demo videos, real models (random weights), real stores, real kills."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from extract.decode import decode_video
from extract.experts import create_expert, expert_names, resolve_expert_names
from extract.run import main
from shared.datasets.folder import folder_name
from shared.media import ffmpeg_exe
from shared.store import DONE, FAILED, check_store, open_store
from tests.extract.conftest import TINY

ARRAYS = ('video_ids', 'features', 'timestamps', 'lengths', 'available', 'status', 'errors')
VISUAL = ('object', 'action', 'scene')


def _arrays(path: Path) -> dict[str, np.ndarray]:
    g = zarr.open_group(str(path), mode='r')
    return {k: g[k][:] for k in (*ARRAYS, 'tokens') if k in g}


def _same(a: Path, b: Path) -> None:
    x, y = _arrays(a), _arrays(b)
    assert x.keys() == y.keys()
    for k in x:
        np.testing.assert_array_equal(x[k], y[k], err_msg=f'{a} vs {b}: {k}')


def _run(data_root: Path, features: Path, expert: str, *extra: str, dataset: str = 'demo') -> int:
    return main(['--dataset', dataset, '--data-root', str(data_root), '--features-root', str(features), '--expert',
                 expert, *TINY, '--workers', '1', '--chunk-size', '2', '--no-progress', *extra])


@pytest.mark.slow
def test_each_visual_expert_and_all_in_one_pass(small_demo: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    root = small_demo.parent
    names = resolve_expert_names('all')
    assert names[:3] == list(VISUAL) and len(names) == 7
    for name in names:
        assert _run(root, tmp_path / 'single', name) == 0
        report = check_store(tmp_path / 'single' / 'demo' / f'{name}.zarr')
        assert report.exit_code == 0, report.summary()
        if name not in VISUAL:
            continue
        assert report.counts['done'] == 8 and report.available == 8
        store = open_store(tmp_path / 'single' / 'demo' / f'{name}.zarr', warn_random=False)
        assert store.attrs['weights'] == 'random' and store.attrs['sampling']['fps'] == 1.0
        rows = store.read()
        data = json.loads((small_demo / 'demo.json').read_text())
        for i, v in enumerate(data['videos']):  # one row per second, inside the video
            assert rows.lengths[i] == int(np.ceil(v['duration'] - 1e-6))
            assert 0 <= rows.timestamps[i, 0, 0] and rows.timestamps[i, rows.lengths[i] - 1, 1] <= v['duration'] + 1e-3
    assert _run(root, tmp_path / 'all', 'all') == 0
    for name in names:  # one decode feeding seven experts gives what seven separate runs give
        _same(tmp_path / 'all' / 'demo' / f'{name}.zarr', tmp_path / 'single' / 'demo' / f'{name}.zarr')
    # shards own whole chunks: shard 1 then shard 0 of 2 give the single-process arrays
    assert _run(root, tmp_path / 'sharded', 'scene', '--shard', '1', '--num-shards', '2') == 0
    assert check_store(tmp_path / 'sharded' / 'demo' / 'scene.zarr').exit_code == 2
    assert _run(root, tmp_path / 'sharded', 'scene', '--shard', '0', '--num-shards', '2') == 0
    _same(tmp_path / 'sharded' / 'demo' / 'scene.zarr', tmp_path / 'single' / 'demo' / 'scene.zarr')
    assert (tmp_path / 'sharded' / 'demo' / 'scene.zarr' / 'zarr.json').read_text().count('consolidated') > 0
    capsys.readouterr()  # more shards than chunks: the last shards have nothing to do, and say why
    assert _run(root, tmp_path / 'sharded', 'scene', '--shard', '5', '--num-shards', '6') == 0
    assert 'shard 5/6 (no chunks)): the store has 4 chunks, fewer than the 6 shards' in capsys.readouterr().out


_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')


@pytest.mark.parametrize('device,graph', [('cpu', False), pytest.param('cuda', False, marks=_CUDA),
                                          pytest.param('cuda', True, marks=_CUDA)])
def test_batched_features_belong_to_their_videos(device: str, graph: bool, small_demo: Path, tmp_path: Path) -> None:
    """Batches of 5 rows cut across videos, chunks of 2 videos end in partial batches, and each
    chunk's results are collected while the next is fed (on CUDA: frames uploaded on a stream of
    their own, results copied off asynchronously, optionally CUDA graphs): every stored row is still
    the feature of its own video's frame or clip, as the expert computes it for that video alone."""
    names = ('scene', 'action.r2plus1d_18')
    assert _run(small_demo.parent, tmp_path, ','.join(names), '--batch-size', '5', '--device', device,
                '--decoder', 'decord', '--set', f'cuda_graph={str(graph).lower()}') == 0
    # sums differ with the batch in the last bits; bf16 on CUDA: a few units in its last place (a bf16 copy of
    # these random models on the CPU stays within 0.3x of the CUDA tolerance of fp32: scene 0.015 at most)
    tol = dict(rtol=0, atol=2e-3) if device == 'cpu' else dict(rtol=3e-2, atol=3e-2)
    for name in names:
        expert = create_expert(name, weights='random', resize=[40], input_size=32, clip_len=6).load(device)
        stored = open_store(tmp_path / 'demo' / f'{name}.zarr', warn_random=False).read()
        for i, path in enumerate(sorted((small_demo / 'videos').glob('*.mp4'))):
            video = decode_video(i, str(path), {name: expert.cfg.sampling_spec()})
            plan = video.plans[name]
            rows = video.frames[plan.index[:, 0]] if expert.cfg.sampling == 'frames' else video.frames[plan.index]
            n = int(stored.lengths[i])
            assert stored.video_ids[i] == path.stem and n == len(plan.index)
            expected = expert.extract(rows)  # this video alone, in one batch
            np.testing.assert_allclose(stored.features[i, :n], expected, **tol, err_msg=f'{name}, {path.name}')
            others = stored.features[(i + 1) % len(stored.video_ids), :n]
            assert not np.allclose(others, expected, **tol)  # another video's rows would not pass
            np.testing.assert_array_equal(stored.timestamps[i, :n], plan.timestamps)


@pytest.mark.parametrize('name', ['scene', 'action.r2plus1d_18'])
def test_models_run_channels_last_on_the_cpu_with_unchanged_features(name: str) -> None:
    """channels_last (faster with oneDNN) changes the memory layout, not the features."""
    import torch

    expert = create_expert(name, weights='random', resize=[40], input_size=32, clip_len=6).load('cpu')
    conv = next(m for m in expert.model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d)))
    fmt = torch.channels_last_3d if conv.weight.ndim == 5 else torch.channels_last
    assert conv.weight.is_contiguous(memory_format=fmt) and not conv.weight.is_contiguous()
    rows = torch.randint(0, 256, (3, 6, 48, 64, 3) if expert.cfg.sampling == 'clips' else (3, 48, 64, 3),
                         dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    x = expert.preprocess(rows)
    got = expert.forward(x)
    with torch.inference_mode():
        plain = expert.model.to(memory_format=torch.contiguous_format)(x.contiguous()).float()
    torch.testing.assert_close(got, plain, rtol=1e-4, atol=1e-5)


def test_rows_are_preprocessed_a_batch_at_a_time() -> None:
    """A long video cut into many rows never has all of them preprocessed (as floats) at once."""
    from extract.run import _Batcher

    expert = create_expert('scene', weights='random', resize=[40], input_size=32, batch_size=3).load('cpu')
    seen: list[int] = []
    preprocess = expert.preprocess
    expert.preprocess = lambda rows: (seen.append(len(rows)), preprocess(rows))[1]  # type: ignore[method-assign]
    rows = torch.from_numpy(np.random.default_rng(0).integers(0, 255, (7, 48, 64, 3), dtype=np.uint8))
    batcher = _Batcher(expert)
    batcher.add(5, rows)
    batcher.launch()
    feats = batcher.collect(range(4, 8))[5]
    assert seen == [3, 3, 1]
    np.testing.assert_allclose(feats, expert.forward(preprocess(rows)).numpy(), rtol=0, atol=2e-3)


def test_the_device_gets_a_batch_of_rows_at_a_time_not_the_video(small_demo: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Decoded frames stay on the host: each batch's rows are gathered there and copied to the
    device a batch at a time, so the device never holds a whole video's frames (#19 review 1: a
    128-clip 720p video's frames are 5.6 GB)."""
    import math

    from extract import run as run_module

    copied: list[tuple[int, ...]] = []  # shapes of the uint8 frame tensors copied to the device
    real = run_module._Uploader.__call__

    def recording(self, host):
        if host.dtype == torch.uint8:
            copied.append(tuple(host.shape))
        return real(self, host)

    monkeypatch.setattr(run_module._Uploader, '__call__', recording)
    data = tmp_path / 'videos'
    data.mkdir()
    for path in sorted((small_demo / 'videos').glob('*.mp4'))[:2]:
        shutil.copy(path, data / path.name)
    assert _run(tmp_path, tmp_path / 'f', 'action.r2plus1d_18', '--batch-size', '2', '--device', 'cpu',
                '--decoder', 'decord', dataset=f'folder:{data}') == 0
    frames = [math.prod(shape[:-3]) for shape in copied]
    assert copied and max(frames) <= 2 * 6, copied  # 2 clips of 6 frames (TINY) at most


def test_preprocessing_converts_a_bounded_number_of_frames_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Floats at native size are 12 bytes a pixel: a batch of clips is converted and resized
    `PREPROCESS_FRAMES` frames at a time, with the same result as all at once."""
    from extract.experts import _base

    expert = create_expert('action.r2plus1d_18', weights='random', resize=[40], input_size=32, clip_len=6)
    rows = torch.from_numpy(np.random.default_rng(0).integers(0, 255, (25, 6, 48, 64, 3), dtype=np.uint8))
    monkeypatch.setattr(_base, 'PREPROCESS_FRAMES', 1000)
    whole = expert.preprocess(rows)  # all 150 frames at once
    sizes: list[int] = []
    real = _base.F.interpolate
    monkeypatch.setattr(_base.F, 'interpolate', lambda x, *a, **k: (sizes.append(len(x)), real(x, *a, **k))[1])
    monkeypatch.setattr(_base, 'PREPROCESS_FRAMES', 64)
    got = expert.preprocess(rows)
    assert sizes == [64, 64, 22]
    torch.testing.assert_close(got, whole, rtol=0, atol=0)
    assert got.shape == (25, 3, 6, 32, 32)


def test_a_video_without_rows_leaves_the_batches_of_the_next_chunk_whole() -> None:
    from extract.run import _Batcher

    expert = create_expert('scene', weights='random', resize=[40], input_size=32, batch_size=4).load('cpu')
    rows = torch.from_numpy(np.random.default_rng(0).integers(0, 255, (3, 48, 64, 3), dtype=np.uint8))
    batcher = _Batcher(expert)
    batcher.add(0, rows)
    batcher.add(1, rows[:0])  # a video cut short before its first whole row
    batcher.launch()
    first = batcher.collect(range(0, 2))
    assert first[0].shape == (3, expert.cfg.feature_dim) and first[1].shape == (0, expert.cfg.feature_dim)
    batcher.add(2, rows)  # the next chunk
    batcher.launch()
    np.testing.assert_array_equal(batcher.collect(range(2, 4))[2], first[0])


@_CUDA
def test_cuda_graph_forward_equals_eager() -> None:
    """A captured forward pass gives the eager one's features, for a full and a padded batch."""
    for name, shape in (('scene', (8, 3, 32, 32)), ('action.r2plus1d_18', (4, 3, 6, 32, 32))):
        eager = create_expert(name, weights='random', batch_size=shape[0]).load('cuda')
        graphed = create_expert(name, weights='random', batch_size=shape[0], cuda_graph=True).load('cuda')
        x = torch.randn(shape, device='cuda')
        for rows in (x, x[:3]):
            np.testing.assert_allclose(graphed.forward(rows).cpu().numpy(), eager.forward(rows).cpu().numpy(),
                                       rtol=3e-2, atol=3e-2)  # bf16: a few units in the last place
        assert [g for g in graphed._graphs.values() if g is not None], 'the forward pass was not captured'


def _signal_after_first_chunk(proc: subprocess.Popen, store: Path, sig: int) -> None:
    """Send `sig` once the run has finished a chunk (read from the status itself: zarr writes through
    a temporary file beside the chunk)."""
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (store / 'status' / 'c' / '0').is_file() and (open_store(store, warn_random=False).status() != 0).any():
            proc.send_signal(sig)
            return
        time.sleep(0.05)


def test_a_full_disk_is_one_line_and_the_rerun_continues(small_demo: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from shared.store import ExpertStore

    real, calls = ExpertStore.write_chunk, []

    def full_after_one(self: ExpertStore, chunk: int, data: object) -> None:
        calls.append(chunk)
        if len(calls) > 1:  # the disk fills up after the first chunk
            raise OSError(errno.ENOSPC, 'No space left on device')
        real(self, chunk, data)

    monkeypatch.setattr(ExpertStore, 'write_chunk', full_after_one)
    assert _run(small_demo.parent, tmp_path / 'full', 'scene') == 1
    err = capsys.readouterr().err
    assert 'error: No space left on device; finished chunks are saved. Free some space' in err
    assert 'Traceback' not in err
    store = tmp_path / 'full' / 'demo' / 'scene.zarr'
    assert check_store(store).exit_code == 2  # valid, unfinished
    monkeypatch.setattr(ExpertStore, 'write_chunk', real)
    # as if made by an earlier version, before the setting 'mean' existed: its default is assumed
    import zarr

    group = zarr.open_group(str(store), mode='r+')
    group.attrs['config'] = {k: v for k, v in group.attrs['config'].items() if k != 'mean'}
    assert _run(small_demo.parent, tmp_path / 'full', 'scene') == 0
    assert _run(small_demo.parent, tmp_path / 'whole', 'scene') == 0
    _same(store, tmp_path / 'whole' / 'demo' / 'scene.zarr')


def test_nan_or_huge_features_fail_their_video_not_the_run(small_demo: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Features a store cannot hold (NaN, inf, beyond float16) used to stop the run at its chunk,
    at every rerun; now that video fails with the reason."""
    from extract.run import _Batcher

    real = _Batcher.collect

    def poisoned(self: _Batcher, rows: object) -> dict[int, np.ndarray]:
        out = real(self, rows)
        if 0 in out:
            out[0][0, 0] = np.nan
        if 3 in out:
            out[3][-1, 1] = 1e6
        return out

    monkeypatch.setattr(_Batcher, 'collect', poisoned)
    assert _run(small_demo.parent, tmp_path, 'scene') == 0
    rows = open_store(tmp_path / 'demo' / 'scene.zarr', warn_random=False).read()
    assert rows.status[0] == rows.status[3] == FAILED and (rows.status[[1, 2, 4]] == DONE).all()
    assert rows.errors[0] == 'the model gave NaN or inf features'
    assert rows.errors[3] == 'features beyond the range of float16, which the store holds (largest |value| 1e+06)'
    assert not rows.available[[0, 3]].any() and rows.available[[1, 2, 4]].all()
    out = capsys.readouterr().out  # the summary counts what was stored
    assert ': the model gave NaN or inf features' in out and ' failed     2 ' in out, out


def _tiny_video(path: Path) -> Path:
    """Issue 18 item 4's file: 16x16, 1 fps, 10 s of H.264 (decord takes its row padding for channels)."""
    from tests.extract.conftest import _ff

    _ff('-f', 'lavfi', '-i', 'testsrc=size=16x16:rate=1:duration=10', '-c:v', 'libx264', '-pix_fmt', 'yuv420p',
        str(path))
    return path


def test_a_batch_an_expert_fails_on_fails_only_its_bad_video(tmp_path: Path) -> None:
    """Frames of the 16x16 file as decord gave them, (16, 16, 6), share a batch with another video's
    frames: the batch is redone a video at a time, the bad video fails with the expert's reason and
    the other gets the features it gets alone."""
    import decord

    from extract.run import _Batcher

    vr = decord.VideoReader(str(_tiny_video(tmp_path / 'tiny.mp4')), num_threads=1)
    bad = torch.from_numpy(np.stack([vr[i].asnumpy() for i in range(10)]))
    if bad.shape[-1] == 3:
        pytest.skip("this decord's frames of a 16-pixel-wide file are RGB")
    good = torch.from_numpy(np.random.default_rng(0).integers(0, 255, (5, 48, 64, 3), dtype=np.uint8))
    expert = create_expert('scene', weights='random', resize=[40], input_size=32, batch_size=8).load('cpu')
    batcher = _Batcher(expert)
    for row, rows in enumerate((good[:3], bad, good)):  # batches: good[:3] + bad[:5], bad[5:] + good[:3], good[3:]
        batcher.add(row, rows)
    batcher.launch()
    feats, failed = batcher.collect(range(3)), batcher.failures(range(3))
    assert list(failed) == [1] and failed[1].startswith('scene failed: RuntimeError: The size of tensor a (6)')
    alone = expert.extract(good.numpy())
    np.testing.assert_allclose(feats[0], alone[:3], rtol=0, atol=2e-3)
    np.testing.assert_allclose(feats[2], alone, rtol=0, atol=2e-3)
    assert batcher.failures(range(3)) == {}  # handed over once


@pytest.mark.slow
def test_a_video_an_expert_fails_on_is_failed_and_retried_not_the_run(small_demo: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The 16x16 file used to stop every extraction of its dataset. With decord's padded frames let
    through (the decoder as it was before it sent them to FFmpeg), the run still finishes: that video
    is failed with the reason, its batch's other videos are done, and --retry-failed redoes it."""
    from extract import decode

    data = tmp_path / 'videos'
    data.mkdir()
    for path in sorted((small_demo / 'videos').glob('*.mp4'))[:3]:
        shutil.copy(path, data / path.name)
    _tiny_video(data / 'tiny.mp4')
    monkeypatch.setattr(decode, '_rgb_size', lambda vr: tuple(vr[0].shape[:2]))
    # decoded in this process (--workers 0); one chunk, rows of every video in shared batches
    args = ('scene', '--workers', '0', '--chunk-size', '4', '--batch-size', '8')
    assert _run(tmp_path, tmp_path / 'features', *args, dataset=f'folder:{data}') == 0
    store = open_store(tmp_path / 'features' / folder_name(data) / 'scene.zarr', warn_random=False)
    rows = store.read()
    tiny = list(rows.video_ids).index('tiny.mp4')
    if rows.status[tiny] == DONE:
        pytest.skip("this decord's frames of a 16-pixel-wide file are RGB")
    assert rows.status[tiny] == FAILED and 'scene failed: RuntimeError: The size of tensor a (6)' in rows.errors[tiny]
    others = [i for i in range(4) if i != tiny]
    assert (rows.status[others] == DONE).all() and rows.available[others].all()
    monkeypatch.undo()
    assert _run(tmp_path, tmp_path / 'features', *args, '--retry-failed', dataset=f'folder:{data}') == 0
    after = open_store(store.path, warn_random=False).read()
    assert after.status[tiny] == DONE and after.lengths[tiny] == 10 and after.available[tiny]
    width = rows.features.shape[1]  # a read is padded to its longest video: tiny's 10 rows widen this one
    np.testing.assert_array_equal(after.features[others, :width], rows.features[others])
    assert not after.features[others, width:].any() and (after.lengths[others] == rows.lengths[others]).all()
    assert check_store(store.path).exit_code == 0


#: object features large enough that a chunk takes a while: the kill tests' settings
HEAVY = ['--set', 'resize=[160]', '--set', 'input_size=160', '--weights', 'random', '--workers', '1', '--no-progress']


@pytest.fixture(scope='module')
def whole_object_store(small_demo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `HEAVY` object store of the small demo extracted without a kill, in 2-video chunks: the
    reference of both layouts' killed runs (a store's arrays do not depend on its chunk layout)."""
    features = tmp_path_factory.mktemp('whole')
    assert main(['--dataset', 'demo', '--data-root', str(small_demo.parent), '--features-root', str(features),
                 '--expert', 'object', *HEAVY, '--chunk-size', '2']) == 0
    return features / 'demo' / 'object.zarr'


@pytest.mark.slow
@pytest.mark.parametrize('layout', [['--chunk-size', '2'], ['--chunk-size', '1', '--chunks-per-shard', '2']],
                         ids=['chunks', 'shards'])
def test_killed_extraction_resumes_to_identical_arrays(small_demo: Path, tmp_path: Path, python: str,
                                                     subprocess_env: dict, repo_root: Path, layout: list[str],
                                                     capsys: pytest.CaptureFixture, whole_object_store: Path) -> None:
    """Issue 22 item 3 for the sharded layout: shard files of two 1-video chunks are the units of
    work; a kill loses only whole units in flight and the rerun writes the same arrays as a run
    never killed. The kill is of a process of its own; the rerun, as any later command, runs here
    (no second torch start)."""
    root = small_demo.parent
    heavy = [*HEAVY, *layout]
    args = ['--dataset', 'demo', '--data-root', str(root), '--features-root', str(tmp_path / 'killed'),
            '--expert', 'object', *heavy]
    proc = subprocess.Popen([python, '-m', 'extract', *args], cwd=repo_root, env=subprocess_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    store = tmp_path / 'killed' / 'demo' / 'object.zarr'
    _signal_after_first_chunk(proc, store, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, 'the run ended before it could be killed midway'
    assert check_store(store).exit_code == 2
    opened = open_store(store, warn_random=False)
    assert opened.unit_size == 2 and zarr.open_group(str(store), mode='r')['status'].shards == (
        (2,) if '--chunks-per-shard' in layout else None)
    done_before = int((opened.status() != 0).sum())
    assert 0 < done_before < 8 and done_before % 2 == 0  # whole units only
    capsys.readouterr()
    assert main(args) == 0
    assert f'{8 - done_before} videos' in capsys.readouterr().out  # only the unfinished chunks were redone
    _same(store, whole_object_store)
    assert check_store(store).exit_code == 0
    assert len(os.listdir(store / 'status' / 'c')) == 8 // opened.unit_size  # a status file per unit


@pytest.mark.slow
def test_sigterm_stops_cleanly_with_whole_chunks(small_demo: Path, tmp_path: Path, python: str,
                                                 subprocess_env: dict, repo_root: Path) -> None:
    """A preempted job (SIGTERM, as SLURM sends) exits 130 and says how to continue; every chunk is
    either finished or untouched, and the chunks computed before the signal are written."""
    cmd = [python, '-m', 'extract', '--dataset', 'demo', '--data-root', str(small_demo.parent), '--features-root',
           str(tmp_path), '--expert', 'object', '--set', 'resize=[160]', '--set', 'input_size=160', '--weights',
           'random', '--workers', '1', '--chunk-size', '2', '--no-progress']
    proc = subprocess.Popen(cmd, cwd=repo_root, env=subprocess_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    store = tmp_path / 'demo' / 'object.zarr'
    _signal_after_first_chunk(proc, store, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert 'rerun the same command to continue' in err
    status = open_store(store, warn_random=False).status().reshape(-1, 2)  # chunks of 2 videos
    assert all(len(set(chunk)) == 1 for chunk in (status != 0).tolist())
    assert 0 < (status != 0).all(1).sum() < 4


@pytest.mark.slow
def test_bad_and_unusual_files(odd_videos: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                               caplog: pytest.LogCaptureFixture) -> None:
    data = tmp_path / 'videos'
    shutil.copytree(odd_videos, data)
    features = tmp_path / 'features'
    assert _run(tmp_path, features, 'object', dataset=f'folder:{data}') == 0
    out = capsys.readouterr().out
    # a file decoded the unusual way is named in a warning
    assert any(r.getMessage().startswith('mpegts.ts: MPEG-TS') for r in caplog.records), caplog.text
    store = open_store(features / folder_name(data) / 'object.zarr', warn_random=False)
    rows = store.read()
    by_id = {v: i for i, v in enumerate(rows.video_ids)}
    for bad, reason in (('zero.mp4', 'empty file'), ('text.mp4', 'cannot open video'),
                        ('audio_only.mp4', 'no video stream')):
        i = by_id[bad]
        assert rows.status[i] == FAILED and reason in rows.errors[i] and not rows.available[i]
    for good in ('good.mp4', 'one_frame.mp4', 'rotated.mp4', 'vfr.mp4', 'hevc.mp4', 'vp9.webm', 'mpeg4.avi',
                 'odd_size.mp4', 'no_audio.mp4', 'mpegts.ts', 'corrupt.mp4', 'mpeg2.mpg',
                 *(['av1.mp4'] if (data / 'av1.mp4').exists() else [])):
        i = by_id[good]
        assert rows.status[i] == DONE and rows.lengths[i] >= 1 and rows.available[i], good
    t = by_id['truncated.mp4']
    assert (rows.status[t] == FAILED and rows.errors[t]) or rows.lengths[t] >= 1
    assert check_store(store.path).exit_code == 0
    assert 'failed zero.mp4: empty file (0 bytes)' in out
    # --retry-failed redoes only failed videos; the others keep their arrays
    before = _arrays(store.path)
    n_failed = int((rows.status == FAILED).sum())
    shutil.copy(data / 'good.mp4', data / 'zero.mp4')
    assert _run(tmp_path, features, 'object', '--retry-failed', dataset=f'folder:{data}') == 0
    import re

    tally = re.search(r'object\s+done\s+(\d+)\s+failed\s+(\d+)\s+skipped\s+(\d+)', capsys.readouterr().out)
    assert tally and sum(map(int, tally.groups())) == n_failed  # only the failed videos were redone
    after = open_store(store.path, warn_random=False).read()
    z = by_id['zero.mp4']
    assert after.status[z] == DONE and after.lengths[z] == 2
    np.testing.assert_array_equal(after.features[z], after.features[by_id['good.mp4']])
    keep = [i for i in range(len(rows.video_ids)) if rows.status[i] != FAILED]
    width = after.features.shape[1]  # a read is padded to its longest video, the raw array to T
    np.testing.assert_array_equal(after.features[keep], before['features'][keep, :width])
    assert not before['features'][keep, width:].any()


def _headless_to_checkpoint(name: str, sd: dict) -> dict:
    """A state dict as the weights' publisher ships it (with its classifier head)."""
    sd = dict(sd)
    if name == 'scene':
        import re
        sd = {re.sub(r'(denselayer\d+\.(?:norm|relu|conv))([12])\.', r'\1.\2.', k): v for k, v in sd.items()}
        sd['classifier.weight'] = torch.zeros(365, 2208)
        return {'state_dict': {f'module.{k}': v for k, v in sd.items()}, 'epoch': 90, 'arch': 'densenet161'}
    head = {'object': 'last_linear.weight', 'action': 'classifier.1.weight',
            'action.i3d': 'logits.conv3d.weight'}.get(name, 'fc.weight')
    sd[head] = torch.zeros(3, 3)
    return sd


@pytest.mark.slow
@pytest.mark.parametrize('name', ['object', 'object.resnet152', 'object.resnext101_wsl', 'action',
                                  'action.r2plus1d_18', 'action.r2plus1d_34_ig65m', 'action.i3d', 'scene'])
def test_every_visual_expert_loads_a_checkpoint(name: str, small_demo: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    settings = dict(resize=[40], input_size=32, clip_len=6)
    rand = create_expert(name, weights='random', **settings).load('cpu')
    video = decode_video(0, str(small_demo / 'videos' / 'demo0000.mp4'), {name: rand.cfg.sampling_spec()})
    plan = video.plans[name]
    rows = video.frames[plan.index[:, 0]] if rand.cfg.sampling == 'frames' else video.frames[plan.index]
    init = rand.extract(rows)
    # the checkpoint differs from the seeded random init that `load` builds first: a load whose values
    # never reached the model would still give `init`
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        trained = {k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v
                   for k, v in rand.model.state_dict().items()}
    rand.model.load_state_dict(trained)
    expected = rand.extract(rows)
    assert expected.shape == (len(plan.index), rand.cfg.feature_dim) and np.isfinite(expected).all()
    assert not np.allclose(expected, init, rtol=1e-3, atol=1e-3)
    sd = _headless_to_checkpoint(name, trained)
    monkeypatch.setenv('VIDEOEXPERTS_WEIGHTS_DIR', str(tmp_path))
    default = create_expert(name).cfg.weights
    if default.startswith('file:'):  # the default spec names a file in the weights directory
        target, spec = tmp_path / default[5:], None
    else:
        target = tmp_path / 'checkpoint.pth'
        spec = str(target)
    torch.save(sd, target)
    loaded = create_expert(name, **settings, **({'weights': spec} if spec else {})).load('cpu')
    assert loaded.weights.sha256 and loaded.store_info()['weights'] != 'random'
    np.testing.assert_allclose(loaded.extract(rows), expected, rtol=1e-5, atol=1e-5)


def test_missing_weights_and_bad_settings_are_one_line_errors(small_demo: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv('VIDEOEXPERTS_WEIGHTS_DIR', str(tmp_path / 'none'))
    root = small_demo.parent
    assert main(['--dataset', 'demo', '--data-root', str(root), '--features-root', str(tmp_path), '--expert',
                 'scene']) == 1
    err = capsys.readouterr().err
    assert 'densenet161_places365.pth.tar' in err and str(tmp_path / 'none') in err and 'Traceback' not in err
    assert _run(root, tmp_path, 'scene', '--set', 'fsp=2') == 1
    assert '--set fsp: not a setting of any selected expert; did you mean fps? (settings:' in capsys.readouterr().err
    assert _run(root, tmp_path, 'scene', '--set', 'scene.input_sise=2') == 1
    assert "--set scene.input_sise: scene has no setting 'input_sise'; did you mean input_size?" in capsys.readouterr().err
    assert _run(root, tmp_path, 'sceen') == 1
    assert 'did you mean scene' in capsys.readouterr().err
    assert set(VISUAL) <= set(expert_names())


def test_a_bad_command_fails_before_overwrite_deletes_a_store(small_demo: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    root, feats = small_demo.parent, tmp_path / 'f'
    assert _run(root, feats, 'scene') == 0
    store = feats / 'demo' / 'scene.zarr'
    finished = _arrays(store)
    bad = (['--device', 'tpu'], ['--device', 'cuda:7'], ['--set', 'fps=0'], ['--set', 'scene.clip_fps=nan'],
           ['--shard', '2', '--num-shards', '2'], ['--decoder', 'nvdec', '--device', 'cpu'])
    for extra in bad:
        assert _run(root, feats, 'scene', '--overwrite', *extra) == 1, extra
        err = capsys.readouterr().err
        assert err.startswith('error: ') and 'Traceback' not in err, (extra, err)
    # object's weights are missing: scene's finished store is not deleted before that is found
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'empty_cache'))
    monkeypatch.setenv('VIDEOEXPERTS_OFFLINE', '1')
    assert main(['--dataset', 'demo', '--data-root', str(root), '--features-root', str(feats), '--expert',
                 'scene,object', *TINY[:4], '--set', 'scene.weights=random', '--workers', '1', '--chunk-size', '2',
                 '--no-progress', '--overwrite']) == 1
    assert 'legacy_senet154' in capsys.readouterr().err
    assert not (feats / 'demo' / 'object.zarr').exists()
    after = _arrays(store)
    for k in finished:
        np.testing.assert_array_equal(finished[k], after[k], err_msg=k)
    # a file that is no checkpoint fails before a store is made: the corrected command then runs
    (tmp_path / 'text.pth').write_text('not a checkpoint')
    assert _run(root, tmp_path / 'g', 'scene', '--weights', str(tmp_path / 'text.pth')) == 1
    assert 'cannot read' in capsys.readouterr().err
    assert not (tmp_path / 'g' / 'demo' / 'scene.zarr').exists()
    assert _run(root, tmp_path / 'g', 'scene') == 0
    monkeypatch.setenv('SLURM_ARRAY_TASK_ID', 'x')
    monkeypatch.setenv('SLURM_ARRAY_TASK_COUNT', '4')
    assert _run(root, feats, 'scene') == 1
    assert 'SLURM_ARRAY_TASK_ID' in capsys.readouterr().err


def test_slurm_array_tasks_are_shards_from_0_whatever_the_first_task_id(monkeypatch: pytest.MonkeyPatch) -> None:
    """`sbatch --array=1-4` numbers its tasks from 1: they are shards 0 to 3, not 1 to 4 (shard 0 never run)."""
    from extract.run import _shard_from_env

    monkeypatch.setenv('SLURM_ARRAY_TASK_COUNT', '4')
    monkeypatch.setenv('SLURM_ARRAY_TASK_MIN', '1')
    shards = []
    for task in ('1', '2', '3', '4'):
        monkeypatch.setenv('SLURM_ARRAY_TASK_ID', task)
        shards.append(_shard_from_env())
    assert shards == [(0, 4), (1, 4), (2, 4), (3, 4)]


def test_ctrl_c_while_models_load_is_one_line(small_demo: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from extract.experts._base import Expert

    def interrupted(self: Expert, device: object) -> Expert:
        raise KeyboardInterrupt

    monkeypatch.setattr(Expert, 'load', interrupted)
    assert _run(small_demo.parent, tmp_path, 'scene') == 130
    err = capsys.readouterr().err
    assert 'interrupted: finished chunks are saved' in err and 'Traceback' not in err


def test_benchmark_input_errors_are_one_line(small_demo: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from extract.bench import main as bench_main

    videos = f'folder:{small_demo / "videos"}'
    for args, said in ((['--dataset', f'folder:{tmp_path / "none"}'], 'does not exist'),
                       (['--dataset', videos, '--experts', 'sceen'], 'did you mean scene'),
                       (['--dataset', videos, '--device', 'tpu'], '--device tpu: not a device')):
        assert bench_main(args) == 1
        err = capsys.readouterr().err
        assert err.startswith('error: ') and said in err and 'Traceback' not in err, err


def test_out_of_memory_is_one_line_with_advice(small_demo: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from extract.experts._base import Expert

    def oom(self: Expert, x: torch.Tensor) -> torch.Tensor:
        raise torch.OutOfMemoryError('CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail')

    monkeypatch.setattr(Expert, 'forward', oom)
    assert _run(small_demo.parent, tmp_path, 'scene') == 1
    err = capsys.readouterr().err
    assert 'Tried to allocate 2.00 GiB' in err and '--batch-size' in err and 'Traceback' not in err


def test_a_stalled_decoder_is_one_line(small_demo: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from extract import run
    from extract.nvdec import DecoderStalled

    class Stalled(run.DecodePool):
        def imap(self, items: object) -> object:
            raise DecoderStalled('NVDEC hung on 3 files (the last: x.mp4); finished chunks are saved: rerun with '
                                 '--decoder decord')
            yield

    monkeypatch.setattr(run, 'DecodePool', Stalled)
    assert _run(small_demo.parent, tmp_path, 'scene') == 1
    err = capsys.readouterr().err
    assert err.startswith('error: NVDEC hung on 3 files') and 'Traceback' not in err, err
    # nothing was written: the failed run leaves no store to hold its settings against the next command
    assert not (tmp_path / 'demo' / 'scene.zarr').exists()


@pytest.mark.slow
def test_benchmark_command_reports_every_measurement(small_demo: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    """`python -m extract.bench` runs (no timing is asserted): decode-only, model-only, and whole-run and
    steady-state end to end for each expert and for both together, plus the profile when asked."""
    from extract.bench import main as bench_main

    code = bench_main(['--dataset', f'folder:{small_demo / "videos"}', '--experts', 'object,scene', '--limit', '3',
                       '--workers', '1', '--set', 'resize=[40]', '--set', 'input_size=32',
                       '--profile', str(tmp_path / 'prof')])
    assert code == 0
    out = capsys.readouterr().out
    for row in ('| decode only, decord (object, scene sampling) |', '| model only: object', '| model only: scene',
                '| end to end: object (steady state', '| end to end: scene (whole run',
                '| end to end: object + scene (steady state'):
        assert row in out, row
    assert (tmp_path / 'prof' / 'all.prof').is_file() and (tmp_path / 'prof' / 'object.prof').is_file()
    assert bench_main(['--dataset', f'folder:{small_demo / "videos"}', '--experts', 'object', '--limit', '3',
                       '--workers', '1', '--decode-only']) == 0
    out = capsys.readouterr().out
    assert '| decode only, decord (object sampling) |' in out and 'model only' not in out
    assert bench_main(['--dataset', f'folder:{small_demo / "videos"}', '--experts', 'object,action', '--limit', '5',
                       '--host-only']) == 0
    out = capsys.readouterr().out
    assert '| host loop only: object + action (5 decoded videos replayed, models stubbed, stores written) |' in out
    assert 'decode only' not in out and 'model only' not in out
    assert bench_main(['--dataset', f'folder:{small_demo / "videos"}', '--experts', 'object', '--limit', '5',
                       '--workers', '1', '--stub-models']) == 0
    out = capsys.readouterr().out
    assert '| decoding + host loop: object (decoded by decord, models stubbed, stores written) |' in out
    assert '| decode only, decord |' in out and 'x decode-only' in out and 'model only' not in out


@pytest.mark.slow
def test_benchmark_measures_per_video_experts_through_their_threads(small_demo: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    """Per-video experts: model-only through `process_batch`, end to end with each thread's busy share,
    and every row printed (to stderr) as soon as it is measured, not only in the final table."""
    from extract.bench import main as bench_main

    code = bench_main(['--dataset', f'folder:{small_demo / "videos"}', '--experts', 'audio,face', '--limit', '3',
                       '--workers', '1', '--end-to-end', 'all'])
    assert code == 0
    captured = capsys.readouterr()
    for row in ('| model only: audio (vggish, 16 videos a batch) |', '| model only: face (',
                '| end to end: audio + face (steady state'):
        assert row in captured.out, row
    assert 'busy: audio' in captured.out and 'face' in captured.out.split('busy: audio')[1]
    assert '| end to end: audio (' not in captured.out  # --end-to-end all: only the experts together
    assert '] model only: audio (vggish, 16 videos a batch):' in captured.err  # printed as measured
    assert bench_main(['--dataset', f'folder:{small_demo / "videos"}', '--experts', 'audio,face', '--limit', '3',
                       '--host-only']) == 0
    assert '| host loop only: audio + face (3 decoded videos replayed' in capsys.readouterr().out


def test_a_per_video_expert_thread_batches_isolates_failures_and_reports_its_death() -> None:
    """`_VideoWorker`: videos go to `process_batch` several at a time (a chunk's tail flushed by
    `collect`); a batch that raises is redone a video at a time, so only the bad video fails; an
    error that stops the thread reaches the feeding loop instead of hanging it."""
    import numpy as np

    from extract.experts._base import VideoInput
    from extract.run import _VideoWorker
    from shared.store import DONE, FAILED, VideoResult

    class Counting:  # the runner's view of a per-video expert: name, cfg.feature_dim, process(_batch)
        name, videos_per_batch = 'counting', 3
        cfg = type('Cfg', (), {'feature_dim': 2})()

        def __init__(self) -> None:
            self.batches: list[int] = []

        def process(self, x: VideoInput) -> VideoResult:
            if x.audio is None:
                raise ValueError('no samples')
            if len(x.audio) == 13:
                raise MemoryError
            return VideoResult(np.full((1, 2), len(x.audio), np.float32), np.zeros((1, 2), np.float32), DONE)

        def process_batch(self, xs: list[VideoInput]) -> list[VideoResult]:
            self.batches.append(len(xs))
            return [self.process(x) for x in xs]

    expert = Counting()
    worker = _VideoWorker(expert, 'cpu', depth=4)
    for row, n in enumerate([5, 6, 7, 8]):
        worker.submit(row, VideoInput(audio=np.zeros(n, np.float32)))
    worker.submit(4, VideoInput(audio=None))  # raises inside its batch
    got = worker.collect(range(5))
    assert expert.batches[:2] == [3, 2]  # three at once, then the flushed tail (which raised: redone one by one)
    assert [float(got[r].features[0, 0]) for r in range(4)] == [5, 6, 7, 8]
    assert got[4].status == FAILED and 'no samples' in got[4].error
    assert all(got[r].status == DONE for r in range(4))
    worker.submit(5, VideoInput(audio=np.zeros(13, np.float32)))
    with pytest.raises(MemoryError):
        worker.collect([5])
    with pytest.raises(MemoryError):  # the thread is gone: feeding it raises at once, never waits for room
        for row in range(6, 6 + 2 * worker.queue.maxsize):
            worker.submit(row, VideoInput(audio=np.zeros(5, np.float32)))
    worker.close()  # returns: nothing to stop


def _tone_videos(data: Path, n: int = 4) -> Path:
    """`n` 1-s videos with a tone each (real files for the audio expert)."""
    data.mkdir()
    for i in range(n):
        subprocess.run([ffmpeg_exe(), '-y', '-v', 'error', '-f', 'lavfi', '-i', 'testsrc2=size=64x48:rate=25:duration=1',
                        '-f', 'lavfi', '-i', f'sine=frequency={300 + 100 * i}:duration=1', '-c:v', 'libx264', '-pix_fmt',
                        'yuv420p', '-c:a', 'aac', '-shortest', str(data / f'v{i}.mp4')], check=True)
    return data


# run as `python -c` by the test below: the audio expert's first batch is a long one, inside torch, during which
# the process gets Ctrl-C twice (the second while the first one's save waits for that batch)
_TWO_CTRL_C = """
import os, runpy, signal, sys, time
import torch
from extract.experts.audio import AudioExpert
real = AudioExpert.process_batch
def slow(self, xs):
    if not getattr(AudioExpert, 'stopped', False):
        AudioExpert.stopped = True
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)
        os.kill(os.getpid(), signal.SIGINT)
        x, end = torch.randn(128, 128), time.time() + 120
        while time.time() < end:
            x = (x @ x).tanh()
    return real(self, xs)
AudioExpert.process_batch = slow
sys.argv = ['extract', *sys.argv[1:]]
runpy.run_module('extract', run_name='__main__', alter_sys=True)
"""


def test_a_second_ctrl_c_exits_at_once(tmp_path: Path, python: str, subprocess_env: dict, repo_root: Path) -> None:
    """Ctrl-C, then Ctrl-C again while the first one's save waits for a per-video expert's long
    batch: the process exits 130 at once (not after the batch, nor aborted by torch at shutdown,
    exit 134), and the store holds no part of the chunk whose save was cut short."""
    from shared.store import PENDING

    data = _tone_videos(tmp_path / 'videos')
    cmd = [python, '-c', _TWO_CTRL_C, '--dataset', f'folder:{data}', '--expert', 'audio', '--weights', 'random',
           '--features-root', str(tmp_path / 'f'), '--workers', '0', '--chunk-size', '2', '--no-progress']
    proc = subprocess.Popen(cmd, cwd=repo_root, env=subprocess_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:  # the long batch lasts 120 s: a run that waits for it, even in part, misses this
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert 'rerun the same command to continue' in err
    store = open_store(tmp_path / 'f' / folder_name(data) / 'audio.zarr', warn_random=False)
    report = check_store(store.path)  # 2: videos still to do; nothing damaged
    assert (store.status() == PENDING).all() and report.exit_code == 2 and not report.damaged


def test_an_interrupted_run_saves_the_fed_chunk_without_computing_the_next(tmp_path: Path, monkeypatch) -> None:
    """Ctrl-C while a chunk is fed: the chunk fed before it is saved whole, and the per-video
    expert computes only that chunk's videos; those of the interrupted chunk, which a rerun redoes,
    are dropped from its thread's batch instead of delaying the exit (the audio expert, real files)."""
    from extract.experts.audio import AudioExpert
    from extract.pool import DecodePool
    from extract.run import RunOptions, run
    from shared.store import PENDING

    data = _tone_videos(tmp_path / 'videos')
    seen: list[int] = []
    real = AudioExpert.process_batch
    monkeypatch.setattr(AudioExpert, 'process_batch', lambda self, xs: (seen.append(len(xs)), real(self, xs))[1])

    class StoppedAfterThree:  # real decoding; Ctrl-C while the fourth video (the second chunk's second) is awaited
        def __init__(self, samplings: dict) -> None:
            self.pool = DecodePool(samplings, workers=0)

        def imap(self, items):
            for n, video in enumerate(self.pool.imap(items)):
                yield video
                if n == 2:
                    raise KeyboardInterrupt

        def close(self, kill: bool = False) -> None:
            self.pool.close(kill)

    opts = RunOptions(dataset=f'folder:{data}', experts=['audio'], features_root=tmp_path / 'f', weights='random',
                      workers=0, chunk_size=2, progress=False)
    from extract.run import build_experts

    experts = [e.load('cpu') for e in build_experts(opts)]
    assert run(opts, loaded=experts, pool=StoppedAfterThree({'audio': experts[0].cfg.sampling_spec()})) == 130
    store = open_store(tmp_path / 'f' / folder_name(data) / 'audio.zarr', warn_random=False)
    assert (store.status()[:2] == DONE).all() and (store.status()[2:] == PENDING).all()
    assert sum(seen) == 2, seen  # v0 and v1, not v2 (fed, then dropped)
    assert run(opts, loaded=experts) == 0
    assert (open_store(store.path, warn_random=False).status() == DONE).all() and sum(seen) == 4


def test_preprocess_takes_the_centre_crop() -> None:
    from torchvision.transforms import CenterCrop

    expert = create_expert('scene', weights='random', resize=[48], input_size=32)  # 48x64: no resize, crop only
    rows = torch.zeros(2, 48, 64, 3, dtype=torch.uint8)
    rows[:, 20:28, 28:36] = 255  # a mark at the centre
    rows[:, :4, :4] = 128  # and one in the top-left corner
    got = expert.preprocess(rows)
    mean, std = torch.tensor(expert.cfg.mean).view(1, 3, 1, 1), torch.tensor(expert.cfg.std).view(1, 3, 1, 1)
    expected = CenterCrop(32)(rows.permute(0, 3, 1, 2).float() / 255.0)
    assert got.shape == (2, 3, 32, 32)
    torch.testing.assert_close(got, (expected - mean) / std)
    assert (expected[:, :, 12:20, 12:20] == 1).all()  # the mark is inside the crop, at its centre


def test_decode_resize_leaves_audio_experts_alone(odd_videos: Path, tmp_path: Path) -> None:
    """A run-wide `--set decode_resize=K` is a frame-decoding option: it reaches the frame experts
    only, so an audio store made without it is continued, not refused over a setting it ignores."""
    data = tmp_path / 'videos'
    data.mkdir()
    shutil.copy(odd_videos / 'good.mp4', data / 'good.mp4')

    def extract(experts: str, *extra: str) -> int:
        return main(['--dataset', f'folder:{data}', '--features-root', str(tmp_path / 'f'), '--expert', experts,
                     '--workers', '0', '--no-progress', '--weights', 'random', *extra])

    assert extract('audio') == 0
    assert extract('object,audio', '--set', 'object.resize=[40]', '--set', 'object.input_size=32',
                   '--set', 'decode_resize=2') == 0
    root = tmp_path / 'f' / folder_name(data)
    assert open_store(root / 'object.zarr', warn_random=False).attrs['config']['decode_resize'] == 2.0
    assert open_store(root / 'audio.zarr', warn_random=False).attrs['config']['decode_resize'] == 0.0
    # named for an audio expert, it is an error that says so
    assert extract('audio', '--set', 'audio.decode_resize=2') == 1


@pytest.mark.parametrize('spec', ['', ' , '])
def test_no_expert_named_is_one_line(spec: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`--expert ''` (make's EXPERT left empty) ended in a StopIteration traceback over no stores."""
    (tmp_path / 'videos').mkdir()
    (tmp_path / 'videos' / 'a.mp4').write_bytes(b'')
    code = main(['--dataset', f'folder:{tmp_path / "videos"}', '--features-root', str(tmp_path / 'f'),
                 '--expert', spec, '--no-progress', *TINY])
    err = capsys.readouterr().err
    assert code == 1 and 'no expert named in' in err and 'Traceback' not in err
    assert not (tmp_path / 'f').exists()


def test_a_weights_file_with_a_compressed_record_is_refused_unread(tmp_path: Path) -> None:
    """torch.load inflates a deflated zip record whole (4 MB of zeros from a 20 KB file): a weights
    file that torch.save did not write so is refused before it is read, for every expert's loader
    (load_state_dict; whisper's checkpoint through torch_file)."""
    import zipfile

    import torch

    from extract.weights import WeightsError, load_state_dict, torch_file

    saved, forged = tmp_path / 'saved.pth', tmp_path / 'forged.pth'
    torch.save({'state_dict': {'module.w': torch.zeros(1 << 20)}}, saved)
    with zipfile.ZipFile(saved) as src, zipfile.ZipFile(forged, 'w') as out:
        for info in src.infolist():
            out.writestr(info.filename, src.read(info.filename), compress_type=zipfile.ZIP_DEFLATED)
    assert forged.stat().st_size < 20_000
    assert load_state_dict(saved)['w'].shape == (1 << 20,)
    for load in (load_state_dict, torch_file):
        with pytest.raises(WeightsError, match=r'forged.pth holds a compressed record \(.*\), which torch.save never'):
            load(forged)


def test_each_model_says_where_its_weights_come_from_as_it_loads(small_demo: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading the experts' real weights takes minutes, and nothing was printed meanwhile: now one
    line per model, before it loads, with its weights (a file, or random)."""
    from extract.experts.audio import VGGish

    monkeypatch.setenv('VIDEOEXPERTS_WEIGHTS_DIR', str(tmp_path))
    torch.save(VGGish('relu').state_dict(), tmp_path / 'vggish-10086976.pth')
    assert main(['--dataset', 'demo', '--data-root', str(small_demo.parent), '--features-root', str(tmp_path / 'f'),
                 '--expert', 'scene,audio', '--set', 'resize=[40]', '--set', 'input_size=32', '--set',
                 'scene.weights=random', '--workers', '1', '--no-progress', '--device', 'cpu']) == 0
    lines = capsys.readouterr().out.splitlines()
    loading = [ln for ln in lines if ln.startswith('loading ')]
    assert loading == ['loading scene: torchvision:densenet161, RANDOM weights, on cpu',
                       f'loading audio: vggish, weights file:vggish-10086976.pth ({tmp_path / "vggish-10086976.pth"}), '
                       'on cpu'], lines
    assert lines.index(loading[-1]) < next(i for i, ln in enumerate(lines) if ln.startswith('extracting '))
    capsys.readouterr()
    assert main(['--dataset', 'demo', '--data-root', str(small_demo.parent), '--features-root', str(tmp_path / 'f'),
                 '--expert', 'scene,audio', '--set', 'resize=[40]', '--set', 'input_size=32', '--set',
                 'scene.weights=random', '--no-progress']) == 0
    assert 'loading' not in capsys.readouterr().out  # nothing to do: no model is loaded


def test_the_loading_line_of_an_expert_named_as_its_model_says_it_once(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture) -> None:
    """'loading ocr.rapidocr: ocr, weights ...' repeated the name; the weights say which engine."""
    from extract.run import load_experts
    from tests.extract.test_av_experts import _word2vec

    load_experts([create_expert('ocr.rapidocr', word_vectors=str(_word2vec(tmp_path / 'w.bin', ['word'])))], 'cpu')
    assert capsys.readouterr().out.startswith('loading ocr.rapidocr: weights rapidocr'), capsys.readouterr()
