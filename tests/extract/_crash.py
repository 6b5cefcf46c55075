"""Work functions for the pool tests, run in the pools' processes: a file named crash.* kills its
process, one named hang.* never returns, any other is decoded (or indexed)."""
from __future__ import annotations

import os
import time
from pathlib import Path

from extract.decode import decode_video, index_video
from extract.sampling import WHOLE, DecodedVideo, Sampling, Window


def _crash_or_hang(path: str) -> None:
    if Path(path).stem == 'crash':
        os._exit(3)
    if Path(path).stem == 'hang':
        time.sleep(3600)


def decode_or_crash(row: int, path: str, samplings: dict[str, Sampling], window: Window = WHOLE) -> DecodedVideo:
    _crash_or_hang(path)
    return decode_video(row, path, samplings, window)


def index_or_crash(row: int, path: str, samplings: dict[str, Sampling], window: Window = WHOLE) -> DecodedVideo:
    """`index_video`, with crash.* and hang.* as in `decode_or_crash`."""
    _crash_or_hang(path)
    return index_video(row, path, samplings)
