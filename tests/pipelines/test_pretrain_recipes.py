"""The HowTo100M pretraining recipes (issue 22, item 6): the pretraining and fine-tuning configs say
what the papers say, `make pretrain` and `make reproduce ... PRETRAINED=` run them, and the papers'
pretraining tables print beside tiny real runs: a pretraining run on a HowTo100M-format set (no
test part), fine-tuned from, evaluated zero-shot with and without stop words."""
from __future__ import annotations

import json
import math
import re
import subprocess
from pathlib import Path

import pytest

from pipelines.paper_tables import PRETRAINING_TABLES, format_beside
from pipelines.reproduce import compare_pretrained
from pipelines.reproduce import main as reproduce_main
from train.checkpoints import FINAL, GALLERY
from train.config import load_run_cfg
from train.main import CONFIG_DIR, FINETUNE, config_path
from train.main import main as train_main

from tests.train.conftest import DIM, ROWS, tiny  # noqa: F401 (fixtures)
from tests.train.test_sampling import howto  # noqa: F401
from tests.train.test_stream import mmt_config

_PAPER = Path(__file__).resolve().parents[3] / 'shared' / 'papers'


def test_pretraining_configs_follow_the_papers() -> None:
    mmt = load_run_cfg(CONFIG_DIR / 'mmt_howto100m.yaml')
    assert (mmt.data.dataset, mmt.data.split, mmt.data.sample, mmt.data.window_words, mmt.data.window_seconds,
            mmt.data.max_words, mmt.data.stop_words) == ('howto100m', 'pretrain', 'window', 100, 100.0, 100, 'remove')
    assert [(e.name, e.max_tokens) for e in mmt.model.experts] == [('action', 100), ('audio', 100)]
    t = mmt.train
    assert (t.steps, t.batch_size, t.optimizer, t.lr, t.lr_step, t.lr_step_unit, t.lr_gamma) == (
        2_000_000, 64, 'adam', 5e-5, 10_000, 'step', 0.98)
    ssb = load_run_cfg(CONFIG_DIR / 'ssb_howto100m.yaml')
    assert (ssb.data.dataset, ssb.data.sample, ssb.train.epochs, ssb.train.batch_size, ssb.train.steps) == (
        'howto100m', 'segment', 20, 64, 0)
    assert [e.name for e in ssb.model.experts] == ['action.r2plus1d_34_ig65m', 'object.resnet152']
    # make pretrain runs `python -m train --model PAPER --dataset howto100m`: these configs
    assert config_path('mmt', 'howto100m', None) == CONFIG_DIR / 'mmt_howto100m.yaml'


@pytest.mark.parametrize('paper', ['mmt', 'ssb'])
def test_every_finetuning_config_loads_and_starts_from_the_pretraining_run(paper: str) -> None:
    pretrain = load_run_cfg(CONFIG_DIR / f'{paper}_howto100m.yaml')
    # where python -m train writes the pretraining run: runs/MODEL-DATASET-SPLIT/seed0
    written = f'runs/{paper}-{pretrain.data.dataset}-{pretrain.data.split}/seed0'
    configs = sorted((CONFIG_DIR / FINETUNE).glob(f'{paper}_*.yaml'))
    assert len(configs) >= 3
    for path in configs:
        cfg = load_run_cfg(path)
        scratch = load_run_cfg(CONFIG_DIR / path.name)  # the from-scratch config of the same name
        assert cfg.train.init_from == written, path
        assert cfg.model == scratch.model and cfg.data == scratch.data, path
        assert config_path(paper, cfg.data.dataset, cfg.data.split, finetune=True) == path
        if paper == 'mmt':  # sec. 4.2: batch 32, 5e-5, x0.95 (ActivityNet x0.90) every 1k steps, 50k steps
            gamma = 0.90 if cfg.data.dataset == 'activitynet' else 0.95
            assert (cfg.train.steps, cfg.train.batch_size, cfg.train.lr, cfg.train.lr_step, cfg.train.lr_step_unit,
                    cfg.train.lr_gamma) == (50_000, 32, 5e-5, 1000, 'step', gamma), path
        else:  # appendix 6.2: "we reduce training epochs into quarters"
            assert cfg.train.epochs == math.ceil(scratch.train.epochs / 4) and cfg.train.steps == 0, path
            # eq. 1 summed over the batch, as the code of Faghri et al. it follows: lambda 10 (sec. 3.1.2,
            # "similar magnitudes") against a batch mean lets cross-captioning override the ranking
            assert (cfg.train.loss, cfg.train.margin, cfg.model.caption_weight, cfg.model.support_set) == (
                'hard_negative_sum', 0.2, 10.0, 'cross'), path
            # a quarter of the same epochs: over every (video, caption) pair where the paper counts pairs
            assert cfg.train.epoch_unit == scratch.train.epoch_unit == (
                'videos' if cfg.data.dataset == 'activitynet' else 'pairs'), path


