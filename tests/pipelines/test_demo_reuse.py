"""`make demo` and `make demo-pretrain` reuse a run (finished, or stopped with a checkpoint) only while it
was trained with the demo config as it is now, and, fine-tuned, from its source as it is now."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml

from pipelines.demo import set_aside_stale, stale_run
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
    assert stale_run(run, source) is None
    saved['model']['caption_weight'] = 10.0  # the config before a change of the shipped one
    (run / 'config.yaml').write_text(yaml.safe_dump(saved))
    assert stale_run(run, source) == 'model.caption_weight: 10.0 there, 1.0 now'
    # epochs too: a finished demo run is reused as it is, never continued
    saved['model']['caption_weight'], saved['train']['epochs'] = 1.0, 5
    (run / 'config.yaml').write_text(yaml.safe_dump(saved))
    assert stale_run(run, source) == f'train.epochs: 5 there, {load_run_cfg(source).train.epochs} now'
    (run / 'config.yaml').write_text('model: [')  # unreadable: trained again, not a traceback
    assert 'config.yaml' in stale_run(run, source)


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


def test_a_run_fine_tuned_from_a_source_trained_again_since_is_set_aside(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture) -> None:
    source = tmp_path / 'source.pt'
    torch.save({}, source)
    config = config_path('ssb', 'demo', None)
    run = tmp_path / 'ssb_finetuned'
    _saved_run(run, config, init_from=str(source))
    old = run.with_name('ssb_finetuned.old')
    (old / 'seed0').mkdir(parents=True)  # an earlier one set aside: replaced
    last = run / 'seed0' / 'checkpoints' / 'last.pt'
    os.utime(source, (last.stat().st_mtime - 5,) * 2)
    set_aside_stale(run, config, '[4/5]', {'train.init_from': str(source)})
    assert run.is_dir() and capsys.readouterr().out == ''  # the source is older: reused
    assert stale_run(run / 'seed0', config) is not None  # without its source: another run
    os.utime(source, (last.stat().st_mtime + 5,) * 2)
    set_aside_stale(run, config, '[4/5]', {'train.init_from': str(source)})
    assert not run.exists() and (old / 'seed0' / 'checkpoints' / 'last.pt').is_file()
    assert f'its source {source.resolve()} was trained again since' in capsys.readouterr().out


def test_a_run_without_a_checkpoint_is_left_to_resume(tmp_path: Path) -> None:
    config = config_path('mmt', 'demo', None)
    run = tmp_path / 'mmt'
    (run / 'seed0').mkdir(parents=True)
    (run / 'seed0' / 'config.yaml').write_text('other: settings')
    set_aside_stale(run, config, '[3/5]')
    assert run.is_dir() and not run.with_name('mmt.old').exists()


def test_a_stale_run_is_moved_to_run_old_and_a_current_one_stays(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    source = config_path('mee', 'demo', None)
    current, stale = tmp_path / 'current', tmp_path / 'stale'
    _saved_run(current, source)
    _saved_run(stale, source, epochs=1)
    (tmp_path / 'stale.old' / 'seed0').mkdir(parents=True)  # an earlier one set aside: replaced
    set_aside_stale(current, source, '[3/5 train]')
    assert (current / 'seed0' / 'test_metrics.json').is_file()  # reused
    set_aside_stale(stale, source, '[3/5 train]')
    # its results gone from RUN (the demo trains it again), kept whole in RUN.old
    assert not stale.exists() and (tmp_path / 'stale.old' / 'seed0' / 'test_metrics.json').is_file()
    assert 'moved to' in capsys.readouterr().out


def test_a_saved_setting_since_removed_makes_a_run_stale(tmp_path: Path) -> None:
    """A config.yaml that no longer loads (a setting since removed) compares as saved: the keys of
    either side alone are differences too."""
    source = config_path('mee', 'demo', None)
    _saved_run(tmp_path, source, old_setting=3)
    assert stale_run(tmp_path / 'seed0', source) == 'train.old_setting: 3 there, None now'


def test_a_bad_setting_or_a_missing_run_moves_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A typo in --set is the command's fault, not the run's: the run stays (training then says what
    is wrong); a run folder that is not there yet is left to be made."""
    source = config_path('mee', 'demo', None)
    run = tmp_path / 'mee'
    _saved_run(run, source)
    set_aside_stale(run, source, '[3/5 train]', {'train.epochz': 2})
    set_aside_stale(tmp_path / 'never', source, '[3/5 train]')
    assert (run / 'seed0' / 'test_metrics.json').is_file() and not (tmp_path / 'mee.old').exists()
    assert capsys.readouterr().out == ''


def test_new_stills_remove_what_was_built_from_the_old_ones_and_say_so(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture) -> None:
    """The stills' stores and run went 'built from other videos' when the demo made new stills."""
    from pipelines.demo import ensure_demo_images
    from shared.datasets.demo import DemoImagesCfg

    small = dict(per_photo=(1, 0, 1), width=64, height=48)
    ensure_demo_images(tmp_path / 'data', DemoImagesCfg(seed=0, **small))
    stores = tmp_path / 'features' / 'demo_images'
    stores.mkdir(parents=True)
    ensure_demo_images(tmp_path / 'data', DemoImagesCfg(seed=0, **small), derived=(stores,))
    assert stores.is_dir() and 'reusing' in capsys.readouterr().out
    ensure_demo_images(tmp_path / 'data', DemoImagesCfg(seed=1, **small), derived=(stores,))
    assert not stores.exists() and f'removing {stores}: it was built from other still images' in capsys.readouterr().out
