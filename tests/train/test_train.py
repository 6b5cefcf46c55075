"""Training end to end on real stores extracted from generated demo videos."""
from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml

from train.main import main as train_main

EXPERTS = ['object', 'scene', 'audio']


@pytest.fixture(scope='module')
def demo_stores(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """60 demo videos with object, scene and audio stores (random weights, small inputs)."""
    from extract.run import main as extract_main
    from shared.datasets.demo import DemoCfg, generate

    root = tmp_path_factory.mktemp('train')
    generate(root / 'data' / 'demo', DemoCfg(videos=60, seed=11, min_duration=2.0, max_duration=3.0), progress=False)
    code = extract_main(['--dataset', 'demo', '--data-root', str(root / 'data'), '--features-root',
                         str(root / 'features'), '--expert', ','.join(EXPERTS), '--weights', 'random',
                         '--set', 'resize=[40]', '--set', 'input_size=32', '--workers', '1', '--no-progress'])
    assert code == 0
    return root / 'data', root / 'features'


TINY_TEXT = {'weights': 'random', 'tokenizer': 'words', 'vocab_size': 200, 'hidden': 32, 'layers': 1, 'heads': 2,
             'ffn': 64, 'max_positions': 24, 'dropout': 0.0}


def _transformer_config(tmp: Path, model: str, epochs: int) -> Path:
    """MMT over the three test stores, or the support-set model over object + scene, both tiny."""
    tokens = lambda name, dim: {'name': name, 'dim': dim, 'aggregation': 'tokens', 'max_tokens': 6}  # noqa: E731
    if model == 'mmt':
        m = {'model': 'mmt', 'text': {'encoder': 'bert', **TINY_TEXT},
             'transformer': {'layers': 2, 'heads': 2, 'hidden': 32, 'ffn': 64, 'dropout': 0.0, 'max_positions': 8},
             'experts': [tokens('object', 2048), tokens('scene', 2208), tokens('audio', 128)]}
        train = {'loss': 'max_margin', 'margin': 0.05}
    else:
        m = {'model': 'ssb', 'text': {'encoder': 't5', **TINY_TEXT},
             'transformer': {'layers': 2, 'heads': 2, 'hidden': 64, 'ffn': 64, 'dropout': 0.0}, 'max_seconds': 4,
             'experts': [tokens('object', 2048), tokens('scene', 2208)]}
        train = {'loss': 'hard_negative', 'margin': 0.2, 'grad_clip': 0.2}
    cfg = {'data': {'dataset': 'demo', 'split': 'official', 'max_words': 16}, 'model': m,
           'train': {'optimizer': 'adam', 'lr': 0.002, 'epochs': epochs, 'batch_size': 8, **train}}
    path = tmp / f'{model}.yaml'
    path.write_text(yaml.safe_dump(cfg))
    return path


def _config(tmp: Path, model: str, epochs: int = 60) -> Path:
    if model in ('mmt', 'ssb'):
        return _transformer_config(tmp, model, epochs)
    cfg = {
        'data': {'dataset': 'demo', 'split': 'official', 'word_vectors': '{data_root}/demo/word2vec.bin', 'max_words': 16},
        'model': {'model': model, 'embed_dim': 64, 'text_clusters': 4, 'projection': model == 'ce',
                  'gating': 'collaborative' if model == 'ce' else 'context',
                  'experts': [{'name': 'object', 'dim': 2048}, {'name': 'scene', 'dim': 2208},
                              {'name': 'audio', 'dim': 128, 'aggregation': 'vlad', 'clusters': 4, 'max_tokens': 4}]},
        'train': {'optimizer': 'adam', 'lr': 0.001, 'epochs': epochs, 'batch_size': 8, 'margin': 0.1},
    }
    path = tmp / f'{model}.yaml'
    path.write_text(yaml.safe_dump(cfg))
    return path


def _args(data: Path, features: Path, config: Path, run: Path, *extra: str) -> list[str]:
    return ['--config', str(config), '--data-root', str(data), '--features-root', str(features), '--run-dir', str(run),
            '--device', 'cpu', '--no-progress', *extra]


@pytest.mark.slow
@pytest.mark.parametrize('model', ['mee', 'ce', 'mmt', 'ssb'])
def test_trains_above_chance_and_searches(model: str, demo_stores: tuple[Path, Path], tmp_path: Path) -> None:
    from train.search import Searcher

    data, features = demo_stores
    run = tmp_path / 'run'
    assert train_main(_args(data, features, _config(tmp_path, model), run)) == 0
    metrics = json.loads((run / 'seed0' / 'test_metrics.json').read_text())
    meta = json.loads((data / 'demo' / 'demo.json').read_text())
    n_test = len(meta['splits']['test'])
    # a random ranking has MnR (n+1)/2 with standard error sqrt((n^2-1)/12 / queries): ask for 2 of them
    queries = 5 * n_test
    chance, se = (n_test + 1) / 2, ((n_test ** 2 - 1) / 12 / queries) ** 0.5
    assert metrics['t2v']['MnR'] < chance - 2 * se, (metrics['t2v'], chance, se)
    assert metrics['t2v']['R5'] > 100.0 * 5 / n_test
    lines = (run / 'seed0' / 'metrics.jsonl').read_text().splitlines()
    assert len(lines) == 60 and 'val/t2v/R1' in json.loads(lines[-1])
    assert (run / 'seed0' / 'tb').is_dir() and (run / 'results.md').read_text().count('|') > 10
    searcher = Searcher(run, data)
    caps = {v['id']: v['captions'] for v in meta['videos']}
    hits = [vid in [v for v, _ in searcher.search(caps[vid][0], k=3)] for vid in meta['splits']['test']]
    assert sum(hits) / len(hits) > 3 / n_test  # better than chance (3 of n) at top 3


@pytest.mark.slow
def test_killed_training_resumes_to_the_same_result(demo_stores: tuple[Path, Path], tmp_path: Path, python: str,
                                                    subprocess_env: dict, repo_root: Path) -> None:
    data, features = demo_stores
    config = _config(tmp_path, 'ce', epochs=40)
    killed = tmp_path / 'killed'
    cmd = [python, '-m', 'train', *_args(data, features, config, killed)]
    proc = subprocess.Popen(cmd, cwd=repo_root, env=subprocess_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    log = killed / 'seed0' / 'metrics.jsonl'
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if log.is_file() and len(log.read_text().splitlines()) >= 3:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, 'training ended before it could be killed'
    done = len(log.read_text().splitlines())
    assert 3 <= done < 40
    again = subprocess.run(cmd, cwd=repo_root, env=subprocess_env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert 'resuming' in again.stdout
    whole = tmp_path / 'whole'
    assert train_main(_args(data, features, config, whole)) == 0
    a = json.loads((killed / 'seed0' / 'test_metrics.json').read_text())
    b = json.loads((whole / 'seed0' / 'test_metrics.json').read_text())
    assert a == b
    wa = torch.load(killed / 'seed0' / 'checkpoints' / 'last.pt', weights_only=True)['model']
    wb = torch.load(whole / 'seed0' / 'checkpoints' / 'last.pt', weights_only=True)['model']
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_count_params_and_config_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert train_main(['--model', 'ce', '--dataset', 'demo', '--count-params']) == 0
    out = capsys.readouterr().out
    assert out.startswith('parameters: ') and 'cg' in out and 'text_gem' in out
    bad = tmp_path / 'bad.yaml'
    bad.write_text('data: {dataset: demo}\nmodel: {model: ce, experts: [], embed_dim: 8}\ntrain: {epochs: 1}\n')
    assert train_main(['--config', str(bad), '--count-params']) == 1
    assert 'at least one expert' in capsys.readouterr().err
    typo = tmp_path / 'typo.yaml'
    typo.write_text('data: {dataset: demo}\nmodel: {model: ce, experts: [{name: object, dim: 4}]}\ntrain: {epoks: 1}\n')
    assert train_main(['--config', str(typo), '--count-params']) == 1
    assert 'epoks' in capsys.readouterr().err
    assert train_main(['--model', 'mmt', '--dataset', 'msvd']) == 1
    assert 'no config for model mmt on msvd' in capsys.readouterr().err


def test_every_shipped_config_builds(capsys: pytest.CaptureFixture) -> None:
    from train.main import CONFIG_DIR

    configs = sorted(CONFIG_DIR.glob('*.yaml'))
    assert {'ce_demo', 'mee_demo', 'mee_msrvtt_1k_b', 'mee_lsmdc', 'mmt_demo', 'mmt_msrvtt_1k_a', 'mmt_activitynet',
            'ssb_demo', 'ssb_msrvtt_1k_a', 'ssb_vatex', 'ssb_activitynet', 'ssb_msvd'} <= {p.stem for p in configs}
    for path in configs:
        assert train_main(['--config', str(path), '--count-params']) == 0, path
        assert capsys.readouterr().out.startswith('parameters: ')
