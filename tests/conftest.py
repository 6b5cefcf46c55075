"""Shared fixtures: the repository root and a small demo dataset generated once per session."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='session')
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope='session')
def subprocess_env() -> dict[str, str]:
    """Environment for child processes that import the project from this checkout."""
    env = dict(os.environ)
    env['PYTHONPATH'] = str(ROOT) + os.pathsep + env.get('PYTHONPATH', '')
    env.setdefault('PYTHONWARNINGS', 'ignore::UserWarning')
    return env


@pytest.fixture(scope='session')
def python() -> str:
    return sys.executable


@pytest.fixture(scope='session')
def small_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight demo videos (half without audio, most with a word), generated once.

    `$VIDEOEXPERTS_SMALL_DEMO` names such a folder generated beforehand, for machines without
    FFmpeg (the GPU host of the CUDA tests).
    """
    from shared.datasets.demo import DemoCfg, generate

    ready = os.environ.get('VIDEOEXPERTS_SMALL_DEMO')
    if ready:
        return Path(ready)
    out = tmp_path_factory.mktemp('data') / 'demo'
    generate(out, DemoCfg(videos=8, seed=7, no_audio_rate=0.5, word_rate=0.75, min_duration=2.0,
                          max_duration=3.0), progress=False)
    return out