def test_make_pretrain_and_reproduce_pretrained_run_the_recipes(repo_root: Path) -> None:
    def dry(*args: str) -> str:
        out = subprocess.run(['make', '-n', '-s', *args, 'STAMP='], cwd=repo_root, capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout

    assert '-m train.launch --standalone --nproc-per-node 8 -m train --model ssb --dataset howto100m' in dry(
        'pretrain', 'PAPER=ssb', 'GPUS=8')
    assert 'launch' not in dry('pretrain', 'PAPER=mmt') and '-m train --model mmt --dataset howto100m' in dry(
        'pretrain', 'PAPER=mmt')
    assert "--pretrained 'runs/p/seed0'" in dry('reproduce', 'PAPER=mmt', 'DATASET=msrvtt', 'SPLIT=1k-A',
                                              'PRETRAINED=runs/p/seed0')


def test_reproduce_says_when_there_is_no_finetuning_config(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert reproduce_main(['--paper', 'mmt', '--dataset', 'msvd', '--pretrained', str(tmp_path)]) == 1
    assert 'no fine-tuning config for model mmt on msvd' in capsys.readouterr().err


def test_the_tables_quote_the_papers() -> None:
    """Every paper row, method and cells, is in the paper's text as printed (markup and spacing aside)."""
    if not _PAPER.is_dir():
        pytest.skip(f'the papers are not beside this checkout ({_PAPER})')
    text = {p: re.sub(r'<[^>]+>|\$|\\pm|±|\s', '', (_PAPER / f'{p}.txt').read_text())
            for p in ('multi-modal-transformer', 'support-set-bottlenecks')}
    for (paper, _, _), tables in PRETRAINING_TABLES.items():
        source = text['multi-modal-transformer' if paper == 'mmt' else 'support-set-bottlenecks']
        for table in tables:
            for method, _, cells in table.rows:
                # MMT Table 1 prints each group's name once, over its two rows: the cells alone
                quoted = ''.join(cells) if 'Tab. 1' in table.where else method + ''.join(cells)
                assert re.sub(r'±|\s', '', quoted) in source, (table.where, method)


def _tiny_mmt(tmp: Path) -> Path:
    return mmt_config(tmp / 'mmt.yaml', {'object': DIM}, ROWS, batch_size=4)


def test_pretraining_tables_print_beside_tiny_runs(howto: tuple[Path, Path], tiny: Path,  # noqa: F811
                                                   tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = _tiny_mmt(tmp_path)
    roots = lambda data, feats: ['--data-root', str(data), '--features-root', str(feats), '--device', 'cpu',  # noqa: E731
                                 '--no-progress', '--config', str(config), '--set', 'model.text.vocab_size=2000']
    # pretraining: MMT sec. 4.2's windows on the HowTo100M-format set, stop words removed, 3 steps
    pre = tmp_path / 'pretrain'
    assert train_main([*roots(*howto), '--run-dir', str(pre), '--set', 'data.dataset=howto100m', '--set',
                       'data.split=pretrain', '--set', 'data.sample=window', '--set', 'data.window_words=10',
                       '--set', 'data.window_seconds=30', '--set', 'data.stop_words=remove', '--set',
                       'train.steps=3']) == 0
    assert 'has no test part: trained only' in capsys.readouterr().out
    assert json.loads((pre / 'seed0' / FINAL).read_text()) == {'checkpoint': 'last.pt', 'epochs': 0, 'steps': 3}
    assert not (pre / 'seed0' / GALLERY).exists()
    # from scratch and fine-tuned from it on the demo-shaped set
    scratch, tuned = tmp_path / 'scratch', tmp_path / 'tuned'
    assert train_main([*roots(tiny / 'data', tiny / 'features'), '--run-dir', str(scratch)]) == 0
    assert train_main([*roots(tiny / 'data', tiny / 'features'), '--run-dir', str(tuned), '--init-from', str(pre)]) == 0
    assert 'initialised from' in capsys.readouterr().out
    finetuned = [json.loads((tuned / 'seed0' / 'test_metrics.json').read_text())]
    text = compare_pretrained(PRETRAINING_TABLES[('mmt', 'msrvtt', '1k-A')], finetuned, pre, scratch, 'demo',
                              'official', tiny / 'data', tiny / 'features', 'cpu', 'keep', 'mmt')
    lines = text.splitlines()
    assert lines[0].startswith('MMT, Tab. 1: Advantage of pretraining on HowTo100M')
    zero = {stop: json.loads((pre / 'seed0' / 'eval' / name).read_text())['t2v'] for stop, name in
            (('keep', 'demo_official_test_stop_words-keep.json'), ('remove', 'demo_official_test.json'))}
    scratch_t2v = json.loads((scratch / 'seed0' / 'test_metrics.json').read_text())['t2v']

    def under(paper_row: str) -> str:
        i = next(i for i, line in enumerate(lines) if line.startswith(f'| paper: {paper_row} |'))
        return lines[i + 1]

    assert '| paper: Pretraining without finetuning (zero-shot setting), all words | 6.9 | 160.0 | 240.2 |' in lines
    for row, stop, mine in (('Pretraining without finetuning (zero-shot setting), all words', 'all words', zero['keep']),
                            ('Pretraining without finetuning (zero-shot setting), w/o stop words', 'w/o stop words',
                             zero['remove']),
                            ('Training from scratch on MSRVT, all words', 'all words', scratch_t2v),
                            ('Pretraining then finetuning on MSRVT, all words', 'all words', finetuned[0]['t2v'])):
        cells = ' | '.join(f'{mine[k]:.1f}' for k in ('R5', 'MdR', 'MnR'))
        assert under(row).startswith('| ours: ') and f'{stop} (1 run(s)) | {cells} |' in under(row), (row, lines)
    assert lines[-1] == ('not run here: ours: from scratch, w/o stop words; ours: pretrained + fine-tuned, '
                         'w/o stop words')


def test_our_rows_follow_the_tables_columns_with_the_papers_std() -> None:
    """Support-set Table 10 prints video-to-text first, and our row under it too; the std over seeds is the
    population one the papers print (of 1 and 3: 1.0, not the sample std 1.4)."""
    table = PRETRAINING_TABLES[('ssb', 'msrvtt', '1k-A')][1]

    def run(t2v: float, v2t: float) -> dict[str, dict[str, float]]:
        return {'t2v': {'R1': t2v, 'R5': 2 * t2v, 'R10': 3 * t2v, 'MdR': 4.0},
                'v2t': {'R1': v2t, 'R5': 2 * v2t, 'R10': 3 * v2t, 'MdR': 5.0}}

    lines = format_beside([table], {'zero-shot:keep': [run(1.0, 10.0), run(3.0, 12.0)]}).splitlines()
    assert lines[2] == '| row | v2t R1 | v2t R5 | v2t R10 | v2t MdR | t2v R1 | t2v R5 | t2v R10 | t2v MdR |'
    at = lines.index('| paper: MSR-VTT | 8.7 | 23.0 | 31.1 | 31.0 | 12.7 | 27.5 | 36.2 | 24.0 |')
    assert lines[at + 1] == ('| ours: zero-shot (pretrained, not fine-tuned), all words (2 run(s)) | 11.0 ± 1.0 | '
                             '22.0 ± 2.0 | 33.0 ± 3.0 | 5.0 ± 0.0 | 2.0 ± 1.0 | 4.0 ± 2.0 | 6.0 ± 3.0 | 4.0 ± 0.0 |')
