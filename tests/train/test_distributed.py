"""Training on many processes through torchrun (issue 21, item 2): real torchrun, gloo, two CPU
processes; the step of N ranks at B/N is the step of one process at B; a killed rank's run resumes
to the uninterrupted run's weights; bad input stops every rank with one line."""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.train.ddp_step import CASES, one_step
from tests.train.test_train import _args, _with_dropout
from train.main import main as train_main

TORCHRUN = [sys.executable, '-m', 'torch.distributed.run', '--nproc-per-node']


def _torchrun(n: int, *args: str) -> list[str]:
    """torchrun with `n` processes; --standalone: a free port (tests or sessions may overlap)."""
    return [*TORCHRUN, str(n), '--standalone', *args]


@pytest.fixture(scope='module')
def ddp_steps(tmp_path_factory: pytest.TempPathFactory, subprocess_env: dict,
              repo_root: Path) -> tuple[subprocess.CompletedProcess, Path, Path]:
    """One torchrun launch of `tests.train.ddp_step` (two ranks) for two tests: its steps (saved to
    ddp.pt), then `ddp_nonfinite`'s step (outcome.<rank>); the run and both outputs."""
    tmp = tmp_path_factory.mktemp('ddp')
    out, outcome = tmp / 'ddp.pt', tmp / 'outcome'
    run = subprocess.run(_torchrun(2, '-m', 'tests.train.ddp_step', str(out), str(outcome)), cwd=repo_root,
                         env=subprocess_env, capture_output=True, text=True, timeout=600)
    return run, out, outcome


@pytest.mark.slow
def test_two_ranks_at_half_the_batch_take_the_step_of_one_process(ddp_steps: tuple) -> None:
    """MEE, CE, MMT and the support-set model: losses and weights after one SGD step agree (batch
    norm in eval mode: CPU ranks cannot synchronise it)."""
    run, out, _ = ddp_steps
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = torch.load(out, weights_only=True)
    for name in CASES:
        loss, weights = one_step(name)
        two_loss, two_weights = ranks[name]
        if name == 'ssb-local':  # a support set of each rank's own videos: another objective
            assert abs(two_loss - loss) > 1e-3
            continue
        assert two_loss == pytest.approx(loss, rel=1e-6, abs=1e-6), name
        assert weights.keys() == two_weights.keys()
        for k in weights:
            torch.testing.assert_close(two_weights[k], weights[k], rtol=1e-5, atol=1e-6, msg=f'{name} {k}')


def _rank_pid(launcher: int, rank: int) -> int | None:
    """The pid of the worker of local rank `rank` that torchrun `launcher` started."""
    try:
        children = Path(f'/proc/{launcher}/task/{launcher}/children').read_text().split()
    except OSError:
        return None
    for pid in children:
        try:
            env = Path(f'/proc/{pid}/environ').read_bytes().split(b'\0')
        except OSError:
            continue
        if f'LOCAL_RANK={rank}'.encode() in env:
            return int(pid)
    return None


