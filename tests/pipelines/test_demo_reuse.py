"""`make demo` reuses a run (finished, or stopped with a checkpoint) only while it was trained with the
demo config as it is now."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipelines.demo import _set_aside_stale, _stale
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


def _saved_run(run: Path, source: Path, **train: object) -> None:
    """A finished-looking seed0 of `source` under `run` (config.yaml, last.pt, test metrics), its
    train settings changed by `train`."""
    seed0 = run / 'seed0'
    (seed0 / 'checkpoints').mkdir(parents=True)
    (seed0 / 'checkpoints' / 'last.pt').write_bytes(b'')
    (seed0 / 'test_metrics.json').write_text('{}')
    saved = {**to_dict(load_run_cfg(source)), 'seed': 0}
    saved['train'].update(train)
    (seed0 / 'config.yaml').write_text(yaml.safe_dump(saved))


def test_a_stale_run_is_moved_to_run_old_and_a_current_one_stays(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    source = config_path('mee', 'demo', None)
    current, stale = tmp_path / 'current', tmp_path / 'stale'
    _saved_run(current, source)
    _saved_run(stale, source, epochs=1)
    (tmp_path / 'stale.old' / 'seed0').mkdir(parents=True)  # an earlier one set aside: replaced
    _set_aside_stale(current, source)
    assert (current / 'seed0' / 'test_metrics.json').is_file()  # reused
    _set_aside_stale(stale, source)
    # its results gone from RUN (the demo trains it again), kept whole in RUN.old
    assert not stale.exists() and (tmp_path / 'stale.old' / 'seed0' / 'test_metrics.json').is_file()
    assert 'moved to' in capsys.readouterr().out


def test_a_saved_setting_since_removed_makes_a_run_stale(tmp_path: Path) -> None:
    """A config.yaml that no longer loads (a setting since removed) compares as saved: the keys of
    either side alone are differences too."""
    source = config_path('mee', 'demo', None)
    _saved_run(tmp_path, source, old_setting=3)
    assert _stale(tmp_path / 'seed0', source) == 'train.old_setting: 3 there, None now'
