"""`make demo-pretrain` end to end at a reduced size (issue 22, item 7): a narrated set in HowTo100M's
files, extraction, pretraining with two torchrun processes, zero-shot, from-scratch and fine-tuned
rows for MMT and the support-set model, and the chart."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from extract.run import main as extract_main
from pipelines.demo_pretrain import EXPERTS, MODELS, NARRATED_OBJECT_FPS, ROWS
from pipelines.demo_pretrain import main as demo_pretrain
from shared.store import open_store, store_path
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
        assert 'object' in {e.name for e in saved.model.experts}  # the photo: appearance features carry it
        assert (pretrained / 'eval' / 'demo_official_test.json').is_file()  # zero-shot on the demo
        source = json.loads((tmp_path / 'runs' / f'{model}_finetuned' / 'seed0' / 'init_from.json').read_text())
        assert source['source'] == str((pretrained / 'checkpoints' / 'last.pt').resolve()) and source['loaded']
        assert not (tmp_path / 'runs' / f'{model}_scratch' / 'seed0' / 'init_from.json').exists()
    assert (tmp_path / 'report' / 'pretrain.png').stat().st_size > 10_000
    # the narrated set's object frames are thinned; the demo's stores are `make demo`'s own: its extract
    # command (no settings beyond the dataset's) finds them finished, and would find make demo's stores so
    narrated = open_store(store_path(tmp_path / 'features' / 'narrated', 'howto100m', 'object'), warn_random=False)
    demo = open_store(store_path(tmp_path / 'features', 'demo', 'object'), warn_random=False)
    assert (narrated.attrs['config']['fps'], demo.attrs['config']['fps']) == (NARRATED_OBJECT_FPS, 1.0)
    assert extract_main(['--dataset', 'demo', '--expert', ','.join(EXPERTS), '--weights', 'random', '--data-root',
                         str(tmp_path / 'data'), '--features-root', str(tmp_path / 'features')]) == 0
    assert 'every chunk is finished' in capfd.readouterr().out
    # a rerun reuses every stage
    assert demo_pretrain(args) == 0
    again = capfd.readouterr().out
    assert 'reusing' in again and 'torch.distributed.run' not in again and 'moved to' not in again
    # a pretrained run trained again since a fine-tuned run began from it: that run is trained again
    source = tmp_path / 'runs' / 'mmt_pretrain' / 'seed0' / 'checkpoints' / 'last.pt'
    now = time.time()
    os.utime(source, (now, now))
    assert demo_pretrain(args) == 0
    again = capfd.readouterr().out
    finetuned = tmp_path / 'runs' / 'mmt_finetuned'
    assert f'{finetuned} is not the run mmt_demo_finetune.yaml trains now' in again
    assert 'was trained again since' in again
    assert again.count('moved to') == 1 and (finetuned.with_name('mmt_finetuned.old') / 'seed0').is_dir()
    assert (finetuned / 'seed0' / 'checkpoints' / 'last.pt').stat().st_mtime > now
