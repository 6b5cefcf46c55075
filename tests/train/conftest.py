"""Fixtures of the training tests: demo stores extracted once per session."""
from __future__ import annotations

from pathlib import Path

import pytest

EXPERTS = ['object', 'scene', 'audio']


@pytest.fixture(scope='session')
def demo_stores(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """60 demo videos with object, scene and audio stores (random weights, small inputs), made once for
    every training test module."""
    from extract.run import main as extract_main
    from shared.datasets.demo import DemoCfg, generate

    root = tmp_path_factory.mktemp('train')
    generate(root / 'data' / 'demo', DemoCfg(videos=60, seed=11, min_duration=2.0, max_duration=3.0), progress=False)
    code = extract_main(['--dataset', 'demo', '--data-root', str(root / 'data'), '--features-root',
                         str(root / 'features'), '--expert', ','.join(EXPERTS), '--weights', 'random',
                         '--set', 'resize=[40]', '--set', 'input_size=32', '--workers', '1', '--no-progress'])
    assert code == 0
    return root / 'data', root / 'features'
