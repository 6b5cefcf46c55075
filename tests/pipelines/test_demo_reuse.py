"""`make demo` reuses a finished run only while it was trained with the demo config as it is now."""
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
    saved['train']['epochs'] = 5  # more or fewer epochs continue a run: not a reason to train again
    (run / 'config.yaml').write_text(yaml.safe_dump(saved))
    assert _stale(run, source) == 'model.caption_weight: 10.0 there, 1.0 now'
