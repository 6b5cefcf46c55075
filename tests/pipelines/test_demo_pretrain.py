"""`make demo-pretrain` end to end at a reduced size (issue 22, item 7): a narrated set in HowTo100M's
files, extraction, pretraining with two torchrun processes, zero-shot, from-scratch and fine-tuned
rows for MMT and the support-set model, and the chart."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.demo_pretrain import MODELS, ROWS
from pipelines.demo_pretrain import main as demo_pretrain
from train.config import saved_run_cfg


@pytest.mark.slow
def test_demo_pretrain_prints_three_rows_for_both_models(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    args = ['--data-root', str(tmp_path / 'data'), '--features-root', str(tmp_path / 'features'),
            '--runs', str(tmp_path / 'runs'), '--report', str(tmp_path / 'report'), '--videos', '10',
            '--narrated-videos', '4', '--narrated-seconds', '6', '12', '--set', 'train.epochs=1',
            '--set', 'train.batch_size=4']
    assert demo_pretrain(args) == 0
    out = capfd.readouterr().out
    assert 'howto100m: 4 videos' in out and '(4 videos with timed captions)' in out  # the real adapter read it
    for model in MODELS:
        assert 'torch.distributed.run --standalone --nproc-per-node 2' in out
        for row in ROWS:
            assert f'| {model} {row} |' in out
        pretrained = tmp_path / 'runs' / f'{model}_pretrain' / 'seed0'
        saved = saved_run_cfg(pretrained)
        assert (saved.data.dataset, saved.data.sample) == ('howto100m', MODELS[model])  # window / segment
        assert (pretrained / 'eval' / 'demo_official_test.json').is_file()  # zero-shot on the demo
        source = json.loads((tmp_path / 'runs' / f'{model}_finetuned' / 'seed0' / 'init_from.json').read_text())
        assert source['source'] == str((pretrained / 'checkpoints' / 'last.pt').resolve()) and source['loaded']
        assert not (tmp_path / 'runs' / f'{model}_scratch' / 'seed0' / 'init_from.json').exists()
    assert (tmp_path / 'report' / 'pretrain.png').stat().st_size > 10_000
    # a rerun reuses every stage
    assert demo_pretrain(args) == 0
    again = capfd.readouterr().out
    assert 'reusing' in again and 'torch.distributed.run' not in again