@pytest.mark.slow
def test_a_rank_killed_midway_resumes_to_the_uninterrupted_run(demo_stores: tuple[Path, Path], tmp_path: Path,
                                                                subprocess_env: dict, repo_root: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    """The support-set model with dropout: batch norm of each rank's own statistics, and each rank's
    own dropout masks, whose generators the checkpoint keeps (a rank resumed from another's stream
    trains other weights)."""
    data, features = demo_stores
    config = _with_dropout(tmp_path, 6, model='ssb')
    killed, whole = tmp_path / 'killed', tmp_path / 'whole'
    # the killed run writes last.pt every 3 steps (4 an epoch) and not at epochs' ends: steps 3, 6, 9 (part way
    # through epochs 1-3), 12 (epoch 3's end) ...; it resumes part way through an epoch
    every = {killed: ('--set', 'train.checkpoint_steps=3', '--set', 'train.checkpoint_every=100'), whole: ()}
    cmd = lambda run: _torchrun(2, '-m', 'train', *_args(data, features, config, run), *every[run])  # noqa: E731
    proc = subprocess.Popen(cmd(killed), cwd=repo_root, env=subprocess_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    log, last = killed / 'seed0' / 'metrics.jsonl', killed / 'seed0' / 'checkpoints' / 'last.pt'
    deadline = time.time() + 300
    victim, written = None, []  # last.pt's inodes (each write renames a new file into place) from epoch 2's line on
    while time.time() < deadline and proc.poll() is None:
        if log.is_file() and len(log.read_text().splitlines()) >= 2:
            with contextlib.suppress(FileNotFoundError):
                if not written or written[-1] != last.stat().st_ino:
                    written.append(last.stat().st_ino)
        if len(written) >= 2:  # step 6's, then step 9's, written after epoch 2's line (step 8)
            victim = _rank_pid(proc.pid, 1)
            if victim is not None:
                os.kill(victim, signal.SIGKILL)
                break
        time.sleep(0.02)
    _, err = proc.communicate(timeout=120)
    assert victim is not None, f'training ended before a rank could be killed: {err[-2000:]}'
    assert proc.returncode != 0
    assert 2 <= len(log.read_text().splitlines()) < 6
    assert torch.load(last, weights_only=True)['epoch_steps'] > 0  # resumed part way through an epoch
    again = subprocess.run(cmd(killed), cwd=repo_root, env=subprocess_env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert 'resuming' in again.stdout and 'x 2 processes' in again.stdout
    assert 'own batch statistics' in again.stdout  # its caption batch norm, unsynchronised on the CPU
    uninterrupted = subprocess.run(cmd(whole), cwd=repo_root, env=subprocess_env, capture_output=True, text=True,
                                   timeout=600)
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
    for name in ('test_metrics.json', 'metrics.jsonl'):
        a, b = ((r / 'seed0' / name).read_text() for r in (killed, whole))
        if name == 'metrics.jsonl':  # the epochs' seconds differ
            a, b = ([{k: v for k, v in json.loads(line).items() if k != 'train/seconds'} for line in t.splitlines()]
                    for t in (a, b))
        assert a == b, name
    wa = torch.load(killed / 'seed0' / 'checkpoints' / 'last.pt', weights_only=True)
    wb = torch.load(whole / 'seed0' / 'checkpoints' / 'last.pt', weights_only=True)
    assert wa['world_size'] == 2 and all(torch.equal(wa['model'][k], wb['model'][k]) for k in wb['model'])
    assert len(wa['rng']) == 2 and not torch.equal(*wa['rng'])  # the ranks draw their own masks
    # one process continues the two-process run, and says that the data order changed
    cfg = yaml.safe_load(config.read_text())
    cfg['train']['epochs'] = 7
    config.write_text(yaml.safe_dump(cfg))
    assert train_main(_args(data, features, config, whole)) == 0
    assert 'trained by 2 process(es) and continues with 1: the data order changed' in capsys.readouterr().out


def _small_config(tmp: Path, batch: int) -> Path:
    """An MEE config for the small demo (its word vectors; the stores are never read)."""
    cfg = {'data': {'dataset': 'demo', 'split': 'official', 'word_vectors': '{data_root}/demo/word2vec.bin'},
           'model': {'model': 'mee', 'experts': [{'name': 'object', 'dim': 2048}]},
           'train': {'batch_size': batch, 'epochs': 1}}
    path = tmp / 'small.yaml'
    path.write_text(yaml.safe_dump(cfg))
    return path


def _errors(run: subprocess.CompletedProcess) -> list[str]:
    return [line for line in run.stderr.splitlines() if line.startswith('error')]


@pytest.mark.slow
def test_ranks_given_different_configs_stop_with_one_line(small_demo: Path, tmp_path: Path, subprocess_env: dict,
                                                          repo_root: Path) -> None:
    config = _small_config(tmp_path, 4)
    # each process is given another learning rate, as a config file that differs between nodes would
    train = (f'{sys.executable} -m train --config {config} --data-root {small_demo.parent} --features-root '
             f'{tmp_path / "features"} --run-dir {tmp_path / "run"} --device cpu --no-progress '
             '--set train.lr=0.00$((RANK + 1))')
    start = time.time()
    run = subprocess.run(_torchrun(2, '--no-python', 'sh', '-c', train), cwd=repo_root, env=subprocess_env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode != 0 and time.time() - start < 120
    assert _errors(run) == ["error: the 2 processes were given different runs (config.train.lr: 0.001 on process 0, "
                            "0.002 on process 1): give every process the same config, --set overrides and options"]
    assert not (tmp_path / 'run').exists()


@pytest.mark.slow
def test_more_processes_than_training_videos_stop_with_one_line(small_demo: Path, tmp_path: Path,
                                                                subprocess_env: dict, repo_root: Path) -> None:
    from shared.datasets import load_manifest

    videos = len(load_manifest('demo', small_demo.parent).split('official').ids('train'))
    config = _small_config(tmp_path, videos)
    start = time.time()
    run = subprocess.run(_torchrun(videos + 1, '-m', 'train', '--config', str(config), '--data-root',
                                   str(small_demo.parent), '--features-root', str(tmp_path / 'features'),
                                   '--run-dir', str(tmp_path / 'run'), '--device', 'cpu', '--no-progress'),
                         cwd=repo_root, env=subprocess_env, capture_output=True, text=True, timeout=300)
    assert run.returncode != 0 and time.time() - start < 180
    assert _errors(run) == [f'error: {videos + 1} processes, but the split has only {videos} training videos: each '
                            'process needs at least one video a step; start torchrun with --nproc-per-node (x nodes) '
                            f'of at most {videos}']


@pytest.mark.slow
def test_an_expert_missing_from_a_ranks_batch_still_reduces_every_gradient(tiny: Path, tmp_path: Path,
                                                                           subprocess_env: dict,
                                                                           repo_root: Path) -> None:
    """MEE with a NetVLAD expert that no training video has (the demo's speech): its batch norm
    sees no token, and its parameters got no gradient, which DistributedDataParallel refuses
    ('parameters that were not used'). Two ranks now train it, and Adam leaves it as it was made."""
    import shutil

    from shared.store import StoreSpec, VideoResult, create_store, pack_chunk, store_path
    from tests.train.conftest import DIM, ROWS, tiny_args

    root = tmp_path / 'tiny'
    shutil.copytree(tiny, root)
    ids = json.loads((root / 'data' / 'demo' / 'demo.json').read_text())['videos']
    spec = StoreSpec(dataset='demo', expert='audio', feature_dim=DIM, max_rows=ROWS, chunk_size=len(ids),
                     model='toy', weights='random')
    store = create_store(store_path(root / 'features', 'demo', 'audio'), [v['id'] for v in ids], spec)
    store.write_chunk(0, pack_chunk([VideoResult.skipped(DIM, 'no audio stream')] * len(ids), ROWS, DIM,
                                    has_tokens=False))
    cfg = yaml.safe_load((root / 'mee.yaml').read_text())
    cfg['model']['experts'].append({'name': 'audio', 'dim': DIM, 'aggregation': 'vlad', 'clusters': 2,
                                    'max_tokens': ROWS})
    cfg['train']['weight_decay'] = 0.0  # which a zero gradient would still apply, unlike none
    config = root / 'mee_audio.yaml'
    config.write_text(yaml.safe_dump(cfg))
    run = tmp_path / 'run'
    proc = subprocess.run(_torchrun(2, '-m', 'train', *tiny_args(root, run, config=config)), cwd=repo_root,
                          env=subprocess_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    weights = torch.load(run / 'seed0' / 'checkpoints' / 'last.pt', weights_only=True)['model']
    bn = {k: v for k, v in weights.items() if 'vlad' in k and 'audio' in k and '.bn.' in k}
    assert torch.equal(bn[next(k for k in bn if k.endswith('bn.weight'))], torch.ones(2))  # a zero gradient


@pytest.mark.slow
def test_ctrl_c_under_train_launch_ends_in_one_line(tiny: Path, tmp_path: Path, subprocess_env: dict,
                                                    repo_root: Path) -> None:
    """Ctrl-C at a terminal (SIGINT to the whole process group): torchrun stops its processes,
    rank 0 says how to go on, and train.launch exits 130 without torchrun's SignalException traceback."""
    from tests.train.conftest import tiny_args

    run = tmp_path / 'run'
    cmd = [sys.executable, '-m', 'train.launch', '--standalone', '--nproc-per-node', '2', '-m', 'train',
           *tiny_args(tiny, run, '--set', 'train.epochs=100000')]
    proc = subprocess.Popen(cmd, cwd=repo_root, env=subprocess_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    last, deadline = run / 'seed0' / 'checkpoints' / 'last.pt', time.time() + 180
    while not last.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130 and 'Traceback' not in err, err[-3000:]
    assert _ours(err)[-1].startswith('interrupted: rerun the same command to continue'), err[-3000:]



def _ours(err: str) -> list[str]:
    """The lines of `err` less torchrun's own log lines ("W1128 15:41:28.280000 ... Sending process N closing
    signal SIGINT"), which may come after rank 0's last line as the processes' writes interleave."""
    return [ln for ln in err.strip().splitlines() if ln.strip() and not re.match(r'[DIWEF]\d{4} \d\d:\d\d:\d\d', ln)]


def _in_chunks(tiny: Path, out: Path, size: int) -> Path:
    """The `tiny` dataset with a store of random features in chunks of `size` videos: each rank streams
    its own share of the chunks (tiny's one chunk leaves a rank none)."""
    from shared.store import DONE, StoreSpec, VideoResult, create_store, pack_chunk, store_path
    from tests.train.conftest import DIM, N_VIDEOS, ROWS

    shutil.copytree(tiny / 'data', out / 'data')
    shutil.copy(tiny / 'mee.yaml', out / 'mee.yaml')
    ids = [v['id'] for v in json.loads((tiny / 'data' / 'demo' / 'demo.json').read_text())['videos']]
    spec = StoreSpec(dataset='demo', expert='object', feature_dim=DIM, max_rows=ROWS, chunk_size=size, model='toy',
                     weights='random')
    store = create_store(store_path(out / 'features', 'demo', 'object'), ids, spec)
    rng, times = np.random.default_rng(0), np.stack([np.arange(ROWS), np.arange(ROWS) + 1.0], axis=1)
    for c in range(N_VIDEOS // size):
        rows = [VideoResult(rng.standard_normal((ROWS, DIM)).astype(np.float32), times, DONE) for _ in range(size)]
        store.write_chunk(c, pack_chunk(rows, ROWS, DIM, has_tokens=False))
    return out


@pytest.mark.slow
def test_sigterm_to_train_launch_stops_as_ctrl_c_and_leaves_no_feature_cache(tiny: Path, tmp_path: Path,
                                                                             subprocess_env: dict,
                                                                             repo_root: Path) -> None:
    """SIGTERM to torchrun (a scheduler's pre-emption, a `kill`): torchrun passes it to its processes,
    which stop as at Ctrl-C, rank 0 saying how to go on, and remove their streamed parts' feature
    caches; SIGTERM's default had killed them at once, silent, the caches left in the run directory."""
    from tests.train.conftest import tiny_args

    root, run = _in_chunks(tiny, tmp_path / 'tiny', 4), tmp_path / 'run'
    cmd = [sys.executable, '-m', 'train.launch', '--standalone', '--nproc-per-node', '2', '-m', 'train',
           *tiny_args(root, run, '--set', 'train.epochs=100000', '--set', 'train.streaming=on')]
    proc = subprocess.Popen(cmd, cwd=repo_root, env=subprocess_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    seed, deadline = run / 'seed0', time.time() + 180
    caches = lambda: sorted(p.name for p in seed.glob('videoexperts-stream-cache-*'))  # noqa: E731
    while not ((seed / 'checkpoints' / 'last.pt').is_file() and caches()) and proc.poll() is None \
            and time.time() < deadline:
        time.sleep(0.05)
    assert caches(), 'no feature cache was made'
    os.kill(proc.pid, signal.SIGTERM)  # torchrun alone: it stops its processes with the same signal
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + signal.SIGTERM and 'Traceback' not in err, err[-3000:]
    assert _ours(err)[-1].startswith('interrupted: rerun the same command to continue'), err[-3000:]
    assert caches() == []


@pytest.mark.slow
def test_the_partner_of_a_killed_rank_stops_with_one_line(tiny: Path, tmp_path: Path, subprocess_env: dict,
                                                           repo_root: Path) -> None:
    """kill -9 on rank 1 (the out-of-memory killer): rank 0's next collective fails; it printed gloo's
    traceback of some 30 lines ("Connection reset by peer"), now one line naming what happened."""
    from tests.train.conftest import tiny_args

    run = tmp_path / 'run'
    cmd = [sys.executable, '-m', 'train.launch', '--standalone', '--nproc-per-node', '2', '-m', 'train',
           *tiny_args(tiny, run, '--set', 'train.epochs=100000')]
    proc = subprocess.Popen(cmd, cwd=repo_root, env=subprocess_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    last, deadline, victim = run / 'seed0' / 'checkpoints' / 'last.pt', time.time() + 180, None
    while victim is None and proc.poll() is None and time.time() < deadline:
        victim = _rank_pid(proc.pid, 1) if last.is_file() else None
        time.sleep(0.05)
    assert victim is not None, 'the run ended before a rank could be killed'
    os.kill(victim, signal.SIGKILL)
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 1 and 'Traceback' not in err, err[-3000:]
    assert 'killed by SIGKILL' in err.strip().splitlines()[-1], err[-3000:]

def test_each_rank_draws_its_own_dropout_stream_and_rank_0_that_of_one_process() -> None:
    """`seed_rank` after every rank made the same weights: rank 0 keeps the one-process stream,
    each other rank takes one of its own, a function of (seed, rank, epoch, step)."""
    from train.distributed import Dist, seed_rank

    def draw(rank: int, *more: int) -> torch.Tensor:
        torch.manual_seed(5)
        seed_rank(Dist(rank, 3), 0, *more)
        return torch.rand(4)

    one = draw(0)
    torch.manual_seed(5)
    assert torch.equal(one, torch.rand(4))
    streams = [draw(1), draw(2), draw(1, 2, 0)]
    assert all(not torch.equal(a, b) for i, a in enumerate([one, *streams]) for b in streams[i:] if a is not b)
    assert torch.equal(draw(2), streams[1])


@pytest.mark.slow
def test_non_finite_gradients_on_one_rank_stop_every_rank_at_the_step(ddp_steps: tuple) -> None:
    """Rank 1's loss is finite and its gradients NaN, rank 0's both finite: the reduced gradients
    are NaN on both ranks, so both stop at step 1 (both finished it, their weights NaN). The ranks
    of `ddp_steps`' launch, after their other steps (`ddp_nonfinite` alone is the same step)."""
    run, _, out = ddp_steps
    assert run.returncode == 0, run.stderr[-3000:]
    assert [Path(f'{out}.{r}').read_text() for r in (0, 1)] == ['step 1', 'step 1']
