"""Files written whole or not at all (`shared.files`), with real signals."""
from __future__ import annotations

import contextlib
import errno
import os
import signal
from pathlib import Path

import pytest
import torch

from shared.files import atomic_write


def test_ctrl_c_inside_a_write_takes_effect_once_the_file_is_in_place(tmp_path: Path) -> None:
    """A Ctrl-C in the middle of a checkpoint write: the checkpoint is written whole, then the
    KeyboardInterrupt comes (inside torch.save it came out as torch's own RuntimeError and the
    file was lost); the handler in place before is back."""
    handler = signal.getsignal(signal.SIGINT)
    target = tmp_path / 'last.pt'

    def write(f: object) -> None:
        f.write(b'first half ')
        os.kill(os.getpid(), signal.SIGINT)
        f.write(b'second half')

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, write)
    assert target.read_bytes() == b'first half second half' and not (tmp_path / '.last.pt.tmp').exists()
    assert signal.getsignal(signal.SIGINT) is handler

    class Preempted:  # the checkpoint's file, which gets a SIGTERM while torch.save writes it
        def __init__(self, f: object) -> None:
            self.f, self.sent = f, False

        def write(self, data: bytes) -> int:
            if not self.sent:
                self.sent = True
                os.kill(os.getpid(), signal.SIGTERM)
            return self.f.write(data)

        def flush(self) -> None:
            self.f.flush()

    previous = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))  # as extraction's
    try:
        with pytest.raises(KeyboardInterrupt):
            atomic_write(target, lambda f: torch.save({'weights': torch.ones(3)}, Preempted(f)))
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert torch.equal(torch.load(target, weights_only=True)['weights'], torch.ones(3))


def test_a_second_ctrl_c_inside_a_write_stops_it_at_once(tmp_path: Path) -> None:
    """A write that hangs (a stalled network disk) stays interruptible: the second Ctrl-C acts at
    once, nothing is put in the file's place, and the handler in place before is back."""
    handler = signal.getsignal(signal.SIGINT)
    target = tmp_path / 'last.pt'
    reached: list[str] = []

    def hanging(f: object) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        reached.append('after the first')
        os.kill(os.getpid(), signal.SIGINT)
        reached.append('after the second')

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, hanging)
    assert reached == ['after the first'] and not target.exists() and not (tmp_path / '.last.pt.tmp').exists()
    assert signal.getsignal(signal.SIGINT) is handler


def test_a_full_disk_while_a_run_file_is_rewritten_keeps_the_old_one(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The small files other commands read (a run's vocabulary, final.json, test_metrics.json, an
    index's table) are written whole or not at all: the disk filling up while one is rewritten
    left it cut short (Path.write_text), and every later load of the run failed on it."""
    import errno

    from train.captions import WordTokenizer

    vocab = tmp_path / 'vocab.json'
    WordTokenizer(['cat', 'dog']).save(vocab)

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, 'No space left on device')

    monkeypatch.setattr(os, 'fsync', full)  # the disk fills up as the new file is synced
    with pytest.raises(OSError, match='No space left'):
        WordTokenizer(['cat', 'dog', 'bird']).save(vocab)
    monkeypatch.undo()
    assert WordTokenizer.load(vocab).words == WordTokenizer(['cat', 'dog']).words
    assert [p.name for p in tmp_path.iterdir()] == ['vocab.json']


def test_results_are_written_whole():
    """Every file the train stage and the recipes write for the user (results, metrics, reports) goes through
    `atomic_write_text`/`atomic_write`: a plain `write_text` cut short by a kill or a full disk leaves a file every
    later reader (reproduce, paper_tables, the next resume) fails on."""
    root = Path(__file__).resolve().parents[2]
    files = [path for package in ('train', 'pipelines') for path in (root / package).rglob('*.py')]
    plain = [f'{path.relative_to(root)}:{n}' for path in files
             for n, line in enumerate(path.read_text().splitlines(), 1) if '.write_text(' in line]
    assert not plain, f'plain write_text (use shared.files.atomic_write_text): {plain}'


def test_a_checkpoint_write_past_a_file_size_limit_is_one_error_and_keeps_the_old_one(tmp_path: Path) -> None:
    """A real file-size limit (`ulimit -f`, what a full disk does to a write): torch.save's own
    RuntimeError ('unexpected pos ...') came out of training as a traceback; now it is a WriteError
    (a ConfigError: one line) naming the file, and the checkpoint there before is kept."""
    import resource

    from shared.config import ConfigError
    from shared.files import WriteError, atomic_save

    target = tmp_path / 'last.pt'
    atomic_save({'model': {'w': torch.zeros(4)}}, target)
    before = target.read_bytes()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, hard))  # Python ignores SIGXFSZ: writes fail with EFBIG
    try:
        with pytest.raises(WriteError) as caught:
            atomic_save({'model': {'w': torch.zeros(1 << 16)}}, target)  # 256 KB
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert isinstance(caught.value, ConfigError) and str(caught.value).startswith(f'cannot write {target} (File too large)')
    assert caught.value.errno == errno.EFBIG and caught.value.filename == str(target)  # callers can tell why
    assert target.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ['last.pt']


def test_an_append_past_a_file_size_limit_is_one_error_and_keeps_the_lines_before(tmp_path: Path) -> None:
    """metrics.jsonl's epoch lines are appended (`append_text`): a refused write was an OSError traceback."""
    import resource

    from shared.config import ConfigError
    from shared.files import WriteError, append_text

    log = tmp_path / 'metrics.jsonl'
    append_text(log, '{"epoch": 1}\n')
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 12, hard))  # Python ignores SIGXFSZ: writes fail with EFBIG
    try:
        with pytest.raises(WriteError) as caught:
            append_text(log, 'x' * (1 << 13))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert isinstance(caught.value, ConfigError) and str(caught.value).startswith(f'cannot write {log} (File too large)')
    assert log.read_text().startswith('{"epoch": 1}\n')


