"""extract.reembed: an OCR or speech store's words embedded with other vectors, without OCR or ASR."""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from extract.experts._words import words_result
from extract.reembed import reembed
from shared.store import (DONE, FAILED, SKIPPED, StoreSpec, VideoResult, check_store, create_store, leftovers,
                          open_store, pack_chunk)
from shared.text import load_word_vectors
from tests.extract.test_av_experts import _word2vec


def test_reembed_keeps_each_videos_status_and_each_words_times(tmp_path: Path) -> None:
    """A done video's words that the new vectors have keep their own times; skipped and failed videos stay so,
    with their reasons; the store records the vectors it was embedded with."""
    old = _word2vec(tmp_path / 'old.bin', ['cat', 'dog', 'sun'], dim=4)
    new = _word2vec(tmp_path / 'new.bin', ['dog', 'sun', 'moon'], dim=8)
    tokens = [{'word': w, 'start': float(i), 'end': i + 0.5, 'conf': 0.9} for i, w in enumerate(['cat', 'dog', 'sun'])]
    spec = StoreSpec('toy', 'speech', 4, 8, chunk_size=2, has_tokens=True, config={'word_vectors': str(old)})
    store = create_store(tmp_path / 'speech.zarr', ['a', 'b', 'c'], spec)
    store.write_chunk(0, pack_chunk([words_result(tokens, load_word_vectors(old), 8),
                                     VideoResult.skipped(4, 'no audio stream')], 8, 4, True))
    store.write_chunk(1, pack_chunk([VideoResult.failed('cannot decode', 4)], 8, 4, True))
    rows = open_store(reembed(store.path, new, tmp_path / 'new.zarr')).read()
    assert rows.status.tolist() == [DONE, SKIPPED, FAILED] and rows.lengths.tolist() == [2, 0, 0]
    assert [str(e) for e in rows.errors] == ['', 'no audio stream', 'cannot decode']
    np.testing.assert_allclose(rows.timestamps[0, :2], [[1.0, 1.5], [2.0, 2.5]])  # dog's and sun's, not cat's
    vectors = load_word_vectors(new)
    np.testing.assert_allclose(rows.rows(0), np.stack([vectors.lookup('dog'), vectors.lookup('sun')]), atol=2e-3)
    assert open_store(tmp_path / 'new.zarr').attrs['config']['word_vectors'] == str(new.resolve())


def _speech_store(tmp_path: Path, path: Path | None = None,
                  ids: tuple[str, ...] = ('a', 'b')) -> tuple[Path, Path]:
    """A complete speech store (an OCR one at `path` named ocr.zarr) of two videos embedded with 4-d vectors,
    and a file of 8-d ones."""
    old = _word2vec(tmp_path / 'old.bin', ['cat', 'dog'], dim=4)
    new = _word2vec(tmp_path / 'new.bin', ['dog'], dim=8)
    path = path or tmp_path / 'speech.zarr'
    spec = StoreSpec('toy', path.stem, 4, 8, chunk_size=2, has_tokens=True, config={'word_vectors': str(old)})
    store = create_store(path, list(ids), spec)
    tokens = [{'word': 'dog', 'start': 0.0, 'end': 1.0, 'conf': 0.9}]
    store.write_chunk(0, pack_chunk([words_result(tokens, load_word_vectors(old), 8)] * 2, 8, 4, True))
    return store.path, new


@pytest.mark.parametrize('recorded', ['not json[', '{"a": 1}', '[{"word": 5}]', '[1, 2]',
                                      '[{"word": "dog", "start": 5, "end": 1, "conf": 1}]'])
