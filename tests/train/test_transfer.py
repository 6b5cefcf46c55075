"""Pretrain, then fine-tune (`--init-from`, issue 21 item 3), and evaluating a finished run on any
dataset's split (`python -m train.evaluate`, item 4), on real runs of a tiny MMT over stores
written with `shared.store`."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from shared.store import DONE, StoreSpec, VideoResult, create_store, pack_chunk, store_path
from tests.train.test_cli_errors import _one_line
from train.evaluate import main as evaluate_main
from train.init import init_source
from train.main import main as train_main

#: MMT's seven experts, small dimensions; the source run has two of them, in another order
DIMS = {'object': 8, 'action': 6, 'scene': 7, 'audio': 5, 'face': 4, 'ocr': 3, 'speech': 3}
SOURCE = ('audio', 'action')
N_VIDEOS, ROWS = 16, 3
WORDS = ['a', 'red', 'blue', 'cat', 'dog', 'tone', 'high', 'low', 'zoom', 'pan', 'video', 'of']


def _dataset(root: Path, name: str, experts: list[str], rng: np.random.Generator, imported: bool) -> None:
    """`name` under root/data (demo.json, or an imported.json manifest) with random stores of `experts`."""
    ids = [f'{name}{i:04d}' for i in range(N_VIDEOS)]
    captions = {v: [' '.join(rng.choice(WORDS, 4)) for _ in range(2)] for v in ids}
    split = {'train': ids[:8], 'val': ids[8:12], 'test': ids[12:]}
    data = root / 'data' / name
    data.mkdir(parents=True)
    if imported:
        (data / 'imported.json').write_text(json.dumps({'source': 'test', 'videos': ids, 'captions': captions,
                                                        'splits': {'official': split}}))
    else:
        (data / 'demo.json').write_text(json.dumps(
            {'videos': [{'id': v, 'file': f'videos/{v}.mp4', 'captions': captions[v]} for v in ids],
             'splits': split}))
    for expert in experts:
        dim = DIMS[expert]
        spec = StoreSpec(dataset=name, expert=expert, feature_dim=dim, max_rows=ROWS, chunk_size=N_VIDEOS,
                         model='toy', weights='random')
        store = create_store(store_path(root / 'features', name, expert), ids, spec)
        rows = [VideoResult(rng.standard_normal((ROWS, dim)).astype(np.float32),
                            np.stack([np.arange(ROWS), np.arange(ROWS) + 1.0], axis=1), DONE) for _ in ids]
        store.write_chunk(0, pack_chunk(rows, ROWS, dim, has_tokens=False))


def _config(root: Path, experts: tuple[str, ...], name: str) -> Path:
    """A tiny MMT over `experts` (BERT with a words tokenizer, random weights)."""
    cfg = {'data': {'dataset': 'demo', 'split': 'official', 'max_words': 8},
           'model': {'model': 'mmt',
                     'text': {'encoder': 'bert', 'weights': 'random', 'tokenizer': 'words', 'vocab_size': 40,
                              'hidden': 16, 'layers': 1, 'heads': 2, 'ffn': 32, 'max_positions': 12, 'dropout': 0.0},
                     'transformer': {'layers': 1, 'heads': 2, 'hidden': 16, 'ffn': 32, 'dropout': 0.0,
                                     'max_positions': 8},
                     'experts': [{'name': e, 'dim': DIMS[e], 'aggregation': 'tokens', 'max_tokens': ROWS}
                                 for e in experts]},
           'train': {'optimizer': 'adam', 'lr': 0.002, 'epochs': 2, 'batch_size': 4, 'margin': 0.05}}
    path = root / f'{name}.yaml'
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope='module')
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """demo with the seven experts' stores, msvd (imported manifest) with the source's two, vatex
    with object alone (none of the source's); configs for MMT on the seven and on the source's two; the source run (runs/source/seed0)."""
    root = tmp_path_factory.mktemp('transfer')
    rng = np.random.default_rng(3)
    _dataset(root, 'demo', list(DIMS), rng, imported=False)
    _dataset(root, 'msvd', list(SOURCE), rng, imported=True)
    _dataset(root, 'vatex', ['object'], rng, imported=True)
    _config(root, tuple(DIMS), 'mmt7')
    assert train_main(_args(root, root / 'runs' / 'source', _config(root, SOURCE, 'mmt2'))) == 0
    return root


def _args(root: Path, run: Path, config: Path | None = None, *extra: str) -> list[str]:
    return ['--config', str(config or root / 'mmt7.yaml'), '--data-root', str(root / 'data'), '--features-root',
            str(root / 'features'), '--run-dir', str(run), '--device', 'cpu', '--no-progress', *extra]


def _eval_args(root: Path, run: Path, *extra: str) -> list[str]:
    return ['--run', str(run), '--data-root', str(root / 'data'), '--features-root', str(root / 'features'),
            '--device', 'cpu', *extra]


def _fresh_model(root: Path) -> torch.nn.Module:
    """The seven-expert model as `train_run` builds it for seed 0, before any weight is loaded."""
    from train.config import load_run_cfg
    from train.loop import _seed_all, build_state

    _seed_all(0)
    return build_state(load_run_cfg(root / 'mmt7.yaml'), torch.device('cpu')).model


def test_an_mmt_of_seven_experts_starts_from_a_run_on_two_bit_for_bit(world: Path, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    from train.checkpoints import load_checkpoint
    from train.init import REPORT, init_source, init_weights

    source = init_source(str(world / 'runs' / 'source'))  # the one seed's tested checkpoint
    assert source == (world / 'runs' / 'source' / 'seed0' / 'checkpoints' / 'best.pt').resolve()
    trained = load_checkpoint(source)['model']
    model, untouched = _fresh_model(world), _fresh_model(world).state_dict()
    report = init_weights(model, source, tmp_path)
    state = model.state_dict()
    # every source weight loads, bit for bit: text encoder, transformer, the two experts' modules
    assert set(report.loaded) == set(trained) and not report.dropped
    for key, value in trained.items():
        assert torch.equal(state[key], value), key
    for part in ('text_model.', 'encoder.layers.0.', 'project.action.', 'project.audio.', 'text_gem.audio.',
                 'expert_embed.weight.action', 'mixture.weight.audio', 'temporal_embed.'):
        assert any(k.startswith(part) for k in report.loaded), part
    # the five other experts' modules keep their fresh initialisation, and nothing else does
    others = [e for e in DIMS if e not in SOURCE]
    assert report.fresh and all(any(f'.{e}' in k for e in others) for k in report.fresh), report.fresh
    for key in report.fresh:
        assert torch.equal(state[key], untouched[key]), key
    out = capsys.readouterr().out
    fresh_line = next(ln for ln in out.splitlines() if 'kept their fresh initialisation' in ln)
    for e in others:
        for module in (f'project.{e}', f'text_gem.{e}', f'expert_embed.weight.{e}', f'mixture.weight.{e}',
                       f'mixture.bias.{e}'):
            assert module in fresh_line.split(': ', 1)[1].split(', '), (module, fresh_line)
    assert f'{len(trained)} of {len(state)} weights loaded' in out and 'project.audio' not in fresh_line
    recorded = json.loads((tmp_path / REPORT).read_text())
    assert recorded['source'] == str(source) and recorded['loaded'] == report.loaded
    assert recorded['fresh'] == report.fresh


def test_a_weight_of_another_shape_is_dropped_and_reported(world: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    import dataclasses

    from train.config import load_run_cfg
    from train.init import REPORT, init_source, init_weights
    from train.models import create_model

    cfg = load_run_cfg(world / 'mmt7.yaml').model
    wider = tuple(dataclasses.replace(e, dim=e.dim + 1) if e.name == 'audio' else e for e in cfg.experts)
    model = create_model(dataclasses.replace(cfg, experts=wider))
    report = init_weights(model, init_source(str(world / 'runs' / 'source' / 'seed0')), tmp_path)
    assert report.dropped == {'project.audio.fc.weight': 'another shape'}
    assert 'project.audio.fc.weight' in report.fresh and 'project.audio.fc.bias' in report.loaded
    assert 'dropped (another shape): project.audio.fc.weight' in capsys.readouterr().out
    assert json.loads((tmp_path / REPORT).read_text())['dropped'] == {
        'project.audio.fc.weight': f'(16, {DIMS["audio"]}) there, (16, {DIMS["audio"] + 1}) here'}


def _positional(state: dict[str, torch.Tensor], experts: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """`state` as checkpoints were saved before per-expert modules were keyed by expert name:
    ``project.0.`` for the first expert, one (M, ...) matrix for each per-expert row parameter."""
    out = {}
    for key, value in state.items():
        parts = key.split('.')
        if parts[0] in ('project', 'text_gem'):
            out['.'.join([parts[0], str(experts.index(parts[1])), *parts[2:]])] = value
        elif parts[0] in ('expert_embed', 'mixture') and parts[2] == experts[0]:
            rows = [state[f'{parts[0]}.{parts[1]}.{e}'] for e in experts]
            out[f'{parts[0]}.{parts[1]}'] = torch.cat(rows) if parts[1] == 'bias' else torch.stack(rows)
        elif parts[0] not in ('expert_embed', 'mixture'):
            out[key] = value
    return out


def test_a_positional_source_is_renamed_by_its_own_experts(world: Path, tmp_path: Path) -> None:
    """A source saved with positional per-expert keys: position i is the i-th expert of the source's
    config (audio, action), not of the new model's (object, action, ...)."""
    import shutil

    from train.checkpoints import load_checkpoint
    from train.init import init_source, init_weights

    named = init_source(str(world / 'runs' / 'source'))
    old = tmp_path / 'old'
    shutil.copytree(named.parent.parent, old)
    saved = load_checkpoint(named)
    torch.save({**saved, 'model': _positional(saved['model'], SOURCE)}, old / 'checkpoints' / named.name)
    expected, model = _fresh_model(world), _fresh_model(world)
    init_weights(expected, named)
    report = init_weights(model, init_source(str(old)))
    assert not report.dropped and len(report.loaded) == len(saved['model'])
    got = model.state_dict()
    for key, value in expected.state_dict().items():
        assert torch.equal(got[key], value), key


def test_fine_tuning_records_its_source_and_resumes_only_from_it(world: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    source = world / 'runs' / 'source' / 'seed0'
    run = tmp_path / 'tuned'
    assert train_main(_args(world, run, None, '--init-from', str(source), '--set', 'train.epochs=1')) == 0
    assert 'initialised from' in capsys.readouterr().out
    saved = yaml.safe_load((run / 'seed0' / 'config.yaml').read_text())
    assert saved['train']['init_from'] == str((source / 'checkpoints' / 'best.pt').resolve())
    assert (run / 'seed0' / 'init_from.json').is_file()
    # the token embeddings are rows of the source's vocabulary: the run encodes with it
    assert (run / 'seed0' / 'tokenizer.json').read_text() == (source / 'tokenizer.json').read_text()
    # the same source named by its checkpoint file resumes the run (more epochs)
    ckpt = str(source / 'checkpoints' / 'best.pt')
    assert train_main(_args(world, run, None, '--init-from', ckpt, '--set', 'train.epochs=2')) == 0
    out = capsys.readouterr().out
    assert 'resuming' in out and 'initialised from' not in out  # weights from last.pt, not the source
    # without it, the run is another config's: refused in one line that names the setting
    code = train_main(_args(world, run, None, '--set', 'train.epochs=3'))
    _one_line(code, capsys.readouterr().err, 'train.init_from', str(run / 'seed0'))


def test_evaluating_a_run_on_its_own_test_split_gives_its_recorded_metrics(world: Path,
                                                                           capsys: pytest.CaptureFixture) -> None:
    run = world / 'runs' / 'source'
    own = (run / 'seed0' / 'results.md').read_text()
    assert evaluate_main(_eval_args(world, run, '--part', 'test')) == 0
    got = json.loads((run / 'seed0' / 'eval' / 'demo_official_test.json').read_text())
    assert got == json.loads((run / 'seed0' / 'test_metrics.json').read_text())
    out = capsys.readouterr().out
    assert '| mmt |' in out and (run / 'seed0' / 'eval' / 'demo_official_test.md').read_text().count('|') > 10
    assert (run / 'seed0' / 'results.md').read_text() == own  # the run's own results stay as they were


def test_a_run_evaluates_zero_shot_on_another_dataset(world: Path, python: str, repo_root: Path,
                                                      subprocess_env: dict) -> None:
    """As a real process, the command the README gives."""
    run = world / 'runs' / 'source' / 'seed0'
    proc = subprocess.run([python, '-m', 'train.evaluate', *_eval_args(world, run, '--dataset', 'msvd', '--split',
                                                                       'official')],
                          cwd=repo_root, env=subprocess_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    got = json.loads((run / 'eval' / 'msvd_official_test.json').read_text())
    assert set(got) == {'t2v', 'v2t'} and 1.0 <= got['t2v']['MnR'] <= 4.0  # 4 test videos
    assert 'msvd official/test' in proc.stdout and '| mmt |' in proc.stdout


class _RunsCode:
    """Unpickled, it would create the file `path`: torch.load(weights_only=True) must refuse it."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (open, (self.path, 'w'))


def _bad_inputs(world: Path, tmp: Path) -> dict[str, tuple[object, list[str], tuple[str, ...]]]:
    (tmp / 'empty').mkdir()
    (tmp / 'notes.pt').write_text('not a checkpoint')
    torch.save({'model': _RunsCode(str(tmp / 'PWNED'))}, tmp / 'evil.pt')  # a pickle that runs code when loaded
    run = world / 'runs' / 'source'
    odd = torch.load(init_source(str(run / 'seed0')), weights_only=True)
    odd['model'] = {k: 1 for k in odd['model']}  # the source's weights, each a number, not a tensor
    torch.save(odd, tmp / 'odd.pt')
    return {
        'init-from a folder without a run': (train_main, _args(world, tmp / 'r', None, '--init-from', str(tmp / 'empty')),
                                             (str(tmp / 'empty'), 'holds no run', '--init-from')),
        'init-from a missing path': (train_main, _args(world, tmp / 'r', None, '--init-from', str(tmp / 'nothing')),
                                     (str(tmp / 'nothing'), 'no such file')),
        'init-from a device': (train_main, _args(world, tmp / 'r', None, '--init-from', '/dev/zero'),
                               ('/dev/zero', 'not a regular file')),  # was 'no such file or directory'
        'init-from a file that is no checkpoint': (train_main, _args(world, tmp / 'r', None, '--init-from',
                                                                     str(tmp / 'notes.pt')),
                                                   (str(tmp / 'notes.pt'), 'not a checkpoint')),
        'init-from a pickle that runs code': (train_main, _args(world, tmp / 'r', None, '--init-from', str(tmp / 'evil.pt')),
                                              (str(tmp / 'evil.pt'), 'cannot be read', 'Give --init-from')),
        # was an AttributeError out of init_weights ('int' object has no attribute 'shape')
        'init-from weights that are no tensors': (train_main, _args(world, tmp / 'r', None, '--init-from',
                                                                    str(tmp / 'odd.pt')),
                                                  (str(tmp / 'odd.pt'), 'not a checkpoint of this project',
                                                   'Give --init-from')),
        'evaluate a folder that is no run': (evaluate_main, _eval_args(world, tmp / 'empty'),
                                             (str(tmp / 'empty'), 'not a run directory')),
        "evaluate on a dataset without the run's stores": (evaluate_main, _eval_args(world, run, '--dataset', 'vatex',
                                                                                     '--split', 'official'),
                                                           ('vatex has no store of audio, action', '--expert audio,action')),
    }


@pytest.mark.parametrize('name', ['init-from a folder without a run', 'init-from a missing path',
                                  'init-from a file that is no checkpoint', 'init-from a pickle that runs code',
                                  'init-from weights that are no tensors', 'evaluate a folder that is no run',
                                  "evaluate on a dataset without the run's stores"])
def test_a_bad_transfer_input_is_one_line(name: str, world: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    command, args, words = _bad_inputs(world, tmp_path)[name]
    line = _one_line(command(args), capsys.readouterr().err, *words)
    assert 'delete it' not in line and not (tmp_path / 'PWNED').exists()  # never advised to delete a source
    assert not (tmp_path / 'r' / 'seed0' / 'checkpoints').exists()  # refused before any split loads


def test_a_run_of_many_seeds_lists_them_in_seed_order(tmp_path: Path) -> None:
    """seed10 comes after seed2 (search and evaluation pair each seed's results with its number)."""
    from train.runs import run_seeds

    for s in (10, 2, 0, 1):
        (tmp_path / f'seed{s}').mkdir()
        (tmp_path / f'seed{s}' / 'config.yaml').write_text('{}')
    assert [p.name for p in run_seeds(tmp_path)] == ['seed0', 'seed1', 'seed2', 'seed10']


def test_evaluate_and_caption_print_the_files_they_write(world: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    """Each result file `python -m train.evaluate` and `python -m train.caption` write is named
    on a line of its own, as `python -m train` names its run directory (they wrote in silence)."""
    from train.caption import main as caption_main

    def named(out: str) -> list[Path]:
        return [Path(line[3:]) for line in out.splitlines() if line.startswith('-> ')]

    # a support-set run of two seeds over the source's experts, one epoch each: its T5 decoder captions
    cfg = yaml.safe_load((world / 'mmt2.yaml').read_text())
    cfg['model'].update(model='ssb', max_seconds=4)
    cfg['model']['text']['encoder'] = 't5'
    cfg['train']['epochs'] = 1
    (tmp_path / 'ssb.yaml').write_text(yaml.safe_dump(cfg))
    run = tmp_path / 'ssb'
    assert train_main(_args(world, run, tmp_path / 'ssb.yaml', '--seeds', '0,1')) == 0
    capsys.readouterr()
    assert evaluate_main(_eval_args(world, run, '--dataset', 'msvd', '--split', 'official')) == 0
    files = named(capsys.readouterr().out)
    assert files == [run / f'seed{s}' / 'eval' / f'msvd_official_test.{ext}' for s in (0, 1) for ext in ('json', 'md')
                     ] + [run / 'eval' / 'msvd_official_test.md']
    assert all(f.is_file() for f in files)
    assert caption_main(_eval_args(world, run / 'seed1', '--beam', '2')) == 0
    files = named(capsys.readouterr().out)
    assert files == [run / 'seed1' / 'captions' / 'demo_official_test_beam2.json']
    assert json.loads(files[0].read_text())['decoding'] == 'beam2'
