"""Files written whole or not at all: a temporary file beside the target, fsync, rename.

A kill (Ctrl-C, SIGKILL, a preempted job) or a power cut while a file is written in place leaves
it cut short, and every later reader fails on it. Written here, the target keeps its previous
content until the new one is complete on disk, then `os.replace` swaps them in one step (POSIX
rename is atomic within a directory), and the directory is synced so that the rename survives.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import signal
import socket
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from shared.config import ConfigError

__all__ = ['append_text', 'compressed_record', 'atomic_write', 'atomic_save', 'atomic_write_text', 'fsync_dir', 'make_dir', 'sha256_file',
           'signals_deferred', 'held_lock', 'LOCK', 'WriteError', 'temp_path', 'remove_stale_temps', 'stop_asked',
           'raise_if_stopping', 'stop_handler']

#: the lock file `held_lock` keeps in a directory
LOCK = '.lock'


class WriteError(ConfigError, OSError):
    """A file that cannot be written (a full disk, a quota or a file-size limit, a read-only folder):
    an OSError, and a ConfigError so that every command reports it as its one line. Its `errno` and
    `filename` are the refused write's; its text is the message alone."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ''


#: what to do when the OS refuses a write, by errno
_FULL = 'free some space (or raise the limit) and rerun'
#: what a lock raises on a file system that has none (Lustre mounted without flock: ENOSYS; NFS
#: without its lock daemon: ENOLCK)
_NO_LOCKS = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EBADF)