def test_damaged_recorded_tokens_are_one_line_and_no_store(recorded: str, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    """Tokens that are not the list of {word, start, end} extraction records ended in json's JSONDecodeError,
    a TypeError or a KeyError traceback; tokens ending before they start made a new store that check
    calls INVALID."""
    import zarr

    from extract.reembed import main
    from shared.store import CHUNK_SUMS, _digest

    path, new = _speech_store(tmp_path)
    g = zarr.open_group(str(path), mode='r+')  # the tokens damaged, their sums made to agree
    g['tokens'][1:2] = np.asarray([recorded], dtype=str)
    sums = json.loads(str(g[CHUNK_SUMS][0]))
    sums['tokens'] = _digest(np.asarray(g['tokens'][0:2], dtype=g['tokens'].dtype))
    g[CHUNK_SUMS][0:1] = np.asarray([json.dumps(sums)], dtype=str)
    code = main([str(path), '--word-vectors', str(new), '--out', str(tmp_path / 'new.zarr')])
    err = capsys.readouterr().err
    assert code == 1 and 'Traceback' not in err and err.count('\n') == 1, err
    assert f'{path}: row 1: its recorded tokens are damaged' in err
    assert not (tmp_path / 'new.zarr').exists()
    report = check_store(path)  # and check says so (it asked only for a JSON list)
    assert report.exit_code == 1 and any(p.startswith('row 1: tokens are damaged') for p in report.problems)


def test_ctrl_c_between_the_swaps_renames_waits_for_both(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real SIGINT right after the old store is set aside took effect before the new one was in
    place: no store at the path, only hidden `.old-`/`.reembed-` directories. It waits for the
    second rename now, and the next run removes the old store the interrupted one left."""
    path, new = _speech_store(tmp_path)
    rename = os.rename

    def interrupted(src: object, dst: object) -> None:
        rename(src, dst)
        if Path(src) == path:  # the store set aside: Ctrl-C now
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(os, 'rename', interrupted)
    with pytest.raises(KeyboardInterrupt):
        reembed(path, new)
    monkeypatch.setattr(os, 'rename', rename)
    assert open_store(path).feature_dim == 8 and check_store(path).exit_code == 0
    reembed(path, _word2vec(tmp_path / 'other.bin', ['dog'], dim=6))  # the next run clears what is left
    assert open_store(path).feature_dim == 6 and leftovers(path) == []


def test_a_kill_between_the_swaps_renames_is_finished_by_the_next_run(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A kill that cannot wait (SIGKILL, a node lost) between the two renames leaves the new store
    and the old one whole under hidden names; `check` says what to do and the next re-embedding
    (or extraction) of the store puts the new one in place first."""
    path, new = _speech_store(tmp_path)
    rename = os.rename

    class Killed(BaseException):
        pass

    def killed(src: object, dst: object) -> None:
        rename(src, dst)
        if Path(src) == path:
            raise Killed

    monkeypatch.setattr(os, 'rename', killed)
    with pytest.raises(Killed):
        reembed(path, new)
    monkeypatch.setattr(os, 'rename', rename)
    assert not path.exists() and all('finish the swap' in what for _, what in leftovers(path))
    assert reembed(path, _word2vec(tmp_path / 'other.bin', ['dog'], dim=6)) == path
    assert open_store(path).feature_dim == 6 and leftovers(path) == [] and check_store(path).exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ['new.bin', 'old.bin', 'other.bin', 'speech.zarr']


def test_a_second_reembed_of_a_store_is_refused_while_the_first_runs(tmp_path: Path, subprocess_env: dict,
                                                                     repo_root: Path) -> None:
    """Two re-embeddings of one store at once built the same `.NAME.reembed-new`, each removing the
    other's, and both failed with tracebacks (KeyError: 'features'; OSError: Directory not empty), or
    the second read the store the first had swapped in and was told to `check --repair` it. The second
    is refused in one line while the first holds the store, which stays as it was; the first's kill -9
    leaves no lock behind."""
    import subprocess
    import sys
    import time

    path, new = _speech_store(tmp_path)
    cmd = [sys.executable, '-m', 'extract.reembed', str(path), '--word-vectors', str(new)]
    first = subprocess.Popen(cmd, cwd=repo_root, env=subprocess_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        deadline = time.time() + 120  # its replacement is begun (the store held): stopped there
        while not (tmp_path / '.speech.zarr.reembed-new').exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.002)
        os.kill(first.pid, signal.SIGSTOP)
        assert first.poll() is None, 'the first re-embedding ended before the second could start'
        second = subprocess.run(cmd, cwd=repo_root, env=subprocess_env, capture_output=True, text=True, timeout=120)
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.communicate(timeout=60)
    assert second.returncode == 1 and second.stderr == f'error: {path} is being re-embedded by another process: ' \
        "wait for it to end (its store then takes this one's place), and rerun only if you still need to\n"
    assert open_store(path).feature_dim == 4 and check_store(path).exit_code == 0
    assert reembed(path, new) == path  # the lock went with its process
    assert open_store(path).feature_dim == 8 and check_store(path).exit_code == 0 and leftovers(path) == []


@pytest.mark.slow
def test_a_run_to_out_killed_midway_leaves_no_store_there_and_its_rerun_builds_it(tmp_path: Path, subprocess_env: dict,
                                                                                  repo_root: Path) -> None:
    """`--out NEW` killed with SIGKILL while it writes: NEW was the half-written store itself, and the
    rerun of the same command refused it as a store that exists. Built aside and renamed into place,
    NEW is absent until whole, and the rerun makes it."""
    import subprocess
    import sys
    import time

    old = _word2vec(tmp_path / 'old.bin', ['cat', 'dog'], dim=4)
    new = _word2vec(tmp_path / 'new.bin', ['dog'], dim=8)
    spec = StoreSpec('toy', 'speech', 4, 8, chunk_size=2, has_tokens=True, config={'word_vectors': str(old)})
    store = create_store(tmp_path / 'speech.zarr', [f'v{i}' for i in range(300)], spec)
    row = words_result([{'word': 'dog', 'start': 0.0, 'end': 1.0, 'conf': 0.9}], load_word_vectors(old), 8)
    for c in range(store.n_chunks):  # a few seconds of writing, to be killed in
        store.write_chunk(c, pack_chunk([row] * 2, 8, 4, True))
    out = tmp_path / 'new.zarr'
    cmd = [sys.executable, '-m', 'extract.reembed', str(store.path), '--word-vectors', str(new), '--out', str(out)]
    proc = subprocess.Popen(cmd, cwd=repo_root, env=subprocess_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    # the chunks' arrays are made once the store is: its first chunks are being written
    while not any((p / 'status').is_dir() for p in (out, *tmp_path.glob('.new.zarr.*'))) \
            and proc.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    assert proc.poll() is None, 'the re-embedding ended before it could be killed'
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert not out.exists()
    again = subprocess.run(cmd, cwd=repo_root, env=subprocess_env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert check_store(out).exit_code == 0 and leftovers(out) == []
    rows = open_store(out).read()
    assert (rows.status == DONE).all() and rows.lengths.tolist() == [1] * 300
    assert sorted(p.name for p in tmp_path.iterdir()) == ['new.bin', 'new.zarr', 'old.bin', 'speech.zarr']


@pytest.mark.parametrize('cut', ['writing', 'set_aside', 'old_not_removed', 'set_aside_then_extracted'])
def test_what_a_reembed_of_earlier_versions_left_is_settled_by_the_next_run(cut: str, tmp_path: Path,
                                                                           python: str, subprocess_env: dict) -> None:
    """Before `swap_in`, a re-embedding wrote `.NAME.reembed-PID` and set the store aside as
    `.NAME.old-PID` for two bare renames; a kill left them, and every later run only reported them
    (a copy as large as the store each). The next run (here an extraction's `finish_swap`) puts a store
    set aside with none in its place back, removes set-aside stores behind a complete one and
    re-embeddings cut short, and keeps anything of a process still running, or the only complete copy."""
    import shutil
    import subprocess

    from shared.store import finish_swap

    path, new = _speech_store(tmp_path)
    dead = subprocess.run([python, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True)
    pid = int(dead.stdout)  # a process gone: its leftovers are nobody's
    made, aside = tmp_path / f'.speech.zarr.reembed-{pid}', tmp_path / f'.speech.zarr.old-{pid}'
    shutil.copytree(path, made)  # the copy the old code had written (complete, or cut short)
    if cut != 'writing':
        os.rename(path, aside)
    if cut == 'old_not_removed':
        os.rename(made, path)
    if cut == 'set_aside_then_extracted':  # the store set aside is the only complete one; an empty one in place
        create_store(path, ['a', 'b', 'c'], StoreSpec('toy', 'speech', 4, 8, chunk_size=2, has_tokens=True,
                                                      config={'word_vectors': str(tmp_path / 'old.bin')}))
    alive = tmp_path / f'.speech.zarr.reembed-{os.getpid()}'  # a run still going on this host
    alive.mkdir()
    finish_swap(path)
    kept = sorted([alive, *([aside] if cut == 'set_aside_then_extracted' else [])])
    assert not made.exists() and sorted(p for p, _ in leftovers(path)) == kept
    if cut == 'set_aside_then_extracted':
        assert open_store(aside).is_complete() and not open_store(path).is_complete()
    else:
        assert check_store(path).exit_code == 0


def _folder_and_store(tmp_path: Path) -> tuple[list[str], Path, Path]:
    """The arguments of an OCR extraction of a folder of one (empty) video, and a complete OCR store
    where that extraction writes, with the file of 8-d vectors to re-embed it with."""
    from shared.datasets import load_manifest

    data = tmp_path / 'videos'
    data.mkdir()
    (data / 'x.mp4').write_bytes(b'')
    features = tmp_path / 'features'
    path, new = _speech_store(tmp_path, features / load_manifest(f'folder:{data}').name / 'ocr.zarr')
    args = ['-m', 'extract', '--dataset', f'folder:{data}', '--features-root', str(features), '--expert', 'ocr',
            '--weights', 'random', '--set', f'word_vectors={tmp_path / "old.bin"}', '--workers', '0',
            '--chunk-size', '2', '--no-progress', '--retry-failed']
    return args, path, new


def _held_by_other(path: Path) -> bool:
    """Whether another process holds a lock of the store's directory (`held_store`)."""
    import fcntl

    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def test_an_extraction_of_a_store_being_reembedded_is_refused(tmp_path: Path, subprocess_env: dict,
                                                              repo_root: Path) -> None:
    """`python -m extract` of a store that a re-embedding was rebuilding went ahead: the re-embedding read
    chunks it was rewriting, then swapped its store in, and the extraction's later chunks went to the
    store swapped out. It is refused in one line, before its models load, and touches nothing."""
    import subprocess
    import sys
    import time

    args, path, new = _folder_and_store(tmp_path)
    first = subprocess.Popen([sys.executable, '-m', 'extract.reembed', str(path), '--word-vectors', str(new)],
                             cwd=repo_root, env=subprocess_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        deadline = time.time() + 120  # its replacement is begun (the store held): stopped there
        while not (path.parent / '.ocr.zarr.reembed-new').exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.002)
        os.kill(first.pid, signal.SIGSTOP)
        assert first.poll() is None, 'the re-embedding ended before the extraction could start'
        second = subprocess.run([sys.executable, *args], cwd=repo_root, env=subprocess_env, capture_output=True,
                                text=True, timeout=120)
    finally:
        first.kill()
        first.communicate(timeout=60)
    assert second.returncode == 1 and second.stderr == f'error: {path} is being re-embedded (python -m ' \
        'extract.reembed): wait for it to end, then rerun this command\n', second.stderr
    assert open_store(path).feature_dim == 4 and check_store(path).exit_code == 0  # untouched by the extraction


def test_a_reembed_of_a_store_an_extraction_writes_is_refused(tmp_path: Path, subprocess_env: dict,
                                                              repo_root: Path) -> None:
    """A re-embedding of a complete store that `extract --retry-failed` was rewriting went ahead, and
    swapped its copy in under the extraction. It is refused in one line naming the extraction; the
    extraction's lock is shared (shards of one run write one store) and goes with its process."""
    import subprocess
    import sys
    import time

    args, path, new = _folder_and_store(tmp_path)
    first = subprocess.Popen([sys.executable, *args], cwd=repo_root, env=subprocess_env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not _held_by_other(path) and first.poll() is None and time.time() < deadline:
            time.sleep(0.002)
        assert first.poll() is None, 'the extraction ended without holding the store'
        os.kill(first.pid, signal.SIGSTOP)
        second = subprocess.run([sys.executable, '-m', 'extract.reembed', str(path), '--word-vectors', str(new)],
                                cwd=repo_root, env=subprocess_env, capture_output=True, text=True, timeout=120)
    finally:
        first.kill()
        first.communicate(timeout=60)
    assert second.returncode == 1 and second.stderr == f'error: {path} is being written by an extraction (python -m ' \
        'extract): wait for it to end, then rerun this re-embedding\n', second.stderr
    assert open_store(path).feature_dim == 4
    assert reembed(path, new) == path and open_store(path).feature_dim == 8  # the lock went with its process


def test_two_reembeds_of_other_stores_to_one_out_never_mix(tmp_path: Path, subprocess_env: dict,
                                                           repo_root: Path) -> None:
    """Two re-embeddings of different stores to the same --out built the same `.OUT.reembed-new`: the
    second removed the first's and put its own at OUT, and the first then failed with a traceback. The
    second to finish is refused in one line; OUT is the first to finish's, whole, with nothing left over."""
    import subprocess
    import sys
    import time

    one, new = _speech_store(tmp_path)
    two, _ = _speech_store(tmp_path, tmp_path / 'other' / 'speech.zarr', ids=('c', 'd'))
    out = tmp_path / 'new.zarr'

    def building() -> bool:
        return any((p / 'status').is_dir() for p in tmp_path.glob('.new.zarr.*'))

    first = subprocess.Popen([sys.executable, '-m', 'extract.reembed', str(one), '--word-vectors', str(new),
                              '--out', str(out)], cwd=repo_root, env=subprocess_env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not building() and first.poll() is None and time.time() < deadline:
            time.sleep(0.002)
        os.kill(first.pid, signal.SIGSTOP)
        assert first.poll() is None, 'the first re-embedding ended before the second could start'
        assert reembed(two, new, out) == out
        os.kill(first.pid, signal.SIGCONT)
        _, err = first.communicate(timeout=120)
    finally:
        first.kill()
    assert first.returncode == 1 and err == f'error: {out} was made by another process while this re-embedding ' \
        'ran (another re-embedding to the same --out?): it is kept and nothing was written; rerun with another ' \
        '--out\n', err
    assert list(open_store(out).video_ids) == ['c', 'd'] and check_store(out).exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ['new.bin', 'new.zarr', 'old.bin', 'other', 'speech.zarr']
