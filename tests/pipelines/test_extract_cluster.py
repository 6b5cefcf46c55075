"""Sharded extraction on a real Dask LocalCluster: same stores as one process, even when a worker dies."""
from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from extract.run import RunOptions
from extract.run import main as extract_main
from shared.device import torch_threads
from shared.store import check_store, open_store, store_path

EXPERTS = ['object', 'audio']
SETTINGS = {'object.resize': [40, 40], 'object.input_size': 32, 'object.fps': 2}


def _single(small_demo: Path, features: Path) -> None:
    args = ['--dataset', 'demo', '--expert', ','.join(EXPERTS), '--data-root', str(small_demo.parent),
            '--features-root', str(features), '--weights', 'random', '--chunk-size', '2', '--workers', '0',
            '--no-progress']
    for k, v in SETTINGS.items():
        args += ['--set', f'{k}={v}']
    assert extract_main(args) == 0


def _opts(small_demo: Path, features: Path) -> dict:
    return dataclasses.asdict(RunOptions(dataset='demo', experts=list(EXPERTS), data_root=small_demo.parent,
                                         features_root=features, weights='random', settings=dict(SETTINGS),
                                         workers=0, chunk_size=2, device='cpu'))


def _same(a: Path, b: Path) -> None:
    for e in EXPERTS:
        x, y = open_store(store_path(a, 'demo', e)).read(), open_store(store_path(b, 'demo', e)).read()
        assert check_store(store_path(b, 'demo', e)).exit_code == 0
        for f in ('features', 'timestamps', 'lengths', 'available', 'status'):
            np.testing.assert_array_equal(getattr(x, f), getattr(y, f), err_msg=f'{e}.{f}')


