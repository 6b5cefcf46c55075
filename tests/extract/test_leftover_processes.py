"""Every process an extraction starts (decode workers, multiprocessing's resource tracker) ends when
the extraction ends: on success, on failure, on Ctrl-C and when it is killed outright."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.extract.conftest import TINY

MARK = 'VIDEOEXPERTS_TEST_PROCESS_MARK'

#: `python -m extract`, with one bug put in: the fourth video fed to the experts raises, after the
#: decode workers have started (a genuine bug's path: a traceback and exit 1)
FAILING = '''
import runpy, sys
import extract.run as run
fed, feed = [0], run._feed
def _feed(*a, **k):
    fed[0] += 1
    if fed[0] == 4:
        raise RuntimeError('a bug on the fourth video')
    return feed(*a, **k)
run._feed = _feed
sys.argv = ['extract', *sys.argv[1:]]
runpy.run_module('extract', run_name='__main__', alter_sys=True)
'''


def _marked(mark: str) -> list[tuple[int, str]]:
    """(pid, command line) of every live process whose environment carries `mark`: the run's
    children inherit it, and keep it when orphaned (their parent chain is then gone)."""
    found = []
    for d in Path('/proc').iterdir():
        if not d.name.isdigit():
            continue
        try:
            if f'{MARK}={mark}'.encode() in (d / 'environ').read_bytes().split(b'\0'):
                stat = (d / 'stat').read_text()
                if stat[stat.rindex(')') + 2] != 'Z':  # a zombie has ended; its parent reaps it
                    found.append((int(d.name), (d / 'cmdline').read_bytes().replace(b'\0', b' ').decode()[:150]))
        except (OSError, ValueError):
            continue
    return found


def _left_after(mark: str, seconds: float = 10.0) -> list[tuple[int, str]]:
    """Processes still marked after up to `seconds` (the resource tracker exits once the last
    process holding its pipe has)."""
    deadline = time.monotonic() + seconds
    while (left := _marked(mark)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='reads /proc')
@pytest.mark.parametrize('how', ['success', 'failure', 'SIGINT', 'SIGTERM', 'SIGKILL'])
def test_no_process_outlives_an_extraction(how: str, small_demo: Path, tmp_path: Path, python: str,
                                           subprocess_env: dict, repo_root: Path) -> None:
    mark = uuid.uuid4().hex
    env = {**subprocess_env, MARK: mark, 'PYTHONUNBUFFERED': '1'}
    args = ['--dataset', 'demo', '--data-root', str(small_demo.parent), '--features-root', str(tmp_path / 'f'),
            '--expert', 'scene', *TINY, '--workers', '1', '--chunk-size', '2', '--no-progress']
    cmd = [python, '-c', FAILING, *args] if how == 'failure' else [python, '-m', 'extract', *args]
    errf = open(tmp_path / 'stderr', 'w+')  # a file, not a pipe: a leftover process would hold a pipe open
    proc = subprocess.Popen(cmd, cwd=repo_root, env=env, stdout=subprocess.DEVNULL, stderr=errf, text=True)
    try:
        # the scan sees the run itself (it carries the marker too): a scan that could see nothing passes nothing
        deadline = time.monotonic() + 60
        while not _marked(mark):
            assert proc.poll() is None and time.monotonic() < deadline, 'the marked run was never seen in /proc'
            time.sleep(0.02)
        if how.startswith('SIG'):
            # mid-run: once a decode worker is up (a marked process other than the run itself)
            deadline = time.monotonic() + 300
            while not any('spawn_main' in c for _, c in _marked(mark)) and proc.poll() is None:
                assert time.monotonic() < deadline, 'no decode worker started'
                time.sleep(0.05)
            assert proc.poll() is None, 'the run ended before the signal'
            time.sleep(0.5)
            proc.send_signal(getattr(signal, how))
        proc.wait(timeout=300)
        errf.seek(0)
        err = errf.read()
        expected = {'success': (0,), 'failure': (1,), 'SIGINT': (130, -signal.SIGINT), 'SIGTERM': (130, -signal.SIGTERM),
                    'SIGKILL': (-signal.SIGKILL,)}[how]
        if how.startswith('SIG'):  # a tiny run may end in the half second before the signal: what counts is below
            expected += (0,)
        assert proc.returncode in expected, err
        if how == 'failure':
            assert 'a bug on the fourth video' in err
        left = _left_after(mark)
    finally:
        errf.close()
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        for pid, _ in _marked(mark):  # never leave them to the next test
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert left == [], f'left behind after {how}: {left}'


def test_a_worker_killed_while_sending_does_not_hang_the_pool() -> None:
    """A decode worker killed half way through sending its video (an interrupted run kills them)
    left the pool's manager thread reading the rest for ever, and `python -m extract` hung at exit,
    which joins that thread. The half message is written here as the killed worker left it."""
    import concurrent.futures as cf
    import multiprocessing
    import struct

    from extract.pool import _kill_processes

    pool = cf.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context('spawn'))
    try:
        assert pool.submit(int, '7').result(timeout=60) == 7  # the worker and the manager thread run
        writer = pool._result_queue._writer
        os.write(writer.fileno(), struct.pack('!i', 1000) + b'x' * 10)  # a 1000-byte message cut at 10
        time.sleep(0.5)  # the manager thread is now reading the rest
        _kill_processes(pool)
        pool._executor_manager_thread.join(timeout=20)
        assert not pool._executor_manager_thread.is_alive(), 'the pool waits for the rest of a dead worker\'s message'
    finally:
        pool._result_queue._writer.close()  # (without the fix, lets the thread end, and this test's process exit)
        pool.shutdown(wait=False)
