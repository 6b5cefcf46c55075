"""`make demo` reuses a run (finished, or stopped with a checkpoint) only while it was trained with the
demo config as it is now."""
from __future__ import annotations

from pathlib import Path

import yaml

from pipelines.demo import _stale
from shared.config import to_dict
from train.config import load_run_cfg
from train.main import config_path


def test_a_run_of_an_earlier_demo_config_is_stale(tmp_path: Path) -> None:
    source = config_path('ssb', 'demo', None)
    run = tmp_path / 'seed0'
    (run / 'checkpoints').mkdir(parents=True)
    (run / 'checkpoints' / 'last.pt').write_bytes(b'')
    saved = {**to_dict(load_run_cfg(source)), 'seed': 0}
    (run / 'config.yaml').write_text(yaml.safe_dump(saved))
    assert _stale(run, source) is None
    saved['model']['caption_weight'] = 10.0  # the config before a change of the shipped one
    (run / 'config.yaml').write_text(yaml.safe_dump(saved))
    assert _stale(run, source) == 'model.caption_weight: 10.0 there, 1.0 now'
    # epochs too: a finished demo run is reused as it is, never continued
    saved['model']['caption_weight'], saved['train']['epochs'] = 1.0, 5
    (run / 'config.yaml').write_text(yaml.safe_dump(saved))
    assert _stale(run, source) == f'train.epochs: 5 there, {load_run_cfg(source).train.epochs} now'
    (run / 'config.yaml').write_text('model: [')  # unreadable: trained again, not a traceback
    assert 'config.yaml' in _stale(run, source)