def test_a_lock_is_its_process_own_and_ends_with_it(tmp_path: Path) -> None:
    """A run directory's lock (`held_lock`): another process is refused, naming the holder; a forked
    child (a stream reader) does not keep it once its parent is gone: with flock the readers of a
    trainer killed with -9 held it for seconds (or for good, stuck on a read), refusing the resume."""
    import subprocess
    import sys

    from shared.config import ConfigError
    from shared.files import held_lock

    run = tmp_path / 'run'
    holder = ("import os, sys, time\nfrom shared.files import held_lock\n"
              "with held_lock(sys.argv[1], 'run directory', ''):\n"
              "    child = os.fork()\n    if child == 0:\n        time.sleep(60)\n        os._exit(0)\n"
              "    print(child, flush=True)\n    sys.stdin.read()\n")
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, '-c', holder, str(run)], cwd=root, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    child = int(proc.stdout.readline())
    try:
        with pytest.raises(ConfigError, match=f'run directory {run} is in use by process {proc.pid} on .*: wait '
                                              'for it to end, or pass another --run-dir'):
            with held_lock(run, 'run directory', 'pass another --run-dir'):
                pass
        proc.kill()  # the trainer killed with -9; its forked child lives on
        proc.wait(timeout=30)
        with held_lock(run, 'run directory', ''):
            os.kill(child, 0)  # the child still runs, and the lock is free
    finally:
        proc.kill()
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


def test_a_file_system_without_locks_warns_and_runs_unguarded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """Lustre mounted without flock answers ENOSYS (NFS without its lock daemon ENOLCK): every training
    there ended in an OSError traceback."""
    import fcntl

    from shared.files import held_lock

    def no_locks(fd: int, cmd: int) -> None:
        raise OSError(errno.ENOSYS, 'Function not implemented')

    monkeypatch.setattr(fcntl, 'lockf', no_locks)
    with held_lock(tmp_path / 'run', 'run directory', '') as run:
        assert run == tmp_path / 'run'
    assert 'cannot be locked (Function not implemented): nothing stops a second process' in caplog.text