@pytest.fixture(scope='module')
def reference(small_demo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The single-process stores, computed with one intra-op thread as Dask workers use
    (OMP_NUM_THREADS=1): the thread count changes float summation order, the sharding must not."""
    features = tmp_path_factory.mktemp('single')
    with torch_threads(1):
        _single(small_demo, features)
    return features


@pytest.fixture()
def client():
    import dask
    from distributed import Client, LocalCluster

    dask.config.set({'distributed.worker.daemon': False})
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as c:
        yield c


@pytest.mark.slow
def test_two_workers_give_the_single_process_stores(small_demo: Path, reference: Path, tmp_path: Path, client,
                                                    capsys: pytest.CaptureFixture) -> None:
    from pipelines.extract_cluster import extract_cluster

    assert extract_cluster(client, _opts(small_demo, tmp_path), num_shards=4, progress=False) == 0
    out = capsys.readouterr().out
    for e in EXPERTS:  # the final check: each store's summary, ending with its verdict
        summary = out[out.index(f'store     {store_path(tmp_path, "demo", e)}'):].split('\n\n')[0].rstrip()
        assert f'expert    {e} on demo' in summary and summary.endswith('result    VALID, COMPLETE'), out
    _same(reference, tmp_path)
    # both workers' plugins loaded the experts (that the shards reuse them, rather than load their own, is not
    # checked here)
    loads = client.run(lambda dask_worker: dask_worker.plugins['videoexperts-experts'].experts is not None)
    assert all(loads.values()) and len(loads) == 2


@pytest.mark.slow
def test_a_killed_worker_still_ends_with_complete_identical_stores(small_demo: Path, reference: Path, tmp_path: Path,
                                                                    client) -> None:
    from pipelines.extract_cluster import extract_cluster

    pids = client.run(os.getpid)
    status = store_path(tmp_path, 'demo', EXPERTS[0])
    killed: list[int] = []

    def kill_one_midway() -> None:
        deadline = time.time() + 300
        while time.time() < deadline:
            try:
                done = (open_store(status, warn_random=False).status() != 0).sum()
            except Exception:  # noqa: BLE001 - the store is not there yet
                done = 0
            if done >= 2:  # the first chunk is written: kill a worker while shards are in flight
                pid = next(iter(pids.values()))
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.05)

    t = threading.Thread(target=kill_one_midway)
    t.start()
    code = extract_cluster(client, _opts(small_demo, tmp_path), num_shards=4, retries=2, progress=False)
    t.join()
    assert killed, 'the run finished before a worker could be killed'
    assert code == 0
    _same(reference, tmp_path)


def _cluster_cli(scheduler: str, tmp_path: Path) -> tuple[int, float]:
    """`python -m pipelines.extract_cluster` with `scheduler`: (exit code, seconds taken)."""
    from pipelines.extract_cluster import main

    t0 = time.time()
    code = main(['--dataset', 'demo', '--experts', 'object', '--scheduler', scheduler, '--data-root', str(tmp_path),
                 '--features-root', str(tmp_path), '--no-progress'])
    return code, time.time() - t0


def test_slurm_without_sbatch_is_one_line_and_an_exit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv('PATH', str(tmp_path))  # no sbatch here (this machine has none anyway)
    code, seconds = _cluster_cli('slurm', tmp_path)
    err = capsys.readouterr().err
    assert code == 1 and seconds < 30 and err.count('\n') == 1 and 'Traceback' not in err, err
    assert '--scheduler slurm' in err and 'sbatch' in err and '--scheduler local' in err
    assert not list(tmp_path.glob('demo*'))  # nothing made


def test_an_address_with_nothing_listening_is_one_line_at_once(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import socket

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    code, seconds = _cluster_cli(f'tcp://127.0.0.1:{port}', tmp_path)
    err = capsys.readouterr().err
    assert code == 1 and seconds < 10 and err.count('\n') == 1 and 'Traceback' not in err, err
    assert f'tcp://127.0.0.1:{port}' in err and 'nothing answers' in err and 'dask scheduler' in err
    code, _ = _cluster_cli('tcp://no-such-host.invalid:8786', tmp_path)
    err = capsys.readouterr().err
    assert code == 1 and err.count('\n') == 1 and 'no-such-host.invalid' in err, err


@pytest.mark.parametrize(('flag', 'value'), [('--workers', '0'), ('--workers', '-2'), ('--gpus', '-1'),
                                             ('--num-shards', '0'), ('--retries', '-1'), ('--decode-workers', '0')])
def test_a_count_out_of_range_is_a_usage_error_at_once(flag: str, value: str, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    """Probe 7: --workers 0 and --gpus -1 made a cluster on which no task could run, and waited forever;
    --num-shards 0 and -3 were quietly replaced."""
    from pipelines.extract_cluster import main

    with pytest.raises(SystemExit) as exit_:
        main(['--dataset', 'demo', '--experts', 'scene', '--data-root', str(tmp_path), '--features-root',
              str(tmp_path), flag, value])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and f"argument {flag}: '{value}': give a whole number >= " in err, err
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_expert_is_its_message_not_a_quoted_repr(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A KeyError printed as str() is its repr: the line was 'error: "unknown expert ..."', in quotes."""
    from pipelines.extract_cluster import main

    (tmp_path / 'videos').mkdir()
    (tmp_path / 'videos' / 'a.mp4').write_bytes(b'')
    code = main(['--dataset', f'folder:{tmp_path / "videos"}', '--experts', 'nope', '--features-root',
                 str(tmp_path / 'f')])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: unknown expert 'nope' (known: "), err


def test_sigterm_stops_the_driver_in_one_line_with_its_cluster_closed(tmp_path: Path, python: str,
                                                                    subprocess_env: dict) -> None:
    """SIGTERM (a SLURM time limit) killed the driver at once (exit 143) without a word, and the workers
    logged CommClosedError tracebacks as they lost their scheduler. It stops as Ctrl-C does now. The
    cluster here is a stand-in that records its closing; the run sends itself the SIGTERM."""
    script = f'''
import os, signal, sys, time
import pipelines.extract_cluster as ec

class Cluster:
    def close(self):
        open({str(tmp_path / "closed")!r}, "w").close()

class Client:
    cluster = Cluster()
    def close(self):
        pass

def extract_cluster(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)
    return 0

ec.make_client = lambda *args, **kwargs: Client()
ec.extract_cluster = extract_cluster
(videos := {str(tmp_path / "videos")!r}) and os.makedirs(videos, exist_ok=True)
open(os.path.join(videos, "a.mp4"), "wb").close()
sys.exit(ec.main(["--dataset", "folder:" + videos, "--experts", "object", "--features-root", {str(tmp_path / "f")!r}]))
'''
    done = subprocess.run([python, '-c', script], env=subprocess_env, capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 130, (done.returncode, done.stderr[-2000:])
    assert done.stderr.strip().endswith('interrupted: finished chunks are saved; rerun the same command to continue')
    assert 'Traceback' not in done.stderr and (tmp_path / 'closed').exists()
