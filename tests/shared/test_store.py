"""The expert store: real Zarr on disk, real writer processes, real kills."""
from __future__ import annotations

import json
import logging
import re
import signal
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr

from shared.store import (DONE, FAILED, PENDING, SKIPPED, ExpertStore, RandomWeightsWarning, StoreError, VideoResult,
                          check_store, create_store, open_store, pack_chunk, shard_chunks, store_path)
from tests import _store_writer as W

ARRAYS = ('video_ids', 'features', 'timestamps', 'lengths', 'available', 'status', 'errors', 'tokens')


def _arrays(path: Path) -> dict[str, np.ndarray]:
    g = zarr.open_group(str(path), mode='r')
    return {k: g[k][:] for k in ARRAYS}


def _assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    for k in ARRAYS:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _write(python: str, env: dict, path: Path, *args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([python, '-m', 'tests._store_writer', str(path), '--videos', '40', '--chunk', '4',
                             *args], env=env, cwd=W.__file__.rsplit('/tests/', 1)[0],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _check_cli(python: str, env: dict, path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([python, '-m', 'shared.store', 'check', str(path)], env=env, capture_output=True,
                          text=True, cwd=W.__file__.rsplit('/tests/', 1)[0])


@pytest.fixture()
def reference(tmp_path: Path, python: str, subprocess_env: dict) -> dict[str, np.ndarray]:
    """The arrays one uninterrupted single-process writer produces."""
    path = tmp_path / 'ref' / 'toy.zarr'
    proc = _write(python, subprocess_env, path)
    assert proc.wait(timeout=120) == 0, proc.stderr.read()
    return _arrays(path)


def test_roundtrip_and_rules(tmp_path: Path) -> None:
    path = store_path(tmp_path, 'toy', 'toy')
    store = create_store(path, W.video_ids(10), W.spec(4))
    assert store.n_chunks == 3 and store.pending_chunks() == [0, 1, 2]
    for c in range(store.n_chunks):
        store.write_chunk(c, pack_chunk([W.result_for(r) for r in store.chunk_rows(c)], W.MAX_ROWS, W.DIM, True))
        # complete only once every chunk is written: a store complete early is swapped in (--overwrite) half done
        assert store.is_complete() == (c == store.n_chunks - 1)
    assert store.pending_chunks() == []
    with pytest.warns(RandomWeightsWarning, match='RANDOM'):
        rows = open_store(path).read(ids=['vid0003', 'vid0005', 'vid0007'])
    expected = W.result_for(3)
    np.testing.assert_allclose(rows.rows(0), expected.features, atol=1e-2)  # float16 storage
    assert rows.lengths.tolist() == [3, 0, 0]
    assert rows.status.tolist() == [DONE, FAILED, SKIPPED]
    assert rows.available.tolist() == [True, False, False]
    assert rows.errors[1] == 'cannot decode video 2' and rows.errors[2] == 'no audio stream'  # why skipped, too
    assert json.loads(rows.tokens[0])[0]['word'] == 'w3'
    assert not rows.features[1:].any() and not rows.timestamps[1:].any()
    meta = json.loads((path / 'features' / 'zarr.json').read_text())
    assert meta['dimension_names'] == ['video', 'row', 'dim']
    lazy = open_store(path, warn_random=False).lazy()
    assert lazy['features'].chunks[0] == (4, 4, 2)
    assert float(lazy['lengths'].sum().compute()) == sum(W.result_for(r).features.shape[0]
                                                        for r in range(10) if W.result_for(r).status == DONE)


def test_pack_refuses_bad_rows() -> None:
    nan = VideoResult(np.full((2, W.DIM), np.nan), np.zeros((2, 2)))
    with pytest.raises(StoreError, match='NaN'):
        pack_chunk([nan], W.MAX_ROWS, W.DIM, False)
    long = VideoResult(np.zeros((W.MAX_ROWS + 1, W.DIM)), np.zeros((W.MAX_ROWS + 1, 2)))
    with pytest.raises(StoreError, match='exceed'):
        pack_chunk([long], W.MAX_ROWS, W.DIM, False)
    # a done video with nothing found is stored unavailable with length 0 and zero features
    empty = VideoResult(np.ones((3, W.DIM)), np.zeros((3, 2)), available=False)
    chunk = pack_chunk([empty], W.MAX_ROWS, W.DIM, False)
    assert chunk.lengths[0] == 0 and not chunk.available[0] and chunk.features[0].shape == (0, W.DIM)


def test_reopen_checks_layout(tmp_path: Path) -> None:
    path = tmp_path / 'toy.zarr'
    create_store(path, W.video_ids(10), W.spec(4))
    assert create_store(path, W.video_ids(10), W.spec(4)).n_videos == 10  # resume
    with pytest.raises(StoreError, match='another video list'):
        create_store(path, W.video_ids(11), W.spec(4))
    renamed = [*W.video_ids(9), 'added.mp4']
    with pytest.raises(StoreError, match=f'new in the dataset: added.mp4; gone from the dataset: {W.video_ids(10)[-1]}'):
        create_store(path, renamed, W.spec(4))
    with pytest.raises(StoreError, match='the same videos in another order'):
        create_store(path, W.video_ids(10)[::-1], W.spec(4))
    with pytest.raises(StoreError, match='chunk_size'):
        create_store(path, W.video_ids(10), W.spec(5))
    import dataclasses
    with pytest.raises(StoreError, match='config.fps'):
        create_store(path, W.video_ids(10), dataclasses.replace(W.spec(4), config={'fps': 2}))
    # settings that change only the speed resume a store made without them
    assert create_store(path, W.video_ids(10), dataclasses.replace(W.spec(4), config={'batch_size': 7,
                                                                                     'cuda_graph': True})).n_videos == 10
    # a setting added since the store was made: resumed at its default, refused at another value
    newer = dataclasses.replace(W.spec(4), config={'max_words': 20}, config_defaults={'max_words': 20, 'fps': 1.0})
    assert create_store(path, W.video_ids(10), newer).n_videos == 10
    assert 'config_defaults' not in open_store(path, warn_random=False).attrs
    with pytest.raises(StoreError, match=r"config.max_words: store has 20 \(made before this setting: its default\), run wants 30"):
        create_store(path, W.video_ids(10), dataclasses.replace(newer, config={'max_words': 30}))
    assert create_store(path, W.video_ids(11), W.spec(4), overwrite=True).n_videos == 11
    with pytest.raises(StoreError, match='no expert store'):
        open_store(tmp_path / 'nothing.zarr')
    (tmp_path / 'half.zarr' / 'features').mkdir(parents=True)  # a deletion cut short
    with pytest.raises(StoreError, match='no store .* rerun with --overwrite'):
        create_store(tmp_path / 'half.zarr', W.video_ids(10), W.spec(4))
    assert create_store(tmp_path / 'half.zarr', W.video_ids(10), W.spec(4), overwrite=True).n_videos == 10


@pytest.mark.parametrize('n_chunks,num_shards', [(10, 3), (3, 5), (64, 64), (1, 1), (100, 7)])
def test_shards_partition_chunks(n_chunks: int, num_shards: int) -> None:
    ranges = [shard_chunks(n_chunks, s, num_shards) for s in range(num_shards)]
    assert [c for r in ranges for c in r] == list(range(n_chunks))
    assert max(map(len, ranges)) - min(map(len, ranges)) <= 1
    with pytest.raises(StoreError):
        shard_chunks(n_chunks, num_shards, num_shards)


@pytest.mark.slow
def test_two_processes_write_disjoint_chunks(tmp_path: Path, python: str, subprocess_env: dict,
                                             reference: dict[str, np.ndarray]) -> None:
    path = tmp_path / 'par' / 'toy.zarr'
    procs = [_write(python, subprocess_env, path, '--shard', str(s), '--num-shards', '2', '--delay', '0.05')
             for s in range(2)]
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read()
    _assert_same(_arrays(path), reference)
    assert _check_cli(python, subprocess_env, path).returncode == 0


@pytest.mark.slow
def test_killed_writer_resumes_to_same_arrays(tmp_path: Path, python: str, subprocess_env: dict,
                                              reference: dict[str, np.ndarray]) -> None:
    path = tmp_path / 'kill' / 'toy.zarr'
    proc = _write(python, subprocess_env, path, '--delay', '0.4')
    done = 0
    for line in proc.stdout:  # kill after three chunks, between chunk writes
        done += line.startswith('chunk')
        if done == 3:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    result = _check_cli(python, subprocess_env, path)
    assert result.returncode == 2, result.stdout
    assert 'VALID, INCOMPLETE' in result.stdout and 'pending' in result.stdout
    status = open_store(path, warn_random=False).status()
    assert (status[:12] != PENDING).all() and (status[12:] == PENDING).sum() >= 4
    pending = {c for c in range(len(status) // 4) if (status[4 * c:4 * c + 4] == PENDING).all()}
    resumed = _write(python, subprocess_env, path)
    out, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    written = {int(line.split()[1]) for line in out.splitlines() if line.startswith('chunk')}
    assert written == pending and 0 not in written  # exactly the unfinished chunks are written, no others
    _assert_same(_arrays(path), reference)
    result = _check_cli(python, subprocess_env, path)
    assert result.returncode == 0 and 'VALID, COMPLETE' in result.stdout


def _complete_store(path: Path) -> None:
    store = create_store(path, W.video_ids(12), W.spec(4))
    for c in range(store.n_chunks):
        store.write_chunk(c, pack_chunk([W.result_for(r) for r in store.chunk_rows(c)], W.MAX_ROWS, W.DIM, True))


def test_check_reports_counts_and_errors(tmp_path: Path) -> None:
    path = tmp_path / 'ok.zarr'
    _complete_store(path)
    report = check_store(path)
    assert report.exit_code == 0, report.summary()
    assert report.counts == {'pending': 0, 'done': 10, 'failed': 1, 'skipped': 1}
    text = report.summary()
    assert 'done 10, failed 1, skipped 1, pending 0' in text
    assert 'cannot decode video 2' in text and 'RANDOM' in text


def test_check_exit_1_on_nan_feature(tmp_path: Path) -> None:
    path = tmp_path / 'nan.zarr'
    _complete_store(path)
    g = zarr.open_group(str(path), mode='r+')
    g['features'][3, 0, 0] = np.nan  # a writer bypassing pack_chunk
    report = check_store(path)
    assert report.exit_code == 1 and any('NaN' in p for p in report.problems)


def test_check_exit_1_when_mask_and_lengths_disagree(tmp_path: Path) -> None:
    path = tmp_path / 'mask.zarr'
    _complete_store(path)
    g = zarr.open_group(str(path), mode='r+')
    g['available'][0] = True  # row 0 has length 0
    report = check_store(path)
    assert report.exit_code == 1 and any('available and lengths' in p for p in report.problems)
    path2 = tmp_path / 'pad.zarr'
    _complete_store(path2)
    g2 = zarr.open_group(str(path2), mode='r+')
    g2['features'][2, W.MAX_ROWS - 1, 0] = 1.0  # data after the row's length (2)
    assert check_store(path2).exit_code == 1


def test_check_exit_1_when_a_row_with_a_length_is_marked_unavailable(tmp_path: Path) -> None:
    """available <=> length > 0 both ways: rows that training would skip although they were extracted
    are a disagreement too, not only an available row without rows."""
    path = tmp_path / 'unavailable.zarr'
    _complete_store(path)
    g = zarr.open_group(str(path), mode='r+')
    assert g['lengths'][2] == 2 and g['available'][2]
    g['available'][2] = False
    report = check_store(path)
    assert report.exit_code == 1
    assert any('disagree between available and lengths' in p and 'first: row 2' in p for p in report.problems), \
        report.problems


def test_check_cli_exit_codes(tmp_path: Path, python: str, subprocess_env: dict) -> None:
    path = tmp_path / 'cli.zarr'
    store = create_store(path, W.video_ids(8), W.spec(4))
    assert _check_cli(python, subprocess_env, path).returncode == 2
    for c in range(store.n_chunks):
        store.write_chunk(c, pack_chunk([W.result_for(r) for r in store.chunk_rows(c)], W.MAX_ROWS, W.DIM, True))
    ok = _check_cli(python, subprocess_env, path)
    assert ok.returncode == 0 and 'VALID, COMPLETE' in ok.stdout
    missing = _check_cli(python, subprocess_env, tmp_path / 'missing.zarr')
    assert missing.returncode == 1 and missing.stdout.splitlines()[1:] == [
        f'PROBLEM   no expert store at {tmp_path / "missing.zarr"} (no zarr.json)', 'result    INVALID']


def test_torn_status_chunk_reads_as_pending(tmp_path: Path) -> None:
    path = tmp_path / 'torn.zarr'
    _complete_store(path)
    (path / 'status' / 'c' / '1').write_bytes(b'\x00garbage')  # a kill mid-write on a non-atomic filesystem
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        store = open_store(path)
    assert store.pending_chunks() == [1]
    assert check_store(path).exit_code == 2


def test_a_status_value_that_is_no_status_reads_as_pending(tmp_path: Path) -> None:
    """A damaged status byte read without error (77): the chunk is work to redo and not a store to
    train on; it read as a finished video."""
    path = tmp_path / 'odd.zarr'
    _complete_store(path)
    status = zarr.open_array(str(path / 'status'), mode='r+')
    status[5] = 77
    store = open_store(path)
    chunk = 5 // store.unit_size
    assert store.pending_chunks() == [chunk] and not store.is_complete()
    assert (store.status() == 0).sum() == len(store.chunk_rows(chunk))
    report = check_store(path)
    assert report.exit_code == 1 and f'chunk {chunk}: unknown status values [77]' in report.problems
    assert report.damaged == [chunk] and report.counts['pending'] == len(store.chunk_rows(chunk))  # --repair redoes it


def test_a_store_build_killed_with_minus_9_is_removed_by_the_next_run_of_this_host(tmp_path: Path,
                                                                                    gone_and_live_pids) -> None:
    """`create_store` builds in a folder beside the store; a kill -9 left it for ever, only reported. The next
    run removes those of gone processes of this host; a live one's is kept and reported."""
    from shared.files import _host
    from shared.store import leftovers

    dead, running = (tmp_path / f'.toy.zarr.{_host()}-{pid}-0a1b2c3d.tmp' for pid in gone_and_live_pids)
    for p in (dead, running):
        (p / 'status').mkdir(parents=True)
    create_store(tmp_path / 'toy.zarr', W.video_ids(4), W.spec(4))
    assert not dead.exists() and running.exists()
    assert [(p.name, what.split(':')[0]) for p, what in leftovers(tmp_path / 'toy.zarr')] == [
        (running.name, 'left by an extraction or import of this store that stopped')]


def test_check_lists_what_stopped_jobs_left_beside_a_store(tmp_path: Path) -> None:
    path = tmp_path / 'ok.zarr'
    _complete_store(path)
    (tmp_path / '.ok.zarr.tmp-17-0a1b2c3d').mkdir()
    (tmp_path / '.ok.zarr.reembed-99').mkdir()
    (tmp_path / '.ok.zarr.reembed-99' / 'c0').write_bytes(b'x' * 2_000_000)
    (tmp_path / '.other.zarr.reembed-5').mkdir()  # another store's
    report = check_store(path)
    assert report.exit_code == 0  # reported, not a problem of the store itself
    left = [line for line in report.summary().splitlines() if line.startswith('leftover')]
    assert left == ['leftover  .ok.zarr.reembed-99 (2.0 MB): left by a re-embedding of this store that stopped: '
                    'remove it once no such job is running',
                    'leftover  .ok.zarr.tmp-17-0a1b2c3d (0.0 MB): left by an extraction or import of this store that '
                    'stopped: remove it once no such job is running']
    assert (tmp_path / '.ok.zarr.reembed-99').exists()  # never removed
    # killed between the re-embedding's two renames: the store is only there under its set-aside name
    path.rename(tmp_path / '.ok.zarr.old-42')
    report = check_store(path)
    assert report.exit_code == 1
    assert ('leftover  .ok.zarr.old-42' in report.summary()
            and 'stopped before the new one took its place: rename it back to ok.zarr' in report.summary())


class _FailingWrites:
    """The store's Zarr group, with writes to one array raising (a full disk, a kill mid-chunk)."""

    def __init__(self, group: zarr.Group, name: str) -> None:
        self._group, self._name = group, name

    def __getitem__(self, name: str):
        arr = self._group[name]
        if name != self._name:
            return arr
        fail = self._name

        class _Array:
            def __setitem__(self, key, value) -> None:
                raise OSError(f'writing {fail} failed')

        return _Array()

    def __getattr__(self, name: str):
        return getattr(self._group, name)


@pytest.mark.parametrize('failing', ['features', 'timestamps', 'lengths', 'available', 'errors', 'tokens'])
def test_a_chunk_write_that_fails_leaves_the_chunk_pending(tmp_path: Path, failing: str) -> None:
    # the store's core rule: `status` is written last, so a write cut short anywhere reads as pending
    path = tmp_path / 'fail.zarr'
    store = create_store(path, W.video_ids(8), W.spec(4))
    data = pack_chunk([W.result_for(r) for r in store.chunk_rows(1)], W.MAX_ROWS, W.DIM, True)
    real = store.group
    store.group = _FailingWrites(real, failing)
    with pytest.raises(OSError, match=f'writing {failing} failed'):
        store.write_chunk(1, data)
    store.group = real
    assert (store.chunk_status(1) == PENDING).all()
    assert open_store(path, warn_random=False).pending_chunks() == [0, 1]


def test_check_exit_1_on_timestamps_after_a_rows_length(tmp_path: Path) -> None:
    path = tmp_path / 'times.zarr'
    _complete_store(path)
    g = zarr.open_group(str(path), mode='r+')
    assert g['lengths'][2] < W.MAX_ROWS and g['status'][2] == DONE
    g['timestamps'][2, int(g['lengths'][2])] = [7.0, 8.0]  # a time for the first row the video does not have
    report = check_store(path)
    assert report.exit_code == 1 and any('timestamps after their length' in p for p in report.problems)


def test_check_accepts_rows_that_end_where_they_start(tmp_path: Path) -> None:
    """A word spoken or shown for no time (whisper gives start == end) is a valid row, not damage."""
    store = create_store(tmp_path / 'instant.zarr', W.video_ids(1), W.spec(4))
    word = VideoResult(np.ones((2, W.DIM), np.float32), np.array([[1.5, 1.5], [1.5, 2.0]], np.float32), tokens=[])
    store.write_chunk(0, pack_chunk([word], W.MAX_ROWS, W.DIM, True))
    report = check_store(store.path)
    assert report.exit_code == 0, report.summary()


def test_rows_in_time_order_are_kept_and_rows_out_of_it_refused_across_row_chunks(tmp_path: Path) -> None:
    """Nothing checked the order of a video's rows: a row starting before the one before it (a store of
    other code) was read and sampled as if in time order. Legal orders stay legal: rows sharing a start
    (faces of one frame, words), rows of unknown time (imported: -1), a start before 0 (a frame shown
    before the file's start); a step back is found where it crosses a row chunk, and pack refuses it."""
    import dataclasses

    path = tmp_path / 'order.zarr'
    store = create_store(path, W.video_ids(4), dataclasses.replace(W.spec(4), row_chunk=2))

    def video(*times: tuple[float, float]) -> VideoResult:
        return VideoResult(np.ones((len(times), W.DIM), np.float32), np.asarray(times, np.float32).reshape(-1, 2),
                           tokens=[])

    legal = [video((0, 1), (0, 1), (0, 1), (1, 2), (1, 2)), video(*[(-1, -1)] * 6), video((-0.5, 0.5), (0.5, 1.5))]
    back = video((0, 1), (2, 3), (1.5, 2.5))  # the step back is from row 1 (chunk 0) to row 2 (chunk 1)
    with pytest.raises(StoreError, match=r'row 2 starts at 1.5 s, before a row before it \(2 s\)'):
        pack_chunk([back], W.MAX_ROWS, W.DIM, True)
    assert pack_chunk([back], W.MAX_ROWS, W.DIM, True, fail_unstorable=True).status[0] == FAILED
    with pytest.raises(StoreError, match=r'row 1 end \(0.5 s\) before they start \(1 s\)'):
        pack_chunk([video((0, 1), (1, 0.5))], W.MAX_ROWS, W.DIM, True)
    data = pack_chunk([*legal, legal[0]], W.MAX_ROWS, W.DIM, True)
    store.write_chunk(0, data)
    assert open_store(path, warn_random=False).read().lengths.tolist() == [5, 6, 2, 5]
    assert check_store(path).exit_code == 0
    data.timestamps[3] = back.timestamps  # written as other code would: write_chunk keeps its rules to pack
    data.features[3], data.lengths[3] = data.features[3][:3], 3
    store.write_chunk(0, data)
    said = (f'{path}: chunk 0 (videos 0-3): video 3 (vid0003): its row 2 starts at 1.5 s, before a row before it '
            'does (2 s)')
    with pytest.raises(StoreError, match=re.escape(said)):
        open_store(path, warn_random=False).read(rows=[0], arrays=('timestamps',))
    with pytest.raises(StoreError, match=re.escape(said)):
        list(open_store(path, warn_random=False).read_blocks([1])[1])
    report = check_store(path)
    assert report.exit_code == 1 and '1 rows have a row that starts before a row before it (first: row 3)' in \
        report.problems, report.summary()


def _drop_chunk_sums(path: Path) -> None:
    """The store as made before the per-chunk sums existed."""
    import shutil

    shutil.rmtree(path / 'chunk_sums')
    meta = json.loads((path / 'zarr.json').read_text())
    meta.get('consolidated_metadata', {}).get('metadata', {}).pop('chunk_sums', None)
    (path / 'zarr.json').write_text(json.dumps(meta))


def _repair_chunk_1(path: Path, python: str, env: dict) -> ExpertStore:
    """`check --repair` as a real process marks chunk 1 pending; rewriting it makes the store whole."""
    done = subprocess.run([python, '-m', 'shared.store', 'check', '--repair', str(path)], env=env,
                          capture_output=True, text=True, cwd=W.__file__.rsplit('/tests/', 1)[0])
    assert done.returncode == 2 and 'chunks 1 marked pending' in done.stdout, done.stdout + done.stderr
    store = open_store(path, mode='r+', warn_random=False)
    assert store.pending_chunks() == [1]
    store.write_chunk(1, pack_chunk([W.result_for(r) for r in store.chunk_rows(1)], W.MAX_ROWS, W.DIM, True))
    assert check_store(path).exit_code == 0
    return store


@pytest.mark.parametrize('old', [False, True], ids=['with-sums', 'made-before-sums'])
def test_a_missing_features_chunk_file_is_found_refused_and_redone(tmp_path: Path, old: bool, python: str,
                                                                   subprocess_env: dict) -> None:
    """Issue 18 item 7: deleting one features chunk file of a finished store left it "VALID,
    COMPLETE", and reading it gave zeros for that chunk's features."""
    path = tmp_path / 'lost.zarr'
    _complete_store(path)
    if old:
        _drop_chunk_sums(path)
    whole = open_store(path, warn_random=False).read()
    feature_file = path / 'features' / 'c' / '1' / '0' / '0'
    assert feature_file.is_file() and check_store(path).exit_code == 0
    feature_file.unlink()
    report = check_store(path)
    assert report.exit_code == 1 and report.damaged == [1], report.summary()
    said = 'no features chunk file' if old else 'its features data is not what was written'
    assert f'PROBLEM   chunk 1 (videos 4-7): {said}' in report.summary()
    store = open_store(path, warn_random=False)
    for how in ({}, {'rows': [5]}, {'ids': ['vid0006', 'vid0001']}):
        with pytest.raises(StoreError) as err:
            store.read(**how)
        text = str(err.value)
        assert text.startswith(f'{path}: chunk 1 (videos 4-7): ') and '\n' not in text
        assert f'python -m shared.store check --repair {path}`, then rerun the extraction' in text
    rows = store.read(rows=[0, 11, 8])  # the other chunks still read, in the order asked
    width = rows.features.shape[1]  # padded to the longest video read
    np.testing.assert_array_equal(rows.features, whole.features[[0, 11, 8], :width])
    # --repair marks the chunk pending: the store is incomplete, and rewriting the chunk makes it whole
    store = _repair_chunk_1(path, python, subprocess_env)
    np.testing.assert_array_equal(store.read().features, whole.features)


def test_chunks_whose_data_equal_the_fill_value_need_no_file(tmp_path: Path) -> None:
    """Zarr writes no file for a chunk of fill values (a chunk of failed or skipped videos has no
    features, lengths or available files); such a chunk is whole, with or without sums."""
    path = tmp_path / 'empty.zarr'
    store = create_store(path, W.video_ids(8), W.spec(4))
    nothing = [VideoResult.failed('cannot decode video', W.DIM)] * 2 + [VideoResult.skipped(W.DIM)] * 2
    store.write_chunk(0, pack_chunk(nothing, W.MAX_ROWS, W.DIM, True))
    store.write_chunk(1, pack_chunk([W.result_for(r) for r in store.chunk_rows(1)], W.MAX_ROWS, W.DIM, True))
    assert not (path / 'features' / 'c' / '0' / '0' / '0').exists()
    for old in (False, True):
        if old:
            _drop_chunk_sums(path)
        assert check_store(path).exit_code == 0, check_store(path).summary()
        assert (open_store(path, warn_random=False).read(rows=[0, 1, 2, 3]).status != PENDING).all()


@pytest.mark.parametrize('sums', ['garbage{', '[1,2]', '5', '{"features": "x"}'])
def test_damaged_chunk_sums_are_damage_not_a_traceback(tmp_path: Path, sums: str, python: str,
                                                       subprocess_env: dict) -> None:
    """Reviewer's defect 4 of issue 18: a chunk_sums value that is no JSON object of sums raised
    in every reader, in check and in check --repair."""
    path = tmp_path / 'sums.zarr'
    _complete_store(path)
    whole = open_store(path, warn_random=False).read()
    zarr.open_group(str(path), mode='r+')['chunk_sums'][1:2] = np.asarray([sums], dtype=str)
    report = check_store(path)
    assert report.exit_code == 1 and report.damaged == [1], report.summary()
    assert 'chunk 1 (videos 4-7): its recorded chunk sums are damaged' in report.summary()
    with pytest.raises(StoreError, match=r'chunk 1 \(videos 4-7\): its recorded chunk sums are damaged.*--repair'):
        open_store(path, warn_random=False).read(rows=[5])
    np.testing.assert_array_equal(open_store(path, warn_random=False).read(rows=[0]).features, whole.features[[0], :0])
    _repair_chunk_1(path, python, subprocess_env)


@pytest.mark.parametrize('damage', ['garbage', 'empty', 'truncated'])
def test_an_unreadable_chunk_file_is_refused_in_one_line_and_repaired(tmp_path: Path, damage: str, python: str,
                                                                      subprocess_env: dict) -> None:
    """Reviewer's defect 5 of issue 18: a features chunk file that cannot be decoded gave zarr's
    RuntimeError in every reader, and check --repair left the chunk as it was."""
    path = tmp_path / 'torn.zarr'
    _complete_store(path)
    whole = open_store(path, warn_random=False).read()
    chunk_file = path / 'features' / 'c' / '1' / '0' / '0'
    content = chunk_file.read_bytes()
    broken = {'garbage': b'\x00garbage' * 10, 'empty': b'', 'truncated': content[:len(content) // 2]}
    chunk_file.write_bytes(broken[damage])
    with pytest.raises(StoreError) as err:
        open_store(path, warn_random=False).read(rows=[5])
    text = str(err.value)
    assert text.startswith(f'{path}: chunk 1 (videos 4-7): its features chunk file cannot be read (')
    assert '\n' not in text
    assert f'`python -m shared.store check --repair {path}`, then rerun the extraction' in text
    report = check_store(path)
    assert report.exit_code == 1 and report.damaged == [1], report.summary()
    store = _repair_chunk_1(path, python, subprocess_env)
    np.testing.assert_array_equal(store.read().features, whole.features)


def test_a_retry_rewrite_cut_short_leaves_the_chunk_pending(tmp_path: Path) -> None:
    """Reviewer's defect 7 of issue 18: a kill while --retry-failed rewrote a finished chunk left
    it finished over data that no longer matched its sums: reads refused it, a plain rerun said
    every chunk was finished."""
    path = tmp_path / 'retry.zarr'
    _complete_store(path)
    store = open_store(path, mode='r+', warn_random=False)
    assert (store.chunk_status(1) == FAILED).any()  # row 5 failed: --retry-failed rewrites chunk 1
    redone = [W.result_for(r) if r != 5 else W.result_for(4) for r in store.chunk_rows(1)]
    real = store.group
    store.group = _FailingWrites(real, 'timestamps')  # the features went, then the kill
    with pytest.raises(OSError):
        store.write_chunk(1, pack_chunk(redone, W.MAX_ROWS, W.DIM, True))
    store.group = real
    assert store.pending_chunks() == [1]  # the rerun redoes it, whole
    assert check_store(path).exit_code == 2
    store.read()  # pending rows are not checked against sums
    store.write_chunk(1, pack_chunk(redone, W.MAX_ROWS, W.DIM, True))
    assert check_store(path).exit_code == 0 and not (store.chunk_status(1) == FAILED).any()


def test_a_read_of_some_arrays_reads_and_checks_only_those(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Training reads only the arrays it aggregates (`train.data.aggregated_arrays`): the others
    are None and their chunk files are not opened; what is read is still checked against the
    chunk's sums, unless the caller checked the chunk before (`verify=False`: neither its status
    nor its sums are read again)."""
    path = tmp_path / 'some.zarr'
    _complete_store(path)
    whole = open_store(path, warn_random=False).read()
    some = ('features', 'lengths', 'available')
    (path / 'errors' / 'c' / '1').write_bytes(b'\x00garbage')  # row 5 failed: chunk 1 has an errors file
    with pytest.raises(StoreError, match='its errors chunk file cannot be read'):
        open_store(path, warn_random=False).read(rows=[5])
    rows = open_store(path, warn_random=False).read(rows=[7, 5, 1], arrays=some)
    for name in ('video_ids', 'timestamps', 'status', 'errors', 'tokens'):
        assert getattr(rows, name) is None, name
    for name in some:  # a read is padded to its own longest video
        np.testing.assert_array_equal(getattr(rows, name), getattr(whole, name)[[7, 5, 1], :rows.features.shape[1]]
                                      if name == 'features' else getattr(whole, name)[[7, 5, 1]], err_msg=name)
    one_chunk = open_store(path, warn_random=False).read(rows=range(4, 8), arrays=some)
    np.testing.assert_array_equal(one_chunk.features, whole.features[4:8, :one_chunk.features.shape[1]])
    # damaged features are still refused; a read that skips the check gets the damaged data
    good = (path / 'features' / 'c' / '1' / '0' / '0').read_bytes()
    (path / 'features' / 'c' / '1' / '0' / '0').unlink()
    with pytest.raises(StoreError, match=r'chunk 1 \(videos 4-7\): its features data is not what was written'):
        open_store(path, warn_random=False).read(rows=[5], arrays=some)
    (path / 'features' / 'c' / '1' / '0' / '0').write_bytes(good)
    (path / 'chunk_sums' / 'c' / '1').write_bytes(b'\x00garbage')
    with pytest.raises(StoreError, match='chunk sums cannot be read'):
        open_store(path, warn_random=False).read(rows=[5], arrays=some)
    (path / 'status' / 'c' / '1').write_bytes(b'\x00garbage')  # read, it would be logged as unreadable
    with caplog.at_level(logging.WARNING, logger='shared.store'):
        rows = open_store(path, warn_random=False).read(rows=[5], arrays=some, verify=False)
    assert not caplog.records
    np.testing.assert_array_equal(rows.features, whole.features[[5], :rows.features.shape[1]])


def _edit_metadata(path: Path, array: str, **changes) -> None:
    """Change an array's metadata: its zarr.json, and the group's consolidated copy (which readers take) where
    there is one."""
    for file, where in ((path / array / 'zarr.json', ()), (path / 'zarr.json', ('consolidated_metadata', 'metadata',
                                                                                array))):
        meta = json.loads(file.read_text())
        node = meta
        for key in where:
            node = (node or {}).get(key)
        if node is not None:
            node.update(changes)
            file.write_text(json.dumps(meta))


@pytest.mark.parametrize('array, change, said', [
    ('features', {'data_type': 'float32'}, 'features has data type float32, expected float16'),
    ('status', {'data_type': 'int64'}, 'status has data type int64, expected uint8'),
    ('status', {'fill_value': 1}, "status has fill value '1', expected 0"),  # a lost status file reads "done"
    ('features', {'fill_value': 'NaN'}, "features has fill value 'nan', expected 0"),
])
def test_damaged_array_metadata_is_named_and_never_repaired_as_chunks(array: str, change: dict, said: str,
                                                                      tmp_path: Path, python: str,
                                                                      subprocess_env: dict) -> None:
    """A wrong data type or fill value in zarr.json made every chunk read wrongly: check called each chunk
    damaged (or, for status, the store incomplete) and --repair marked every finished chunk pending,
    throwing a whole extraction away over one metadata field; a status fill of 1 read a lost status
    file as done. Check names the metadata, and --repair leaves the chunks alone."""
    path = tmp_path / 'meta.zarr'
    _complete_store(path)
    _edit_metadata(path, array, **change)
    report = check_store(path)
    assert report.exit_code == 1 and said in ' '.join(report.problems) and not report.damaged, report.summary()
    done = subprocess.run([python, '-m', 'shared.store', 'check', '--repair', str(path)], env=subprocess_env,
                          capture_output=True, text=True, cwd=W.__file__.rsplit('/tests/', 1)[0])
    assert done.returncode == 1 and 'repaired' not in done.stdout and 'Traceback' not in done.stderr
    assert sorted(p.name for p in (path / 'status' / 'c').iterdir()) == ['0', '1', '2']  # no status file removed


@pytest.mark.parametrize('array, change, said', [
    ('available', {'data_type': 'uint8'}, 'available has data type uint8, expected bool'),  # read as it was
    ('features', {'chunk_grid': {'name': 'regular', 'configuration': {'chunk_shape': [2, W.MAX_ROWS, W.DIM]}}},
     f'features has chunk shape (2, {W.MAX_ROWS}, {W.DIM}), expected (4, {W.MAX_ROWS}, {W.DIM})'),
    ('status', {'chunk_grid': {'name': 'regular', 'configuration': {'chunk_shape': [2]}}},
     'status has chunk shape (2,), expected (4,)'),  # every status chunk read as pending: the store redone
])
def test_damaged_array_metadata_refuses_readers_with_a_remedy_that_works(array: str, change: dict, said: str,
                                                                        tmp_path: Path) -> None:
    """Readers got 'its features chunk file cannot be read (cannot reshape array of size 96 into shape
    (4,6,8)). Mark such chunks for redoing with `check --repair`', which redoes chunks and leaves the
    metadata wrong; a uint8 `available` read without an error. Open names expected and found, and the
    remedy it gives (make the store again) works."""
    from shared.store import create_replacement, swap_in

    path = tmp_path / 'meta.zarr'
    _complete_store(path)
    before = _arrays(path)
    swap_in(open_store(path, mode='r+', warn_random=False))  # consolidated, as a finished extraction leaves it
    _edit_metadata(path, array, **change)
    with pytest.raises(StoreError) as err:
        open_store(path, warn_random=False).read()
    assert said in str(err.value) and f'Restore {array}/zarr.json' in str(err.value), err.value
    assert 'extract --overwrite' in str(err.value) and 'check --repair' not in str(err.value).replace(
        '`check --repair` cannot mend', '')
    assert said in ' '.join(check_store(path).problems)
    new = create_replacement(path, W.video_ids(12), W.spec(4))  # what extract --overwrite does
    for c in range(new.n_chunks):
        new.write_chunk(c, pack_chunk([W.result_for(r) for r in new.chunk_rows(c)], W.MAX_ROWS, W.DIM, True))
    swap_in(new)
    assert check_store(path).exit_code == 0
    _assert_same(_arrays(path), before)


@pytest.mark.parametrize('damage, said', [
    ('lost', '4 video ids are empty (first: row 4)'),
    ('cut', 'video_ids of videos 4-7 cannot be read'),
])
def test_damaged_video_ids_are_invalid(damage: str, said: str, tmp_path: Path) -> None:
    """The ids are written once, when a store is made, and no chunk sums cover them: a lost chunk
    file of them read as empty ids (which videos those rows are unknown) and check said VALID,
    COMPLETE; a file cut short did too, and then a reader's traceback."""
    path = tmp_path / 'ids.zarr'
    _complete_store(path)
    f = path / 'video_ids' / 'c' / '1'
    f.unlink() if damage == 'lost' else f.write_bytes(f.read_bytes()[:5])
    report = check_store(path)
    assert report.exit_code == 1 and said in ' '.join(report.problems), report.summary()
    if damage == 'cut':
        with pytest.raises(StoreError, match='its video_ids cannot be read'):
            open_store(path, warn_random=False).video_ids
    with pytest.raises(StoreError, match='video ids must not be empty'):  # so no store holds one rightly
        create_store(tmp_path / 'empty.zarr', ['a', ''], W.spec(4))


@pytest.mark.parametrize('key, value', [('feature_dim', 'abc'), ('chunk_size', 0), ('max_rows', -5),
                                        ('max_rows', True)])
def test_a_damaged_layout_attribute_is_one_line(key: str, value, tmp_path: Path, python: str,
                                                subprocess_env: dict) -> None:
    """chunk_size 0 was a ZeroDivisionError traceback out of check, feature_dim 'abc' a ValueError."""
    path = tmp_path / 'attrs.zarr'
    _complete_store(path)
    meta = json.loads((path / 'zarr.json').read_text())
    meta['attributes'][key] = value
    (path / 'zarr.json').write_text(json.dumps(meta))
    done = _check_cli(python, subprocess_env, path)
    assert done.returncode == 1 and 'Traceback' not in done.stderr, done.stderr
    assert f'its attribute {key} is {json.dumps(value)}, not a whole number >= 1' in done.stdout


def test_a_finished_chunk_whose_sums_file_is_lost_is_damage(tmp_path: Path, python: str, subprocess_env: dict) -> None:
    """A lost chunk_sums file reads as no sums, and the chunk was then checked as in a store made before
    them, by its files alone: features of another chunk in its place (a file copied over it) passed as
    VALID and were read as its videos'. Every write records sums before its status, so a finished chunk
    of a store that has them must have its own."""
    import shutil

    path = tmp_path / 'lost.zarr'
    _complete_store(path)
    (path / 'chunk_sums' / 'c' / '1').unlink()
    shutil.copy(path / 'features' / 'c' / '2' / '0' / '0', path / 'features' / 'c' / '1' / '0' / '0')
    report = check_store(path)
    assert report.exit_code == 1 and report.damaged == [1], report.summary()
    assert 'chunk 1 (videos 4-7): its recorded chunk sums are missing' in report.summary()
    with pytest.raises(StoreError, match=r'chunk 1 \(videos 4-7\): its recorded chunk sums are missing.*--repair'):
        open_store(path, warn_random=False).read(rows=[5])
    _repair_chunk_1(path, python, subprocess_env)


def test_a_consolidated_store_is_not_written_again(tmp_path: Path) -> None:
    """Every run that found nothing to do consolidated the store again, rewriting zarr.json: on a read-only
    features mount that run failed (exit 1, 'Read-only file system ... zarr.json.partial') over a complete store."""
    from shared.store import swap_in

    path = tmp_path / 'once.zarr'
    _complete_store(path)
    swap_in(open_store(path, mode='r+', warn_random=False))  # the first completion consolidates
    before = (path / 'zarr.json').stat()
    assert json.loads((path / 'zarr.json').read_text()).get('consolidated_metadata')
    swap_in(open_store(path, mode='r+', warn_random=False))  # a rerun with nothing to do
    after = (path / 'zarr.json').stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_a_run_whose_store_was_replaced_meanwhile_writes_nothing_into_the_new_one(tmp_path: Path) -> None:
    """Zarr writes by path: a run still writing a store that another run's --overwrite replaced wrote its
    chunks, made with the old settings, into the replacement, sums and "done" status included, and
    check called the mix VALID. The write is refused; the replacement keeps its own chunks."""
    import os
    import shutil

    path = tmp_path / 'swapped.zarr'
    old_run = create_store(path, W.video_ids(12), W.spec(4))  # the plain run, opened before the swap
    new = tmp_path / 'new.zarr'
    _complete_store(new)
    before = _arrays(new)
    os.rename(path, tmp_path / 'aside.zarr')  # what swap_in's two renames do
    os.rename(new, path)
    with pytest.raises(StoreError, match='was replaced while this run wrote it'):
        old_run.write_chunk(1, pack_chunk([W.result_for(r) for r in old_run.chunk_rows(1)], W.MAX_ROWS, W.DIM,
                                          True))
    _assert_same(_arrays(path), before)
    assert check_store(path).exit_code == 0
    shutil.rmtree(tmp_path / 'aside.zarr')


def test_a_store_rebuilt_in_place_meanwhile_gets_nothing_of_the_run_that_opened_the_old_one(tmp_path: Path) -> None:
    """--overwrite of an import or a reembed removes the directory and builds the new store at the same
    path: ext4 gives the new directory the freed inode number back, so the inode alone let the old
    run's chunk into the rebuilt store (20 of 20 tries, a reviewer measured)."""
    import os
    import shutil

    path = tmp_path / 'rebuilt.zarr'
    old_run = create_store(path, W.video_ids(12), W.spec(4))
    inode = os.stat(path).st_ino
    shutil.rmtree(path)
    _complete_store(path)
    before = _arrays(path)
    if os.stat(path).st_ino != inode:  # the file system chose another inode: make it look reused
        old_run._where = (old_run._where[0], os.stat(path).st_ino, old_run._where[2])
    with pytest.raises(StoreError, match='was replaced while this run wrote it'):
        old_run.write_chunk(1, pack_chunk([W.result_for(r) for r in old_run.chunk_rows(1)], W.MAX_ROWS, W.DIM,
                                          True))
    _assert_same(_arrays(path), before)


@pytest.mark.parametrize('array, change, said', [
    ('status', {'node_type': 'group'}, 'its status is a Group, not an array'),
    ('status', {'node_type': 'group', 'attributes': {}}, 'GroupMetadata.__init__() got an unexpected keyword'),
    ('features', {'shape': [12, W.MAX_ROWS, W.DIM, 1]}, f'its features has shape (12, {W.MAX_ROWS}, {W.DIM}, 1), '
                                                          f'expected (12, {W.MAX_ROWS}, {W.DIM})'),
    ('features', {'shape': [12]}, f'its features has shape (12,), expected (12, {W.MAX_ROWS}, {W.DIM})'),
    ('lengths', {'shape': [12, 1]}, 'its lengths has shape (12, 1), expected (12,)'),
    # a received store of a few KB whose chunks decode to GBs (sec10: 172 KB read as 4 GB)
    ('features', {'chunk_grid': {'name': 'regular', 'configuration': {'chunk_shape': [4, 16000, 16000]}}},
     f'its features is chunked (4, 16000, 16000), beyond its chunk_size and shape (4, {W.MAX_ROWS}, {W.DIM})'),
    ('errors', {'chunk_grid': {'name': 'regular', 'configuration': {'chunk_shape': [2 ** 28]}}},
     'its errors is chunked (268435456,), beyond its chunk_size and shape (4,)'),
])
def test_an_array_of_the_wrong_kind_or_shape_is_one_line_for_check_and_readers(array: str, change: dict, said: str,
                                                                               tmp_path: Path, python: str,
                                                                               subprocess_env: dict) -> None:
    """A status that is a group was an AttributeError traceback out of check and every reader, a 1-D
    features an IndexError; a features or lengths of another rank passed open and failed the first read
    with numpy's 'shape mismatch' traceback."""
    path = tmp_path / 'kind.zarr'
    _complete_store(path)
    meta = json.loads((path / array / 'zarr.json').read_text())
    if 'shape' in change:
        k = len(change['shape'])
        grid = meta['chunk_grid']['configuration']['chunk_shape']
        change = {**change, 'chunk_grid': {'name': 'regular', 'configuration': {'chunk_shape': (grid + [1] * k)[:k]}},
                  'dimension_names': None}
    meta = {'zarr_format': 3, 'node_type': 'group', 'attributes': {}} if change == {'node_type': 'group'} else \
        {**meta, **change}
    (path / array / 'zarr.json').write_text(json.dumps(meta))
    done = _check_cli(python, subprocess_env, path)
    assert done.returncode == 1 and 'Traceback' not in done.stderr and said in done.stdout, done.stdout + done.stderr
    with pytest.raises(StoreError, match=re.escape(said)):
        open_store(path, warn_random=False).read()


def test_chunks_that_decode_past_the_limit_are_refused_before_a_read(tmp_path: Path) -> None:
    """Within its shape a chunk may still be forged to decode to GBs: (4, 16000, 16000) float16 of a
    store whose attributes say T = D = 16000 is 2 GB a chunk, from files of a few KB."""
    import dataclasses

    path = tmp_path / 'big.zarr'
    create_store(path, W.video_ids(4), dataclasses.replace(W.spec(4), max_rows=16000, feature_dim=16000))
    open_store(path, warn_random=False)  # its own layout: (4, 128, 16000) chunks of 16 MB
    _edit_metadata(path, 'features', chunk_grid={'name': 'regular', 'configuration': {'chunk_shape': [4, 16000, 16000]}})
    with pytest.raises(StoreError, match=re.escape('a chunk of its features (4, 16000, 16000) decodes to 1953 MiB, '
                                                   'more than the 1 GiB a chunk may (each read decodes one whole): '
                                                   'extract it again with --overwrite')):
        open_store(path, warn_random=False)


def test_a_layout_whose_chunks_would_be_refused_is_not_made(tmp_path: Path) -> None:
    """--chunk-size 4096 of 2048-dim features made a store of 2 GiB chunks that every open then refused
    as damaged; it is refused before anything is written, and an --overwrite with it keeps the old store."""
    import dataclasses

    path = tmp_path / 'big.zarr'
    spec = dataclasses.replace(W.spec(4), max_rows=128, feature_dim=2048, chunk_size=4096)
    with pytest.raises(StoreError, match=re.escape('a chunk of 4096 videos x 128 rows x 2048 dims decodes to 2048 MiB, '
                                                   'more than the 1 GiB a chunk may: give a --chunk-size of at most '
                                                   '2048')):
        create_store(path, W.video_ids(4), spec)
    assert list(tmp_path.iterdir()) == []
    old = create_store(path, W.video_ids(4), W.spec(4))
    with pytest.raises(StoreError, match='give a --chunk-size of at most 2048'):
        create_store(path, W.video_ids(4), spec, overwrite=True)
    assert open_store(path, warn_random=False).attrs['store_id'] == old.attrs['store_id']


def _inflating_zstd(prefix: bytes, size: int, frame_size: bool = False) -> bytes:
    """A zstd stream of a few KB that decodes to `prefix` and then `size` bytes 'a' (RLE blocks of
    128 KiB, 4 bytes each); without `frame_size` its header says nothing of its size, as a streamed
    frame's."""
    import struct

    out = bytearray(struct.pack('<I', 0xFD2FB528))
    out += bytes([0b11100000]) + struct.pack('<Q', len(prefix) + size) if frame_size else bytes([0, 7 << 3])
    blocks = [(0, len(prefix), prefix)] + [(1, min(1 << 17, size - at), b'a') for at in range(0, size, 1 << 17)]
    for i, (kind, n, payload) in enumerate(blocks):
        out += ((n << 3) | (kind << 1) | (i == len(blocks) - 1)).to_bytes(3, 'little') + payload
    return bytes(out)


#: reads each array of the store at argv[1] in a process that may map 2.5 GiB at most: a chunk that
#: inflated past it would be a MemoryError here, and the machine's memory in a real run
_READ_BOUNDED = '''
import resource, sys, warnings
resource.setrlimit(resource.RLIMIT_AS, (5 << 29, 5 << 29))
from shared.store import StoreError, check_store, open_store
store = open_store(sys.argv[1], warn_random=False)
for read in (lambda: store.video_ids, lambda: store.read(rows=[5], arrays=['errors']),
             lambda: store.read(rows=[9], arrays=['features', 'lengths'])):
    try:
        read()
        print('read')
    except StoreError as err:
        print(err)
# this process's own peak (VmHWM): ru_maxrss of a process forked from pytest counts pytest's memory before its exec
print('peak MiB', next(int(ln.split()[1]) for ln in open('/proc/self/status') if ln.startswith('VmHWM:')) >> 10)
'''


@pytest.mark.parametrize('frame_size', [False, True])
def test_chunk_files_that_inflate_past_the_limit_are_refused_before_they_are_decoded(
        frame_size: bool, tmp_path: Path, python: str, subprocess_env: dict) -> None:
    """Zarr decodes a zstd chunk whole before it looks at its size, and a string chunk (ids, errors,
    tokens) has none: a 98 KB errors chunk file decoded to 3 GiB (peak RSS 3.1 GiB, then a MemoryError
    only where the address space was limited), a features chunk alike. Each is refused from its headers
    in one line naming the store and the chunk; what the other chunks hold still reads."""
    import struct

    path = tmp_path / 'bomb.zarr'
    _complete_store(path)
    size = 3 << 30
    (path / 'video_ids' / 'c' / '0').write_bytes(_inflating_zstd(struct.pack('<II', 4, size), size, frame_size))
    (path / 'errors' / 'c' / '1').write_bytes(_inflating_zstd(struct.pack('<II', 4, size), size, frame_size))
    (path / 'features' / 'c' / '2' / '0' / '0').write_bytes(_inflating_zstd(b'', size, frame_size))
    done = subprocess.run([python, '-c', _READ_BOUNDED, str(path)], env=subprocess_env, capture_output=True, text=True,
                          cwd=W.__file__.rsplit('/tests/', 1)[0], timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert 'its video_ids cannot be read (a zstd chunk of' in lines[0], done.stdout
    for line, what in zip(lines[1:3], ('chunk 1 (videos 4-7): its errors', 'chunk 2 (videos 8-11): its features')):
        assert what in line and 'may decode to 3072 MiB, more than the 1024 MiB a chunk may' in line, done.stdout
    assert int(lines[3].split()[-1]) < 1024, done.stdout
    report = check_store(path)
    assert report.exit_code == 1 and 'video_ids of videos 0-3 cannot be read' in report.summary()


def test_a_compressor_whose_chunks_are_not_bounded_is_refused_at_open(tmp_path: Path) -> None:
    """A gzip (or blosc, lz4) chunk is decoded whole with no bound: a zarr.json that names one is refused."""
    path = tmp_path / 'gzip.zarr'
    _complete_store(path)
    meta = json.loads((path / 'errors' / 'zarr.json').read_text())
    meta['codecs'][1] = {'name': 'gzip', 'configuration': {'level': 5}}
    (path / 'errors' / 'zarr.json').write_text(json.dumps(meta))
    with pytest.raises(StoreError, match='its errors is compressed with gzip, which this code never writes'):
        open_store(path, warn_random=False)
    assert 'its errors is compressed with gzip' in check_store(path).summary()


@pytest.mark.parametrize('schema', [3, '2', None])
def test_a_store_of_a_schema_this_code_does_not_know_is_refused(schema, tmp_path: Path, python: str,
                                                                subprocess_env: dict) -> None:
    """SCHEMA_VERSION's readable versions were never looked at: a store written by a newer version (a
    layout whose arrays may mean something else) was read, trained on and resumed as one of ours."""
    path = tmp_path / 'newer.zarr'
    _complete_store(path)
    meta = json.loads((path / 'zarr.json').read_text())
    meta['attributes'].update(schema_version=schema, code_version='9.0.0')
    (path / 'zarr.json').write_text(json.dumps(meta))
    said = f'its schema_version is {json.dumps(schema)} (written by videoexperts "9.0.0"), but this code reads ' \
           'schema versions 1, 2'
    with pytest.raises(StoreError, match=re.escape(said)):
        open_store(path, warn_random=False)
    with pytest.raises(StoreError, match=re.escape(said)):  # nor is it resumed
        create_store(path, W.video_ids(12), W.spec(4))
    done = _check_cli(python, subprocess_env, path)
    assert done.returncode == 1 and said in done.stdout and 'Traceback' not in done.stderr


@pytest.mark.parametrize('ids', [['vid0005', 'vid0004', 'vid0006', 'vid0007'],  # two rows' ids swapped
                                 ['vid0000', 'vid0001', 'vid0002', 'vid0003']])  # chunk 0's ids copied over chunk 1's
def test_video_ids_other_than_those_a_store_was_made_with_are_refused(ids: list[str], tmp_path: Path) -> None:
    """No chunk sums cover the video ids: a video_ids chunk file whose ids were swapped gave each row
    to the other video, read without an error, trained on and called VALID by check. The ids' CRC is
    recorded when the store is made; a store made before it reads as it did."""
    path = tmp_path / 'ids.zarr'
    _complete_store(path)
    good = open_store(path, warn_random=False).read(ids=['vid0004']).features
    g = zarr.open_group(str(path), mode='r+')
    g['video_ids'][4:8] = np.asarray(ids, dtype=str)
    said = 'its video_ids are not those it was made with (a video_ids chunk file replaced or damaged)'
    with pytest.raises(StoreError, match=re.escape(said)):
        open_store(path, warn_random=False).read(ids=['vid0004'])
    text = check_store(path).summary()  # ids copied over others are there twice as well
    assert 'INVALID' in text and (said in text if ids[0] == 'vid0005' else '4 video ids are there twice' in text), text
    meta = json.loads((path / 'zarr.json').read_text())
    del meta['attributes']['video_ids_crc32']  # a store made before the ids' CRC: read as it was
    (path / 'zarr.json').write_text(json.dumps(meta))
    g['video_ids'][4:8] = np.asarray(['vid0004', 'vid0005', 'vid0006', 'vid0007'], dtype=str)
    np.testing.assert_array_equal(open_store(path, warn_random=False).read(ids=['vid0004']).features, good)
    assert check_store(path).exit_code == 0


def _forge(path: Path, chunk: int, **arrays) -> None:
    """Write arrays' values into a chunk of the store at `path` behind the writer's back, and record sums
    that match: what a store of an earlier version (before `pack_chunk`'s rules) or of other code holds."""
    from shared.store import _digest

    g = zarr.open_group(str(path), mode='r+')
    for name, (where, value) in arrays.items():
        g[name][where] = value
    store = open_store(path, warn_random=False)
    rows = store.chunk_rows(chunk)
    sums = json.loads(str(g['chunk_sums'][chunk]))
    for name in ('lengths', 'available', 'errors', 'tokens'):
        sums[name] = _digest(np.asarray(g[name][rows.start:rows.stop], dtype=g[name].dtype))
    count = store.row_block_count(np.clip(g['lengths'][rows.start:rows.stop], 0, None))
    for name in ('features', 'timestamps'):
        crc = 0
        for block in store.row_blocks(chunk, name, count):
            crc = _digest(block, crc)
        sums[name] = crc
    g['chunk_sums'][chunk:chunk + 1] = np.asarray([json.dumps(sums)], dtype=str)


@pytest.mark.parametrize('forged, said', [
    ({'lengths': (9, 99)}, f'video 9 has length 99 and available=True, which no writer stores (a length in [0, T={W.MAX_ROWS}]'),
    ({'lengths': (9, -5)}, 'video 9 has length -5 and available=True, which no writer stores'),
    ({'available': (9, False)}, 'video 9 has length 2 and available=False, which no writer stores'),
    ({'features': ((9, 0, 0), np.nan)}, 'its features hold NaN or inf values, which extraction never stores'),
    ({'timestamps': ((9, 1, 1), np.inf)}, 'its timestamps hold NaN or inf values, which extraction never stores'),
    ({'timestamps': ((9, 0), [3.0, 4.0])},
     'video 9 (vid0009): its row 1 starts at 1 s, before a row before it does (3 s); every writer stores'),
    ({'timestamps': ((9, 1, 1), 0.5)}, 'video 9 (vid0009): its row 1 ends at 0.5 s, before it starts at 1 s'),
])
def test_rows_no_writer_stores_are_refused_though_their_sums_match(forged: dict, said: str, tmp_path: Path) -> None:
    """Chunk sums catch what changed after a write, not what was written wrongly: a length of 99 in a
    store of T=6 divided its video's mean by 99, a negative one made a zero feature "available", an
    unavailable video with rows kept them, all trained on without an error; NaN stopped training with a
    non-finite loss blamed on the learning rate. Each is refused when its chunk is read, naming it."""
    path = tmp_path / 'forged.zarr'
    _complete_store(path)
    assert W.result_for(9).features.shape[0] == 2 and open_store(path, warn_random=False).read(rows=[9]).available[0]
    _forge(path, 2, **forged)
    store = open_store(path, warn_random=False)
    where = re.escape(f'{path}: chunk 2 (videos 8-11): {said}')
    with pytest.raises(StoreError, match=where):
        store.read(rows=[8])
    with pytest.raises(StoreError, match=where):
        head, blocks = store.read_blocks([8, 9])
        list(blocks)
    assert store.read(rows=[0, 4]).lengths.tolist() == [0, 4]  # the other chunks read as ever
    assert check_store(path).exit_code == 1


@pytest.mark.parametrize('kind, said', [
    ('fifo', 'errors/c/1 is no regular file (a FIFO, a device or a socket)'),
    ('dev_zero', 'errors/c/1 is no regular file (a FIFO, a device or a socket)'),
    ('sparse', 'errors/c/1: a read of 3072 MiB, more than its chunks may hold (1025 MiB)'),
])
def test_a_chunk_file_that_is_no_bounded_regular_file_is_refused_before_it_is_read(
        kind: str, said: str, tmp_path: Path, python: str, subprocess_env: dict) -> None:
    """Zarr reads a chunk file whole: one that was a FIFO hung every reader, a link to /dev/zero filled
    memory (a MemoryError at 3.3 s under a 4 GB limit), a sparse file of 3 GiB that takes no disk was read
    whole (12 s) before its decoding failed. Each is refused in one line naming the chunk, at once."""
    import os

    path = tmp_path / 'files.zarr'
    _complete_store(path)
    f = path / 'errors' / 'c' / '1'
    f.unlink()
    if kind == 'fifo':
        os.mkfifo(f)
    elif kind == 'dev_zero':
        os.symlink('/dev/zero', f)
    else:
        with open(f, 'wb') as sparse:
            sparse.truncate(3 << 30)
    done = subprocess.run([python, '-c', _READ_BOUNDED, str(path)], env=subprocess_env, capture_output=True, text=True,
                          cwd=W.__file__.rsplit('/tests/', 1)[0], timeout=60)
    lines = done.stdout.splitlines()
    assert done.returncode == 0 and lines[0] == 'read' and lines[2] == 'read', done.stdout + done.stderr
    assert f'chunk 1 (videos 4-7): its errors chunk file cannot be read ({said}' in lines[1], done.stdout
    assert int(lines[3].split()[-1]) < 1024, done.stdout
