"""Log lines of the entry points and the progress bar share stderr without garbling each other."""
from __future__ import annotations

import logging

import pytest
from tqdm import tqdm

from shared.logs import _BarSafe


def test_a_log_line_is_printed_clear_of_the_progress_bar(capsys: pytest.CaptureFixture) -> None:
    handler = _BarSafe()
    handler.setFormatter(logging.Formatter('%(levelname)s %(name)s: %(message)s'))
    with tqdm(total=3, desc='extract', ncols=60) as bar:
        bar.update(1)
        handler.emit(logging.LogRecord('extract.run', logging.WARNING, __file__, 1, 'clip.mp4: decoded with FFmpeg',
                                       None, None))
        bar.update(1)
    lines = capsys.readouterr().err.replace('\r', '\n').splitlines()
    # the message is a line of its own, not glued to a half-drawn bar
    assert 'WARNING extract.run: clip.mp4: decoded with FFmpeg' in [line.strip() for line in lines]
