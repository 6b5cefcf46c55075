"""Logging for the command-line entry points of both stages."""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator

__all__ = ['setup_logging', 'without_stderr_lines']

_fd2 = threading.Lock()  # one redirection of fd 2 at a time


class _BarSafe(logging.StreamHandler):
    """Log lines printed above a tqdm progress bar, which is then drawn again, instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - as logging.StreamHandler: a broken stream never ends the run
            self.handleError(record)


def setup_logging(level: int = logging.WARNING) -> None:
    """Warnings and errors to stderr as 'LEVEL logger: message', clear of the progress bars
    (a no-op where logging is already set up, as under pytest)."""
    logging.basicConfig(level=level, format='%(levelname)s %(name)s: %(message)s', handlers=[_BarSafe()])


@contextlib.contextmanager
def without_stderr_lines(drop: Callable[[str], bool]) -> Iterator[None]:
    """Catch what is written to fd 2 meanwhile (by this process's C libraries and children too) and
    write it back after, less the lines `drop` says are noise the project already reports: nothing
    else is hidden, only delayed. A process without fd 2 (a daemon's) is left as it is."""
    with _fd2:
        _flush_stderr()
        try:
            saved = os.dup(2)
        except OSError:
            yield
            return
        with tempfile.TemporaryFile() as caught:
            os.dup2(caught.fileno(), 2)
            try:
                yield
            finally:
                _flush_stderr()
                os.dup2(saved, 2)
                os.close(saved)
                caught.seek(0)
                kept = [ln for ln in caught.read().splitlines(keepends=True)
                        if not drop(ln.decode(errors='replace').rstrip())]
                if kept:
                    os.write(2, b''.join(kept))


def _flush_stderr() -> None:
    """Python's buffered stderr out to fd 2 before fd 2 changes (sys.stderr may be None: pythonw)."""
    if sys.stderr is not None:
        sys.stderr.flush()
