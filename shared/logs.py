"""Logging for the command-line entry points of both stages."""
from __future__ import annotations

import logging
import sys

__all__ = ['setup_logging']


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
