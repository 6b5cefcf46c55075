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

from tests.train.conftest import EXPERTS


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
        # the summed hinge: the paper's hardest-negative one learns little from 48 videos in batches
        # of 8 in 60 epochs (test MnR 5.1-6.4 over seeds 0-3, chance 6.5; summed: 2.3-3.5)
        train = {'loss': 'max_margin', 'margin': 0.2, 'grad_clip': 0.2}
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
        'model': {'model': model, 'embed_dim': 64, 'text_clusters': 4,
                  **({'projection': True, 'gating': 'collaborative'} if model == 'ce' else {}),
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
    with pytest.raises(ValueError, match='empty'):
        searcher.search('  ')
    if model in ('mee', 'ce'):  # word vectors: a query of unknown words would rank as any other such query
        with pytest.raises(ValueError, match='word vector'):
            searcher.search('zzzzqqq xxyy')


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
    assert train_main(['--model', 'ce', '--dataset', 'msrvtt']) == 1  # a config per split: the split names
    assert 'has a config per split: pass --split 1k-A | 1k-B | full' in capsys.readouterr().err
    assert train_main(['--model', 'ce', '--dataset', 'demo', '--device', 'gpu0']) == 1
    assert '--device gpu0: not a device' in capsys.readouterr().err
    from train.search import main as search_main

    with pytest.raises(SystemExit) as usage:  # checked before any run is loaded (this one does not exist)
        search_main(['--run', str(tmp_path / 'none'), '--query', 'a cat', '-k', '0'])
    assert usage.value.code == 2 and '-k must be at least 1' in capsys.readouterr().err


def test_every_shipped_config_builds(capsys: pytest.CaptureFixture) -> None:
    from train.main import CONFIG_DIR

    configs = sorted(CONFIG_DIR.rglob('*.yaml'))
    assert {'ce_demo', 'mee_demo', 'mee_msrvtt_1k_b', 'mee_lsmdc', 'mmt_demo', 'mmt_msrvtt_1k_a', 'mmt_activitynet',
            'ssb_demo', 'ssb_msrvtt_1k_a', 'ssb_vatex', 'ssb_activitynet', 'ssb_msvd', 'ce_msrvtt_full', 'ce_msrvtt_1k_a',
            'ce_msrvtt_1k_b', 'ce_msvd', 'ce_lsmdc', 'ce_didemo', 'ce_activitynet'} <= {p.stem for p in configs}
    for path in configs:
        if path.stem in pending_extra_configs():  # they load once coco is registered (test_extra_sources)
            continue
        assert train_main(['--config', str(path), '--count-params']) == 0, path
        assert capsys.readouterr().out.startswith('parameters: ')


def pending_extra_configs() -> set[str]:
    """Shipped configs whose data.extra names a dataset not registered yet (coco, issue 23 item 2,
    written on another branch)."""
    from shared.datasets import DatasetError, require_registered
    from train.main import CONFIG_DIR

    pending = set()
    for path in CONFIG_DIR.rglob('*.yaml'):
        for extra in (yaml.safe_load(path.read_text()).get('data') or {}).get('extra', []):
            try:
                require_registered(extra['dataset'])
            except DatasetError:
                pending.add(path.stem)
    return pending


def _total(capsys: pytest.CaptureFixture, *args: str) -> int:
    assert train_main([*args, '--count-params']) == 0
    return int(capsys.readouterr().out.split()[1])


def test_ce_parameter_counts_match_the_paper(capsys: pytest.CaptureFixture) -> None:
    """CE Table 10 (183.45M at 768-d and the other widths) and Table 6 (CE - CG 181.07M), within 0.1%;
    the frozen GPT that gives the word features is a feature extractor, not counted."""
    from train.main import CONFIG_DIR

    full = str(CONFIG_DIR / 'ce_msrvtt_full.yaml')
    assert abs(_total(capsys, '--config', full) / 183.45e6 - 1) < 1e-3
    assert abs(_total(capsys, '--config', full, '--set', 'model.gating=context') / 181.07e6 - 1) < 1e-3
    for dim, paper in [(384, 88.62e6), (512, 119.51e6), (640, 151.12e6), (1024, 250.27e6)]:
        assert abs(_total(capsys, '--config', full, '--set', f'model.embed_dim={dim}') / paper - 1) < 1e-3, dim
    assert train_main(['--config', full, '--count-params']) == 0
    assert 'not counted: OpenAIGPTModel' in capsys.readouterr().out


def test_ce_with_gpt_word_features_trains_and_searches(demo_stores: tuple[Path, Path], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    """CE's text side: a frozen GPT (tiny, random) gives the word features; it gets no gradient,
    stays in eval mode, and search encodes a free-text query through it."""
    from train.checkpoints import load_checkpoint
    from train.search import main as search_main

    data, features = demo_stores
    cfg = yaml.safe_load((Path(__file__).resolve().parents[2] / 'pipelines/configs/train/ce_demo.yaml').read_text())
    cfg['data']['max_words'] = 12
    cfg['model'].update(embed_dim=32, text_dim=32, text_clusters=4,
                        text={'encoder': 'gpt', 'finetune': False, **TINY_TEXT, 'ffn': 128},
                        experts=[e for e in cfg['model']['experts'] if e['name'] in EXPERTS])
    cfg['train'].update(epochs=2, batch_size=16)
    path = tmp_path / 'ce_gpt.yaml'
    path.write_text(yaml.safe_dump(cfg))
    run = tmp_path / 'run'
    assert train_main(['--config', str(path), '--data-root', str(data), '--features-root', str(features),
                       '--run-dir', str(run), '--no-progress']) == 0
    ckpts = run / 'seed0' / 'checkpoints'
    last = torch.load(ckpts / 'last.pt', weights_only=True)['model']
    frozen = torch.load(ckpts / 'frozen.pt', weights_only=True)  # the frozen GPT once, not in every checkpoint
    assert frozen and all(k.startswith('text_model.') for k in frozen) and not any(k in last for k in frozen)
    assert any(k.startswith('text_model.') for k in load_checkpoint(ckpts / 'last.pt')['model'])
    assert (run / 'seed0' / 'tokenizer.json').is_file()
    assert search_main(['--run', str(run / 'seed0'), '--query', 'a red circle moving', '-k', '3']) == 0
    cfg['train']['epochs'] = 3  # resuming joins the frozen weights back into the model
    path.write_text(yaml.safe_dump(cfg))
    assert train_main(['--config', str(path), '--data-root', str(data), '--features-root', str(features),
                       '--run-dir', str(run), '--no-progress']) == 0
    assert 'resuming' in capsys.readouterr().out
    assert len((run / 'seed0' / 'metrics.jsonl').read_text().splitlines()) == 3
    # a run saved before a setting existed resumes where the setting is now at its default (which
    # kept the behaviour from before it), and only there
    args = ['--config', str(path), '--data-root', str(data), '--features-root', str(features), '--run-dir', str(run),
            '--no-progress']
    current = yaml.safe_load((run / 'seed0' / 'config.yaml').read_text())
    for drop, resumes in ((('train', 'lr_step_unit'), True), (('train', 'grad_clip'), True),
                          (('model', 'text', 'finetune'), False)):  # default True; this run has False
        older = yaml.safe_load(yaml.safe_dump(current))
        *parents, key = drop
        node = older
        for p in parents:
            node = node[p]
        del node[key]
        (run / 'seed0' / 'config.yaml').write_text(yaml.safe_dump(older, sort_keys=False))
        assert train_main(args) == (0 if resumes else 1), drop
        out = capsys.readouterr()
        assert ('resuming' in out.out) if resumes else ('model.text.finetune: True there, False now' in out.err)
    (run / 'seed0' / 'config.yaml').write_text(yaml.safe_dump(current, sort_keys=False))
    # another learning rate is another run: not resumed into this one
    saved = (run / 'seed0' / 'config.yaml').read_text()
    cfg['train']['lr'] = cfg['train'].get('lr', 0.01) * 2
    path.write_text(yaml.safe_dump(cfg))
    assert train_main(['--config', str(path), '--data-root', str(data), '--features-root', str(features),
                       '--run-dir', str(run), '--no-progress']) == 1
    assert 'trained with other settings (train.lr:' in capsys.readouterr().err
    assert (run / 'seed0' / 'config.yaml').read_text() == saved


def test_gpt_word_features_are_frozen() -> None:
    from train.models import create_model
    from train.models.base import ExpertInput, TextInput
    from train.models.config import ExpertSpec, TextCfg, model_cfg

    text = TextCfg(encoder='gpt', finetune=False, **{**TINY_TEXT, 'ffn': 128})
    model = create_model(model_cfg('ce', (ExpertSpec('object', 8), ExpertSpec('scene', 8)), embed_dim=16,
                                  text_dim=32, text_clusters=4, projection=True, gating='collaborative', text=text))
    model.train()
    assert not model.text_model.training and model.cg.training
    before = {k: v.clone() for k, v in model.text_model.state_dict().items()}
    video = {n: ExpertInput(torch.randn(6, 8), torch.ones(6, dtype=torch.bool)) for n in ('object', 'scene')}
    ids = torch.randint(5, 200, (6, 7))
    model.scores(video, TextInput(ids, torch.ones(6, 7, dtype=torch.bool))).sum().backward()
    assert all(p.grad is None for p in model.text_model.parameters())
    assert model.text_vlad.centroids.grad is not None
    torch.optim.SGD(model.parameters(), lr=1.0).step()
    assert all(torch.equal(v, model.text_model.state_dict()[k]) for k, v in before.items())
    # the captions are read through the GPT: other GPT weights give another text embedding
    model.eval()
    text = TextInput(ids, torch.ones(6, 7, dtype=torch.bool))
    with torch.no_grad():
        first = model.encode_text(text).emb.clone()
        model.text_model.h[0].mlp.c_fc.weight.add_(torch.randn_like(model.text_model.h[0].mlp.c_fc.weight))
        assert not torch.allclose(model.encode_text(text).emb, first)


def _with_dropout(tmp: Path, epochs: int, p: float = 0.3, model: str = 'mmt') -> Path:
    path = _transformer_config(tmp, model, epochs)
    cfg = yaml.safe_load(path.read_text())
    cfg['model']['transformer']['dropout'] = cfg['model']['text']['dropout'] = p
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_a_resumed_run_with_dropout_ends_with_the_weights_of_an_uninterrupted_one(
        demo_stores: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # every other test config has dropout 0: a resume that did not restore the random state
    # would draw other dropout masks and still pass them
    data, features = demo_stores
    resumed, whole = tmp_path / 'resumed', tmp_path / 'whole'
    assert train_main(_args(data, features, _with_dropout(tmp_path, 2), resumed)) == 0
    # as an earlier version wrote it: the one process's generator under 'torch_rng'
    last = resumed / 'seed0' / 'checkpoints' / 'last.pt'
    saved = torch.load(last, weights_only=True)
    saved['torch_rng'] = saved.pop('rng')[0]
    torch.save(saved, last)
    assert train_main(_args(data, features, _with_dropout(tmp_path, 4), resumed)) == 0  # more epochs: resumed
    assert 'resuming' in capsys.readouterr().out
    assert train_main(_args(data, features, _with_dropout(tmp_path, 4), whole)) == 0
    wa = torch.load(resumed / 'seed0' / 'checkpoints' / 'last.pt', weights_only=True)['model']
    wb = torch.load(whole / 'seed0' / 'checkpoints' / 'last.pt', weights_only=True)['model']
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
def test_checkpoint_every_writes_last_pt_every_n_epochs_and_at_the_end_and_resumes_to_the_same_weights(
        demo_stores: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import train.loop

    data, features = demo_stores
    saved: list[int] = []  # the 0-based epoch of each last.pt written
    real = train.loop.save_checkpoint

    def recording(model: torch.nn.Module, path: Path, **extra: object) -> None:
        if path.name == 'last.pt':
            saved.append(extra['epoch'])
        real(model, path, **extra)

    monkeypatch.setattr(train.loop, 'save_checkpoint', recording)
    every, sparse, whole = ('--set', 'train.checkpoint_every=2'), tmp_path / 'sparse', tmp_path / 'whole'
    assert train_main(_args(data, features, _config(tmp_path, 'mmt', 3), sparse, *every)) == 0
    assert saved == [1, 2]  # after epoch 2 of 3 and after the last
    assert train_main(_args(data, features, _config(tmp_path, 'mmt', 5), sparse, *every)) == 0  # resumed at epoch 4
    assert saved == [1, 2, 3, 4]
    assert len((sparse / 'seed0' / 'metrics.jsonl').read_text().splitlines()) == 5
    assert train_main(_args(data, features, _config(tmp_path, 'mmt', 5), whole)) == 0  # the default: every epoch
    assert saved[4:] == [0, 1, 2, 3, 4]
    wa = torch.load(sparse / 'seed0' / 'checkpoints' / 'last.pt', weights_only=True)['model']
    wb = torch.load(whole / 'seed0' / 'checkpoints' / 'last.pt', weights_only=True)['model']
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
def test_best_checkpoint_is_the_epoch_of_the_highest_val_selection(demo_stores: tuple[Path, Path],
                                                                   tmp_path: Path) -> None:
    data, features = demo_stores
    config = _config(tmp_path, 'mee', epochs=5)
    cfg = yaml.safe_load(config.read_text())
    cfg['train']['lr'] = 0.01  # a noisy validation curve: its best epoch is not the last one
    config.write_text(yaml.safe_dump(cfg))
    run = tmp_path / 'run'
    assert train_main(_args(data, features, config, run)) == 0
    records = [json.loads(line) for line in (run / 'seed0' / 'metrics.jsonl').read_text().splitlines()]
    selection = [r['val/selection'] for r in records]
    best = max(range(len(records)), key=lambda i: (selection[i], -i))  # the first epoch reaching the maximum
    lowest_loss = min(range(len(records)), key=lambda i: records[i]['train/loss'])
    assert best != lowest_loss, (selection, [r['train/loss'] for r in records])  # else the check below proves little
    ckpt = run / 'seed0' / 'checkpoints'
    assert torch.load(ckpt / 'best.pt', weights_only=True)['epoch'] == best
    assert torch.load(run / 'seed0' / 'gallery.pt', weights_only=False)['checkpoint'] == 'best.pt'


def test_training_refuses_a_store_with_a_missing_chunk_file(demo_stores: tuple[Path, Path], tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    """Issue 18 item 7: with one features chunk file of a finished store deleted, training read
    zeros for that chunk's videos; now it stops with one line naming the store, the chunk and the fix."""
    import shutil

    data, features = demo_stores
    copy = tmp_path / 'features'
    shutil.copytree(features, copy)
    store = copy / 'demo' / 'scene.zarr'
    (store / 'features' / 'c' / '1' / '0' / '0').unlink()
    assert train_main(_args(data, copy, _config(tmp_path, 'mee', epochs=1), tmp_path / 'run')) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f'error: {store}: chunk 1 (videos ') and 'its features data is not what was written' in err
    assert f'python -m shared.store check --repair {store}`, then rerun the extraction' in err
    assert len(err.splitlines()) == 1 and 'Traceback' not in err


@pytest.mark.slow
def test_a_batch_larger_than_the_training_videos_says_what_to_give(demo_stores: tuple[Path, Path], tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    """`make demo VIDEOS=12` ended in 'batch_size 24 is larger than the 7 training videos', naming no setting."""
    data, features = demo_stores
    n_train = len(json.loads((data / 'demo' / 'demo.json').read_text())['splits']['train'])
    assert train_main(_args(data, features, _config(tmp_path, 'mee', epochs=1), tmp_path / 'run',
                            '--set', 'train.batch_size=500')) == 1
    err = capsys.readouterr().err
    assert f'train.batch_size 500 is larger than the {n_train} training videos' in err
    assert f'--set train.batch_size={n_train}' in err
