"""Fixtures of the training tests. Their demo stores (`demo_stores`) are made in tests/conftest.py,
once per session for the training tests and the search server's."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from shared.store import DONE, StoreSpec, VideoResult, create_store, pack_chunk, store_path
from tests.conftest import DEMO_EXPERTS as EXPERTS

__all__ = ['EXPERTS', 'SSB_EPOCHS', 'tiny_args']
#: epochs of `ssb_demo_run`: the tiny T5 decoder writes the demo's caption templates after them
SSB_EPOCHS = 200


N_VIDEOS, DIM, ROWS = 12, 8, 3
WORDS = ['a', 'red', 'blue', 'cat', 'dog', 'tone', 'high', 'low', 'zoom', 'pan', 'video', 'of']


@pytest.fixture(scope='module')
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A demo-shaped dataset (demo.json, word vectors as text) and a complete object store of
    random features, written directly: enough for a real 1-epoch MEE run in a second."""
    root = tmp_path_factory.mktemp('tiny')
    rng = np.random.default_rng(0)
    ids = [f'demo{i:04d}' for i in range(N_VIDEOS)]
    videos = [{'id': v, 'file': f'videos/{v}.mp4',
               'captions': [' '.join(rng.choice(WORDS, 4)) for _ in range(2)]} for v in ids]
    data = root / 'data' / 'demo'
    data.mkdir(parents=True)
    (data / 'demo.json').write_text(json.dumps(
        {'videos': videos, 'splits': {'train': ids[:8], 'val': ids[8:10], 'test': ids[10:]}}))
    lines = [f'{len(WORDS)} 300'] + [f'{w} ' + ' '.join(f'{x:.3f}' for x in rng.standard_normal(300)) for w in WORDS]
    (data / 'vectors.txt').write_text('\n'.join(lines) + '\n')
    spec = StoreSpec(dataset='demo', expert='object', feature_dim=DIM, max_rows=ROWS, chunk_size=N_VIDEOS,
                     model='toy', weights='random')
    store = create_store(store_path(root / 'features', 'demo', 'object'), ids, spec)
    rows = [VideoResult(rng.standard_normal((ROWS, DIM)).astype(np.float32),
                        np.stack([np.arange(ROWS), np.arange(ROWS) + 1.0], axis=1), DONE) for _ in ids]
    store.write_chunk(0, pack_chunk(rows, ROWS, DIM, has_tokens=False))
    cfg = {'data': {'dataset': 'demo', 'split': 'official', 'word_vectors': '{data_root}/demo/vectors.txt',
                    'max_words': 6},
           'model': {'model': 'mee', 'embed_dim': 8, 'text_clusters': 2,
                     'experts': [{'name': 'object', 'dim': DIM}]},
           'train': {'optimizer': 'adam', 'lr': 0.001, 'epochs': 2, 'batch_size': 4, 'margin': 0.1}}
    (root / 'mee.yaml').write_text(yaml.safe_dump(cfg))
    return root


class Killed(BaseException):
    """A test's stand-in for kill -9 at a chosen point: nothing after it runs, nothing catches it."""


def tiny_args(tiny: Path, run: Path, *extra: str, config: Path | None = None) -> list[str]:
    """`python -m train` arguments of a run on the `tiny` dataset (its MEE config unless `config`)."""
    return ['--config', str(config or tiny / 'mee.yaml'), '--data-root', str(tiny / 'data'), '--features-root',
            str(tiny / 'features'), '--run-dir', str(run), '--device', 'cpu', '--no-progress', *extra]


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
    # the demo config's decoder size: the 32-d one of the retrieval tests wrote blends of the
    # caption templates (greedy BLEU-4 48-51 over seeds, no better than the best constant caption's 49.9)
    cfg['model']['text'].update(hidden=64, ffn=128)
    path.write_text(yaml.safe_dump(cfg))
    assert train_main(_args(data, features, path, tmp / 'run')) == 0
    return tmp / 'run'