def test_a_lock_file_this_user_cannot_write_is_locked_shared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another member's .lock in a group folder (0644 under umask 022): it ran unguarded, even while that
    member trained there; a shared lock on a read-only descriptor conflicts with theirs."""
    import subprocess
    import sys

    from shared.config import ConfigError
    from shared.files import LOCK, held_lock, make_dir

    run = tmp_path / 'run'
    holder = ("import sys\nfrom shared.files import held_lock\nwith held_lock(sys.argv[1], 'run directory', ''):\n"
              "    print('held', flush=True)\n    sys.stdin.read()\n")
    proc = subprocess.Popen([sys.executable, '-c', holder, str(run)], cwd=Path(__file__).resolve().parents[2],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    real_open = os.open

    def not_writable(path, flags, *args):  # as root nothing is refused: the refusal a non-owner gets
        if Path(path).name == LOCK and flags & os.O_RDWR:
            raise PermissionError(errno.EACCES, 'Permission denied', str(path))
        return real_open(path, flags, *args)

    try:
        assert proc.stdout.readline() == 'held\n'
        monkeypatch.setattr(os, 'open', not_writable)
        with pytest.raises(ConfigError, match=f'is in use by process {proc.pid}'):
            with held_lock(run, 'run directory', ''):
                pass
    finally:
        proc.kill()
        proc.wait(timeout=30)
    with held_lock(run, 'run directory', ''):  # theirs is gone: granted, shared
        pass
    monkeypatch.undo()
    with pytest.raises(ConfigError, match='cannot write /sys/videoexperts-test'):  # not a traceback either
        make_dir('/sys/videoexperts-test/run', 'run directory', 'pass another --run-dir')


_SLOW_WRITER = """
import sys, time
from pathlib import Path
from shared.files import atomic_write

def write(f):
    f.write(b'child ' * 1000)
    Path(sys.argv[2]).touch()  # half written: the parent writes now
    while not Path(sys.argv[3]).exists():
        time.sleep(0.01)
    f.write(b'end')

atomic_write(sys.argv[1], write)
"""


def test_two_processes_writing_one_file_at_once_each_put_a_whole_file_in_place(tmp_path: Path) -> None:
    """Two seeds' results.md into one base folder: with one temporary name per target, the second
    writer truncated the first one's half-written file and renamed it away, and the first failed
    with a misleading WriteError (or put the other's bytes in place)."""
    import subprocess
    import sys
    import time

    from shared.files import atomic_write_text

    target, half, go = tmp_path / 'results.md', tmp_path / 'half', tmp_path / 'go'
    root = Path(__file__).resolve().parents[2]
    child = subprocess.Popen([sys.executable, '-c', _SLOW_WRITER, str(target), str(half), str(go)], cwd=root,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not half.exists():
        assert child.poll() is None and time.monotonic() < deadline, child.stderr.read() if child.stderr else ''
        time.sleep(0.01)
    atomic_write_text(target, 'parent\n')
    assert target.read_text() == 'parent\n'
    go.touch()
    assert child.wait(60) == 0, child.stderr.read() if child.stderr else ''
    assert target.read_bytes() == b'child ' * 1000 + b'end'  # the last writer's file, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ['go', 'half', 'results.md']


def test_a_killed_writers_temporary_file_goes_at_a_later_write(tmp_path: Path) -> None:
    """At once where its process ran in this host's boot and PID namespace and is gone (an hour was asked
    of those too, and a checkpoint killed twice an hour left two copies); where it ran elsewhere under this
    host's name (a container sharing it, an earlier boot, names of earlier versions), a live process there
    looks gone: removed once an hour has passed. Another host's and a live process's stay."""
    import subprocess
    import sys
    import time

    from shared.files import _host, atomic_write_text

    gone = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True,
                          check=True).stdout.strip()
    target = tmp_path / 'results.md'
    elsewhere = _host()[:4] + ('0000' if _host()[4:] != '0000' else '1111')  # this host's name, another namespace
    dead = tmp_path / f'.results.md.{_host()}-{gone}.tmp'  # written just now
    live = tmp_path / f'.results.md.{_host()}-{os.getppid()}.tmp'  # a writer still at work
    recent = tmp_path / f'.results.md.{elsewhere}-{gone}.tmp'
    old = tmp_path / f'.results.md.{elsewhere}-{int(gone) + 1_000_000}.tmp'
    older = tmp_path / '.results.md.tmp'  # the one name of earlier versions
    other = tmp_path / '.results.md.0000abcd-1.tmp'  # another host's
    for p in (dead, recent, live, old, older, other):
        p.write_bytes(b'half')
    hours_ago = time.time() - 7200
    for p in (live, old, older, other):
        os.utime(p, (hours_ago, hours_ago))
    atomic_write_text(target, 'done\n')
    assert target.read_text() == 'done\n'
    assert not dead.exists() and not old.exists() and not older.exists()
    assert recent.exists() and live.exists() and other.exists()
    assert all(len(p.name) <= len(target.name) + 24 for p in (dead, live))  # short whatever the host name
