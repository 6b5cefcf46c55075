"""Fixtures of the training tests: demo stores extracted once per session."""
from __future__ import annotations

from pathlib import Path

import pytest

EXPERTS = ['object', 'scene', 'audio']
#: epochs of `ssb_demo_run`: the tiny T5 decoder writes the demo's caption templates after them
SSB_EPOCHS = 200


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


@pytest.fixture(scope='session')
def ssb_demo_run(demo_stores: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A support-set run on the demo stores (object + scene, tiny T5), trained once for the captioning
    and probe tests. Its captioning objective is the identity one (eq. 2): the captioner is tested on
    captions of a video from its own features, which cross-captioning never trains in 8-video batches."""
    import yaml

    from tests.train.test_train import _args, _config
    from train.main import main as train_main

    data, features = demo_stores
    tmp = tmp_path_factory.mktemp('ssb')
    path = _config(tmp, 'ssb', epochs=SSB_EPOCHS)
    cfg = yaml.safe_load(path.read_text())
    cfg['model']['support_set'] = 'identity'
    cfg['train']['selection'] = 'last'  # the decoder keeps learning after the retrieval peaks
    path.write_text(yaml.safe_dump(cfg))
    assert train_main(_args(data, features, path, tmp / 'run')) == 0
    return tmp / 'run'
