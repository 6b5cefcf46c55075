"""Sharded extraction on a real Dask LocalCluster: same stores as one process, even when a worker dies."""
from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from extract.run import RunOptions
from extract.run import main as extract_main
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
    import torch

    features = tmp_path_factory.mktemp('single')
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _single(small_demo, features)
    finally:
        torch.set_num_threads(threads)
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
def test_two_workers_give_the_single_process_stores(small_demo: Path, reference: Path, tmp_path: Path, client) -> None:
    from pipelines.extract_cluster import extract_cluster

    assert extract_cluster(client, _opts(small_demo, tmp_path), num_shards=4, progress=False) == 0
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