def fsync_dir(path: str | os.PathLike) -> None:
    """Sync a directory's entries (a rename or a new file in it) to disk, where the OS allows."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot sync a directory; the rename is still atomic
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def signals_deferred(escalate: bool = False) -> Iterator[None]:
    """Ctrl-C and SIGTERM received inside the block take effect at its end; with `escalate`, a
    second one at once (a write that hangs stays interruptible; renames that must land together do
    not escalate). Main thread only: elsewhere Python runs no signal handlers anyway; nor where a
    handler was set from C, which cannot be put back. Blocks nest: a write that escalates inside
    a block that does not (the import's commit) hands its second signal to that block, to wait."""
    signals = (signal.SIGINT, signal.SIGTERM)
    before = {s: signal.getsignal(s) for s in signals}
    if threading.current_thread() is not threading.main_thread() or None in before.values():
        yield
        return
    got: list[int] = []
    restored: list[bool] = []

    def restore() -> None:
        if restored:  # once: an escalated signal's own handler may have set handlers since (to ignore more)
            return
        restored.append(True)
        for s, handler in before.items():
            signal.signal(s, handler)

    def hold(signum: int, _frame: Any) -> None:
        got.append(signum)
        if escalate and len(got) > 1:  # asked again: no more waiting
            restore()
            signal.raise_signal(signum)

    for s in signals:
        signal.signal(s, hold)
    try:
        yield
    finally:
        restore()
        if len(got) == 1 or (got and not escalate):  # (an escalated one has acted already)
            signal.raise_signal(got[0])


#: set by `stop_handler` (Ctrl-C or SIGTERM asked this process to stop); a command clears it as it starts
stop_asked = threading.Event()


def stop_handler(signum: int, frame: Any) -> None:
    """A handler for Ctrl-C and SIGTERM: KeyboardInterrupt, remembered in `stop_asked` for
    `raise_if_stopping`."""
    stop_asked.set()
    if not getattr(sys.unraisablehook, 'quiet_lost_interrupt', False):
        sys.unraisablehook = _quiet_lost_interrupt(sys.unraisablehook)
    raise KeyboardInterrupt


def _quiet_lost_interrupt(previous: Callable[[Any], None]) -> Callable[[Any], None]:
    """`sys.unraisablehook` that drops a KeyboardInterrupt lost in a finaliser while a stop is asked
    (`raise_if_stopping` raises it again), where Python printed 'Exception ignored' and its traceback
    under the one line a stopped command ends with; anything else goes to `previous`."""
    def hook(unraisable: Any) -> None:
        if not (isinstance(unraisable.exc_value, KeyboardInterrupt) and stop_asked.is_set()):
            previous(unraisable)

    hook.quiet_lost_interrupt = True  # type: ignore[attr-defined]
    return hook


def raise_if_stopping() -> None:
    """KeyboardInterrupt once more where `stop_handler` raised one that was lost: raised while Python
    runs a finaliser (a `__del__`, a weakref callback: the garbage collector runs them at any
    allocation, a DataLoader's iterator joins its workers in one), it is printed as "Exception
    ignored" and dropped, and a training of many epochs went on after its one Ctrl-C. Loops call it
    once a step."""
    if stop_asked.is_set():
        raise KeyboardInterrupt


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> None:
    """Call `write(f)` on a temporary file beside `path`, then put it in `path`'s place.

    The temporary file is `.NAME.HOST-PID.tmp` in the same directory (a rename never crosses file
    systems; HOST names the host, its boot and PID namespace: `_host`), one per writing process: two
    processes writing one path at once (two seeds' results into one base folder) each put a whole
    file in place, the last one staying. A write cut short leaves its file; a later write to `path`
    removes it once its process is gone (`remove_stale_temps`).
    Ctrl-C and SIGTERM wait for the write's end: a KeyboardInterrupt inside `torch.save` comes out
    as torch's own RuntimeError, and the file would be lost for a signal seconds later.
    """
    path = Path(path)
    remove_stale_temps(path)
    tmp = temp_path(path)
    with signals_deferred(escalate=True):
        try:
            with open(tmp, 'wb') as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException as err:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            # torch.save reports a failed write as its own RuntimeError, raised while handling the OSError
            cause = err if isinstance(err, OSError) else err.__context__ if isinstance(err, RuntimeError) else None
            if isinstance(cause, OSError) and not isinstance(cause, WriteError):
                raise _write_error(path, cause, 'the file there before, if any, is kept') from err
            raise
        fsync_dir(path.parent)


def _host() -> str:
    """8 hex digits naming where a temporary name's process runs: 4 of the host's name, then 4 of this
    boot of its kernel and its PID namespace, within which a PID tells whether that process is alive
    (`remove_stale_temps`). Short: a cluster's long host names would cost a long target name its last
    characters under the 255-byte limit."""
    instance = ''
    for source in ('/proc/sys/kernel/random/boot_id', '/proc/self/ns/pid'):
        with contextlib.suppress(OSError):
            instance += os.readlink(source) if source.endswith('/pid') else Path(source).read_text().strip()
    return (hashlib.sha256(socket.gethostname().encode()).hexdigest()[:4]
            + hashlib.sha256(instance.encode()).hexdigest()[:4])


def temp_path(path: str | os.PathLike, unique: bool = False) -> Path:
    """Where this process builds what then takes `path`'s place (a file or a folder): `.NAME.HOST-PID.tmp`
    beside it (`_host`), with a random part before `.tmp` when `unique`; `remove_stale_temps` knows it."""
    path = Path(path)
    return path.with_name(f'.{path.name}.{_host()}-{os.getpid()}{"-" + os.urandom(4).hex() if unique else ""}.tmp')


#: a leftover temporary file or folder of this host's name but not of this boot and PID namespace is
#: removed only once its process looks gone and it is this old: a live one in another PID namespace
#: (containers sharing the host's name) looks gone from here
_LEFTOVER_S = 3600
#: what follows `.NAME.` in a temporary name: `temp_path`'s, or those of earlier versions (`.NAME.tmp`,
#: and folders `.NAME.tmp-PID` and `.NAME.tmp-PID-HEX`, which did not say their host)
_TEMP = re.compile(r'(?P<tag>[0-9a-f]{8})-(?P<pid>[0-9]+)(?:-[0-9a-f]+)?\.tmp|tmp(?:-(?P<old>[0-9]+)(?:-[0-9a-f]+)?)?')


def remove_stale_temps(path: str | os.PathLike) -> None:
    """Remove the temporary files and folders that writers of `path` left beside it when killed (kill
    -9, a node lost): at once those of a process of this host's boot and PID namespace that is gone;
    once their process looks gone and an hour has passed those of this host's name from elsewhere (a
    container sharing the host's name, an earlier boot, a version whose names said only the host) and
    those of versions before names said a process; never another host's, whose processes cannot be
    seen from here (a shared file system). A live process's is never removed."""
    path = Path(path)
    prefix, here = f'.{path.name}.', _host()
    try:
        with os.scandir(path.parent) as entries:
            found = [(e.name, e.is_dir(follow_symlinks=False), e.stat(follow_symlinks=False).st_mtime)
                     for e in entries if e.name.startswith(prefix)]
    except OSError:
        return
    now = time.time()
    for name, is_dir, mtime in found:
        m = _TEMP.fullmatch(name[len(prefix):])
        if m is None:
            continue
        if m['tag'] == here:
            stale = not _alive(int(m['pid']))
        elif m['tag'] is not None:
            stale = m['tag'][:4] == here[:4] and not _alive(int(m['pid'])) and now - mtime > _LEFTOVER_S
        else:
            stale = (m['old'] is None or not _alive(int(m['old']))) and now - mtime > _LEFTOVER_S
        if stale:
            with contextlib.suppress(OSError):
                shutil.rmtree(path.parent / name) if is_dir else os.unlink(path.parent / name)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _write_error(path: Path, cause: OSError, kept: str) -> WriteError:
    fix = _FULL if cause.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else 'check that folder'
    err = WriteError(f'cannot write {path} ({cause.strerror or cause}): {fix}; {kept}')
    err.errno, err.filename = cause.errno, str(path)  # for callers that tell a full disk from a refusal
    return err


def append_text(path: str | os.PathLike, text: str) -> None:
    """Append `text` (UTF-8) to `path`; a refused write is a one-line WriteError. A line cut short
    by a full disk stays: readers of such logs (a run's metrics.jsonl) skip a line they cannot parse."""
    path = Path(path)
    try:
        with open(path, 'a', encoding='utf-8') as f:
            f.write(text)
    except OSError as err:
        raise _write_error(path, err, 'the lines before are kept') from err


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """`Path.write_text(text)` (UTF-8), written whole or not at all: a full disk or a kill leaves the
    previous file, never one cut short that every later reader fails on."""
    data = text.encode('utf-8')
    atomic_write(path, lambda f: f.write(data))


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """`torch.save(obj, path)`, written whole or not at all (see `atomic_write`)."""
    import torch

    atomic_write(path, lambda f: torch.save(obj, f))


def make_dir(path: str | os.PathLike, what: str, fix: str) -> Path:
    """`path` made with its parents, or a one-line ConfigError naming the file in its way and `fix`."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocking = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), path)
        raise ConfigError(f'{what} {path}: {blocking} is a file, not a directory: {fix}') from None
    except OSError as err:  # a folder this user cannot write, a read-only file system, a full disk
        raise _write_error(path, err, f'or {fix}') from err
    return path


@contextlib.contextmanager
def held_lock(directory: str | os.PathLike, what: str, fix: str) -> Iterator[Path]:
    """`directory` (made if need be) locked for this process inside the block, through its `LOCK`
    file; a one-line ConfigError naming the process that holds it, and `fix`, when another does.

    A POSIX record lock (`fcntl.lockf`), not `flock`: it belongs to this process alone, so the
    workers it forks (stream readers) do not keep it after it ends, and the OS drops it when the
    process ends, however it ends (kill -9 included): none is ever left stale. Within one process it
    guards nothing: a second `held_lock` of the same folder is granted, and its end releases both
    (trainings in one process run one after another). A lock file this user cannot write (another
    member's, in a group folder) is locked shared, which conflicts with theirs alike. On a file
    system without locks it warns and runs unguarded. The holder line in the file is advice only.
    """
    import fcntl

    directory = make_dir(directory, what, fix)
    path = directory / LOCK
    mode = fcntl.LOCK_EX
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # the umask decides, as for the run's other files
    except PermissionError as err:
        try:  # another member's lock file (0644 under umask 022): a shared lock conflicts with theirs all the same
            fd, mode = os.open(path, os.O_RDONLY), fcntl.LOCK_SH
        except OSError:
            raise _write_error(path, err, 'nothing was written') from err
    except OSError as err:
        raise _write_error(path, err, 'nothing was written') from err
    try:
        try:
            fcntl.lockf(fd, mode | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno in (errno.EACCES, errno.EAGAIN):
                holder = os.pread(fd, 200, 0).decode('utf-8', 'replace').strip() or 'another process'
                raise ConfigError(f'{what} {directory} is in use by {holder}: wait for it to end, or {fix}') from None
            if err.errno not in _NO_LOCKS:
                raise _write_error(path, err, 'nothing was written') from err
            import logging  # a file system without locks (Lustre without flock, NFS without lockd)

            logging.getLogger(__name__).warning('%s %s cannot be locked (%s): nothing stops a second process '
                                                'from using it', what, directory, err.strerror or err)
        else:
            with contextlib.suppress(OSError):  # advice for whoever is refused (a read-only fd writes none)
                os.ftruncate(fd, 0)
                os.pwrite(fd, f'process {os.getpid()} on {socket.gethostname()}'.encode(), 0)
        yield Path(directory)
    finally:
        os.close(fd)  # releases the lock


def sha256_file(path: str | os.PathLike) -> str:
    """The hex sha256 of a file's content, read in 1 MiB blocks (a checkpoint or weight file need not fit in memory)."""
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            h.update(block)
    return h.hexdigest()


def compressed_record(path: str | os.PathLike) -> str:
    """The name of a compressed record of a zip checkpoint, or '' (none, or no zip: torch's legacy format).

    torch.save stores every record as it is; torch.load inflates a deflated one whole, so a forged
    file of 260 KB read as a 256 MB tensor (one record; ten such, 2.5 GB) before any key was checked.
    """
    try:
        with zipfile.ZipFile(path) as z:
            return next((i.filename for i in z.infolist() if i.compress_type != zipfile.ZIP_STORED), '')
    except (zipfile.BadZipFile, OSError):  # no zip, or a damaged one: torch.load says what is wrong
        return ''
