"""`extract --overwrite` never loses a complete store: the new one is built beside the old one and
swapped in when complete; settings the model cannot run with fail before anything is touched."""
from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from extract.run import main
from shared.store import (check_store, create_replacement, create_store, finish_swap, leftovers, open_store,
                          pack_chunk, swap_in)
from tests import _store_writer as W
from tests.extract.conftest import TINY

ARRAYS = ('video_ids', 'features', 'timestamps', 'lengths', 'available', 'status', 'errors')
#: the new store's settings differ from the old one's, so that the two can be told apart
NEW = ['--set', 'resize=[48]', '--set', 'input_size=40']


def _arrays(path: Path) -> dict[str, np.ndarray]:
    g = zarr.open_group(str(path), mode='r')
    return {k: g[k][:] for k in ARRAYS}


def _equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return all(np.array_equal(a[k], b[k]) for k in ARRAYS)


def _args(data_root: Path, features: Path, *extra: str) -> list[str]:
    return ['--dataset', 'demo', '--data-root', str(data_root), '--features-root', str(features), '--expert', 'scene',
            *TINY, '--workers', '1', '--chunk-size', '2', '--no-progress', *extra]


@pytest.fixture(scope='module')
def old_and_new(small_demo: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A complete scene store made with TINY settings (the old one), and one made with NEW (what an
    --overwrite with NEW must end with)."""
    d = tmp_path_factory.mktemp('overwrite')
    assert main(_args(small_demo.parent, d / 'old')) == 0
    assert main(_args(small_demo.parent, d / 'new', *NEW)) == 0
    return d / 'old' / 'demo' / 'scene.zarr', d / 'new' / 'demo' / 'scene.zarr'


def _signal_at_random(proc: subprocess.Popen, sig: int, rng: random.Random, within: float) -> None:
    """Send `sig` a random time after the run says it starts extracting (its stores are then open:
    the old code had deleted the store by then)."""
    started = threading.Event()

    def read() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            if line.startswith('extracting'):
                started.set()
    threading.Thread(target=read, daemon=True).start()
    if started.wait(300):
        time.sleep(rng.uniform(0, within))
        proc.send_signal(sig)


def _check_cli(store: Path, python: str, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([python, '-m', 'shared.store', 'check', str(store)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.slow
@pytest.mark.parametrize('sig', [signal.SIGINT, signal.SIGKILL], ids=['SIGINT', 'SIGKILL'])
def test_an_interrupted_overwrite_leaves_a_complete_store_and_its_rerun_finishes(
        sig: int, old_and_new: tuple[Path, Path], small_demo: Path, tmp_path: Path, python: str,
        subprocess_env: dict, repo_root: Path) -> None:
    old, new = old_and_new
    before, after = _arrays(old), _arrays(new)
    assert not _equal(before, after)
    features = tmp_path / 'f'
    store = features / 'demo' / 'scene.zarr'
    shutil.copytree(old, store)
    cmd = [python, '-m', 'extract', *_args(small_demo.parent, features, *NEW, '--overwrite')]
    env = {**subprocess_env, 'PYTHONUNBUFFERED': '1'}
    rng = random.Random()
    killed = 0
    for attempt in range(8):  # a random time may fall after the run ends (it takes about 1 s): try again
        with open(tmp_path / 'stderr', 'w+') as errf:
            # a session of its own: the decode processes that a SIGKILL leaves behind are ended below
            proc = subprocess.Popen(cmd, cwd=repo_root, env=env, stdout=subprocess.PIPE, stderr=errf, text=True,
                                    start_new_session=True)
            try:
                _signal_at_random(proc, sig, rng, within=0.8)
                proc.wait(timeout=300)
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            errf.seek(0)
            err = errf.read()
        checked = _check_cli(store, python, subprocess_env, repo_root)
        assert checked.returncode == 0 and 'VALID, COMPLETE' in checked.stdout, (proc.returncode, err, checked.stdout)
        now = _arrays(store)
        assert _equal(now, before) or _equal(now, after)
        if proc.returncode == 0:  # finished before the signal: the new store is in place
            assert _equal(now, after)
            shutil.rmtree(store)
            shutil.copytree(old, store)
            continue
        # 130: stopped inside the run; -SIGINT: Python's exit for a KeyboardInterrupt that came before the
        # command's own handling began (interpreter start, imports)
        assert proc.returncode in ((130, -signal.SIGINT) if sig == signal.SIGINT else (-signal.SIGKILL,)), err
        killed += 1
        break
    assert killed, 'every run ended before the signal'
    again = subprocess.run(cmd, cwd=repo_root, env=subprocess_env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert _equal(_arrays(store), after)
    assert _check_cli(store, python, subprocess_env, repo_root).returncode == 0
    assert leftovers(store) == []


@pytest.mark.parametrize('bad', ['feature_dim=5', 'mean=[1]', 'resize=[100000,100000]'])
def test_settings_the_model_cannot_run_fail_before_the_store_is_touched(
        bad: str, old_and_new: tuple[Path, Path], small_demo: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture) -> None:
    old, _ = old_and_new
    store = tmp_path / 'demo' / 'scene.zarr'
    shutil.copytree(old, store)
    assert main(_args(small_demo.parent, tmp_path, '--overwrite', '--set', bad)) == 1
    err = capsys.readouterr().err
    assert err.startswith('error: scene: ') and err.count('\n') == 1 and 'Traceback' not in err, err
    assert _equal(_arrays(store), _arrays(old)) and check_store(store).exit_code == 0
    assert sorted(p.name for p in store.parent.iterdir()) == ['scene.zarr']  # nothing made beside it either


def _toy(path: Path, videos: int = 8) -> None:
    store = create_store(path, W.video_ids(videos), W.spec(4))
    for c in range(store.n_chunks):
        store.write_chunk(c, pack_chunk([W.result_for(r) for r in store.chunk_rows(c)], W.MAX_ROWS, W.DIM, True))


@pytest.mark.parametrize('cut', ['claimed', 'set_aside', 'old_not_removed'])
def test_a_swap_cut_short_is_finished_by_the_next_run(cut: str, tmp_path: Path) -> None:
    """A kill inside the swap (after the claim, between its two renames, before the old store is
    removed) leaves both stores whole; `finish_swap`, which every extraction of the store runs
    first, completes it, and `check` says what to do meanwhile."""
    path = tmp_path / 'toy.zarr'
    _toy(path, videos=8)
    replacement = create_replacement(path, W.video_ids(8), W.spec(2))  # another chunk size: told apart by it
    for c in range(replacement.n_chunks):
        replacement.write_chunk(c, pack_chunk([W.result_for(r) for r in replacement.chunk_rows(c)], W.MAX_ROWS,
                                              W.DIM, True))
    swap, old = path.with_name('.toy.zarr.overwrite-swap'), path.with_name('.toy.zarr.overwrite-old')
    os.rename(replacement.path, swap)
    if cut in ('set_aside', 'old_not_removed'):
        os.rename(path, old)
    if cut == 'old_not_removed':
        os.rename(swap, path)
    if cut != 'old_not_removed':
        assert any('finish the swap' in what for _, what in leftovers(path))
    finish_swap(path)
    assert open_store(path, warn_random=False).chunk_size == 2 and check_store(path).exit_code == 0
    assert leftovers(path) == []


def test_shards_finishing_together_swap_once(tmp_path: Path) -> None:
    """Each shard's run ends with `swap_in` when it sees the replacement complete; the second finds
    it claimed and leaves the store in place alone."""
    path = tmp_path / 'toy.zarr'
    _toy(path)
    first = create_replacement(path, W.video_ids(8), W.spec(2))
    second = create_replacement(path, W.video_ids(8), W.spec(2))  # another shard opens the same replacement
    for c in range(first.n_chunks):
        first.write_chunk(c, pack_chunk([W.result_for(r) for r in first.chunk_rows(c)], W.MAX_ROWS, W.DIM, True))
    assert swap_in(first).chunk_size == 2
    assert swap_in(second).chunk_size == 2
    assert check_store(path).exit_code == 0 and leftovers(path) == []


def test_a_finisher_that_saw_the_swap_before_another_did_it_whole_keeps_the_new_store_in_place(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, python: str, subprocess_env: dict) -> None:
    """Two shards finish one --overwrite; the second saw the claimed replacement before the first (a
    real process) swapped it in and removed the old store, and renamed after: it moved the new store
    aside as `.overwrite-old`, leaving none in place, and the next extraction then made an empty store
    there and removed the complete one as old. The finishers take turns; the second finds nothing to do."""
    import shared.store as S

    path = tmp_path / 'toy.zarr'
    _toy(path)
    new = create_replacement(path, W.video_ids(8), W.spec(2))
    for c in range(new.n_chunks):
        new.write_chunk(c, pack_chunk([W.result_for(r) for r in new.chunk_rows(c)], W.MAX_ROWS, W.DIM, True))
    swap = path.with_name('.toy.zarr.overwrite-swap')
    os.rename(new.path, swap)  # claimed by the first finisher's swap_in
    real, others = S.is_store, []

    def is_store(p: os.PathLike) -> bool:
        seen = real(p)
        if Path(p) == swap and seen and not others:  # the other finisher does its whole swap now, if it may
            others.append(subprocess.Popen([python, '-c', f'from shared.store import finish_swap; '
                                                          f'finish_swap({str(path)!r})'], env=subprocess_env,
                                           cwd=W.__file__.rsplit('/tests/', 1)[0], stderr=subprocess.PIPE, text=True))
            with contextlib.suppress(subprocess.TimeoutExpired):
                others[0].wait(timeout=3)
        return seen

    monkeypatch.setattr(S, 'is_store', is_store)
    finish_swap(path)
    assert others and others[0].wait(timeout=60) == 0, others[0].stderr.read()
    monkeypatch.undo()
    assert open_store(path, warn_random=False).chunk_size == 2 and check_store(path).exit_code == 0
    assert leftovers(path) == []
    create_store(path, W.video_ids(8), W.spec(2))  # what the next extraction opens: the new store, complete
    assert open_store(path, warn_random=False).is_complete()


def test_a_swap_syncs_its_renames_to_disk_before_the_old_store_goes(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The two renames of a swap are synced (the folder that holds the store) while the old store is still
    aside: a power cut after its removal must not find the renames undone (the store gone, or the old one
    back without its files). The real fsync runs; the test only sees which folder it was given."""
    import os

    path = tmp_path / 'toy.zarr'
    _toy(path)
    new = create_replacement(path, W.video_ids(8), W.spec(2))
    for c in range(new.n_chunks):
        new.write_chunk(c, pack_chunk([W.result_for(r) for r in new.chunk_rows(c)], W.MAX_ROWS, W.DIM, True))
    real, synced = os.fsync, []

    def fsync(fd: int) -> None:
        where = Path(os.readlink(f'/proc/self/fd/{fd}'))
        if where == tmp_path:  # the folder of the renames: the new store in place, the old one kept aside
            synced.append((open_store(path).chunk_size, len(leftovers(path))))
        real(fd)

    monkeypatch.setattr(os, 'fsync', fsync)
    assert swap_in(new).chunk_size == 2
    assert (2, 1) in synced and leftovers(path) == []



def test_a_feature_dim_a_per_video_expert_does_not_give_leaves_no_store(small_demo: Path, tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture) -> None:
    """Reviewer's defect 6 of issue 18: `--expert audio --set feature_dim=5` made the store, failed
    with "128 feature rows but 5 timestamps", and the corrected command was then refused as "exists
    with other settings"; with --overwrite, `.audio.zarr.overwrite-new` was left behind."""
    def audio(*extra: str) -> list[str]:
        return ['--dataset', 'demo', '--data-root', str(small_demo.parent), '--features-root', str(tmp_path),
                '--expert', 'audio', '--weights', 'random', '--workers', '1', '--chunk-size', '2', '--no-progress',
                *extra]

    store = tmp_path / 'demo' / 'audio.zarr'
    for extra in ([], ['--overwrite']):
        assert main(audio('--set', 'feature_dim=5', *extra)) == 1
        err = capsys.readouterr().err
        assert err.startswith('error: audio: the model gives features of width 128, but feature_dim is 5'), err
        assert err.count('\n') == 1, err
        if not extra:
            assert not store.parent.exists() or list(store.parent.iterdir()) == []
            assert main(audio()) == 0  # the corrected command
            complete = _arrays(store)
        else:  # the old store as it was, nothing beside it
            assert _equal(_arrays(store), complete) and sorted(p.name for p in store.parent.iterdir()) == ['audio.zarr']
