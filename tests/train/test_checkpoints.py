"""Checkpoints survive kills: written whole or not at all, and an unreadable one is one error line."""
from __future__ import annotations

import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from train.checkpoints import load_checkpoint
from train.main import main as train_main


@pytest.fixture(scope='module')
def object_stores(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """20 small demo videos with an object store (random weights, tiny inputs)."""
    from extract.run import main as extract_main
    from shared.datasets.demo import DemoCfg, generate

    root = tmp_path_factory.mktemp('ckpt')
    generate(root / 'data' / 'demo', DemoCfg(videos=20, seed=3, min_duration=1.0, max_duration=2.0, speech_rate=0.0),
             progress=False)
    assert extract_main(['--dataset', 'demo', '--data-root', str(root / 'data'), '--features-root',
                         str(root / 'features'), '--expert', 'object', '--weights', 'random', '--set', 'resize=[40]',
                         '--set', 'input_size=32', '--workers', '1', '--no-progress']) == 0
    return root / 'data', root / 'features'


def _config(tmp: Path, epochs: int) -> Path:
    """MEE with a wide embedding: last.pt (weights and Adam's moments) is ~60 MB, so most of a run's
    time is spent writing checkpoints, and a kill at a random time tends to land inside a write."""
    cfg = {'data': {'dataset': 'demo', 'split': 'official', 'word_vectors': '{data_root}/demo/word2vec.bin',
                    'max_words': 8},
           'model': {'model': 'mee', 'embed_dim': 1024, 'text_clusters': 4,
                     'experts': [{'name': 'object', 'dim': 2048}]},
           'train': {'optimizer': 'adam', 'lr': 0.001, 'epochs': epochs, 'batch_size': 4, 'margin': 0.1}}
    path = tmp / 'mee.yaml'
    path.write_text(yaml.safe_dump(cfg))
    return path


def _kill_inside_a_write(proc: subprocess.Popen, ckpt_dir: Path, rng: random.Random) -> bool:
    """SIGKILL `proc` a random 0-30 ms after a file in `ckpt_dir` is seen growing (a write under
    way, whatever the file's name); False when the run ended first."""
    sizes: dict[str, int] = {}
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        now = {}
        for p in ckpt_dir.glob('*') if ckpt_dir.is_dir() else ():
            try:
                now[p.name] = p.stat().st_size
            except FileNotFoundError:  # renamed meanwhile
                pass
        if any(0 < n != sizes.get(name, 0) for name, n in now.items()) and sizes:
            time.sleep(rng.uniform(0, 0.03))
            proc.kill()
            proc.wait(timeout=60)
            return True
        sizes = now or sizes
        time.sleep(0.001)
    return False


@pytest.mark.slow
def test_killed_while_saving_every_checkpoint_loads_and_the_rerun_finishes(
        object_stores: tuple[Path, Path], tmp_path: Path, python: str, subprocess_env: dict, repo_root: Path) -> None:
    data, features = object_stores
    run = tmp_path / 'run'
    cmd = [python, '-m', 'train', '--config', str(_config(tmp_path, epochs=10)), '--data-root', str(data),
           '--features-root', str(features), '--run-dir', str(run), '--device', 'cpu', '--no-progress']
    ckpt_dir = run / 'seed0' / 'checkpoints'
    rng = random.Random()
    kills = 0
    for _ in range(3):
        proc = subprocess.Popen(cmd, cwd=repo_root, env=subprocess_env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        if not _kill_inside_a_write(proc, ckpt_dir, rng):
            proc.communicate(timeout=60)
            break
        kills += 1
        assert proc.returncode == -signal.SIGKILL
        for f in sorted(ckpt_dir.glob('*.pt')):  # every checkpoint there is whole
            load_checkpoint(f)
    assert kills >= 2, 'the runs ended before they could be killed'
    again = subprocess.run(cmd, cwd=repo_root, env=subprocess_env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert load_checkpoint(ckpt_dir / 'last.pt')['epoch'] == 9


def _one_epoch(stores: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> tuple[list[str], Path]:
    """A finished one-epoch run in tmp_path/run, and the arguments that trained it."""
    data, features = stores
    run = tmp_path / 'run'
    args = ['--config', str(_config(tmp_path, epochs=1)), '--data-root', str(data), '--features-root', str(features),
            '--run-dir', str(run), '--device', 'cpu', '--no-progress']
    assert train_main(args) == 0
    capsys.readouterr()
    return args, run


def test_a_truncated_checkpoint_is_one_line(object_stores: tuple[Path, Path], tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    args, run = _one_epoch(object_stores, tmp_path, capsys)
    last = run / 'seed0' / 'checkpoints' / 'last.pt'
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # as a kill inside an in-place write left it
    assert train_main([*args, '--set', 'train.epochs=2']) == 1
    err = capsys.readouterr().err
    assert err.startswith(f'error: checkpoint {last} cannot be read') and err.count('\n') == 1, err
    assert 'Traceback' not in err and 'delete it and rerun' in err
    last.unlink()  # as the line says: the run then trains again from its first epoch
    assert train_main([*args, '--set', 'train.epochs=2']) == 0


@pytest.mark.parametrize('name', ['mee', 'ce', 'concat', 'mmt'])
def test_positional_checkpoints_load_by_expert_name(name: str) -> None:
    """Weights saved when per-expert modules were lists (and the mixture / expert embedding one
    matrix) load into the name-keyed modules and give the same scores."""
    import torch

    import tests.train.test_models as A
    import tests.train.test_transformer_models as B
    from train.checkpoints import by_expert_name
    from train.models import create_model, model_cfg

    saved = torch.load(Path(__file__).parent / 'data' / 'positional_experts.pt', weights_only=True)[name]
    if name == 'mmt':
        model = create_model(model_cfg(model='mmt', experts=B.EXPERTS, transformer=B.SMALL, text=B.TINY_BERT))
        video, text = B._videos(4, 2), B._texts(3, 2)
    else:
        # saved before collaborative gating took the mean of its pairs: the sum it was fitted with
        pairs = {'gating_pairs': 'sum'} if A.VARIANTS[name].get('gating') == 'collaborative' else {}
        model = create_model(model_cfg(experts=A.EXPERTS, embed_dim=24, text_dim=12, text_clusters=3,
                                      **A.VARIANTS[name], **pairs))
        video, text = A._videos(4, 2), A._texts(3, 2)
    assert set(saved['model']) != set(model.state_dict())  # the old keys: a rename is needed
    model.load_state_dict(by_expert_name(saved['model'], model))  # strict: every key matched
    with torch.no_grad():
        assert torch.equal(model.eval().scores(video, text), saved["scores"])


def test_a_run_whose_optimiser_state_does_not_fit_the_model_is_one_line(object_stores: tuple[Path, Path],
                                                                       tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture) -> None:
    """A run saved by an earlier version of its model (a parameter added since: the weights load,
    the optimiser state has one parameter fewer) is not resumed with torch's ValueError but with a
    line that says what to do."""
    import torch

    args, run = _one_epoch(object_stores, tmp_path, capsys)
    last = run / 'seed0' / 'checkpoints' / 'last.pt'
    saved = torch.load(last, weights_only=True)
    group = saved['optimizer']['param_groups'][0]
    saved['optimizer']['state'].pop(group['params'][-1], None)
    group['params'] = group['params'][:-1]
    torch.save(saved, last)
    assert train_main([*args, '--set', 'train.epochs=2']) == 1
    err = capsys.readouterr().err
    assert err.startswith(f'error: {run / "seed0"} holds a run whose optimiser state does not fit') and \
        err.count('\n') == 1, err
    assert f'--init-from {run / "seed0"}' in err and 'Traceback' not in err


def test_a_run_whose_weights_do_not_fit_the_model_any_more_is_one_line_with_resume_advice(
        object_stores: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A weight whose shape changed since the run was saved (the settings match, so the model's code
    changed): the line says that it cannot be resumed and what to do, not to put back config.yaml."""
    import torch

    args, run = _one_epoch(object_stores, tmp_path, capsys)
    last = run / 'seed0' / 'checkpoints' / 'last.pt'
    saved = torch.load(last, weights_only=True)
    key = next(iter(saved['model']))
    saved['model'][key] = torch.zeros(*saved['model'][key].shape[:-1], saved['model'][key].shape[-1] + 1)
    torch.save(saved, last)
    assert train_main([*args, '--set', 'train.epochs=2']) == 1
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'Traceback' not in err, err
    assert 'cannot be resumed' in err and f'--init-from {run / "seed0"}' in err and 'put back' not in err


def test_a_source_checkpoint_check_maps_its_tensors_and_keeps_its_advice(tmp_path: Path) -> None:
    """`--init-from`'s early check (`load_checkpoint(mmap=True)`): a checkpoint torch cannot map (its
    legacy format) still loads, and a damaged frozen.pt beside a source gets the caller's advice, not
    the one for a run's own files ('delete .../checkpoints and rerun' would delete the pretraining)."""
    import torch

    from shared.files import atomic_save
    from train.checkpoints import FROZEN, CheckpointError

    legacy = tmp_path / 'legacy.pt'
    torch.save({'model': {'w': torch.arange(3.0)}}, legacy, _use_new_zipfile_serialization=False)
    assert torch.equal(load_checkpoint(legacy, mmap=True)['model']['w'], torch.arange(3.0))
    source = tmp_path / 'pretrain' / 'checkpoints' / 'final.pt'
    source.parent.mkdir(parents=True)
    atomic_save({'model': {'w': torch.zeros(2)}}, source)
    (source.parent / FROZEN).write_bytes(b'not a checkpoint')
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(source, advice='Give --init-from another run', mmap=True)
    assert str(caught.value).endswith('Give --init-from another run') and 'delete' not in str(caught.value)


def test_a_checkpoint_with_a_compressed_record_is_refused_before_it_inflates(tmp_path: Path) -> None:
    """torch.save stores its records as they are, while torch.load inflates a deflated one whole: a
    forged 260 KB --init-from source read as a 256 MB tensor (1000-fold; a few such records fill the
    memory). Such a file is refused unread, with the caller's advice."""
    import zipfile

    import torch

    from shared.files import atomic_save
    from train.checkpoints import CheckpointError

    saved, forged = tmp_path / 'saved.pt', tmp_path / 'forged.pt'
    atomic_save({'model': {'w': torch.zeros(1 << 20)}}, saved)  # 4 MB of zeros
    with zipfile.ZipFile(saved) as src, zipfile.ZipFile(forged, 'w') as out:
        for info in src.infolist():  # the same records, deflated
            out.writestr(info.filename, src.read(info.filename), compress_type=zipfile.ZIP_DEFLATED)
    assert forged.stat().st_size < 20_000
    assert load_checkpoint(saved)['model']['w'].shape == (1 << 20,)  # what torch.save wrote still loads
    for mmap in (False, True):
        with pytest.raises(CheckpointError, match=r'holds a compressed record \(.*\), which torch.save never '
                                                  r'writes.*Give --init-from another run$'):
            load_checkpoint(forged, advice='Give --init-from another run', mmap=mmap)


def test_a_checkpoint_write_killed_with_minus_9_is_removed_by_the_next_save(tmp_path: Path,
                                                                            gone_and_live_pids) -> None:
    """A run killed with -9 inside a checkpoint write leaves `.last.pt.HOST-PID.tmp`, as large as the
    checkpoint: the next save removed it only an hour later, so runs killed and resumed again and again
    (preemptible jobs) piled them up. It goes at the next save once its process is gone; a live
    process's (another run writing into the folder) stays."""
    import tests.train.test_models as A
    from shared.files import _host
    from train.checkpoints import save_checkpoint
    from train.models import create_model, model_cfg

    dead, running = (tmp_path / f'.last.pt.{_host()}-{pid}.tmp' for pid in gone_and_live_pids)
    for p in (dead, running):
        p.write_bytes(b'half a checkpoint')
    model = create_model(model_cfg(experts=A.EXPERTS, embed_dim=8, text_dim=12, text_clusters=3, model='mee'))
    save_checkpoint(model, tmp_path / 'last.pt', epoch=1)
    assert not dead.exists() and running.exists()
    assert load_checkpoint(tmp_path / 'last.pt', 'cpu')['epoch'] == 1
