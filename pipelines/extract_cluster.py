"""`python -m pipelines.extract_cluster`: sharded extraction on a Dask cluster.

    python -m pipelines.extract_cluster --dataset msrvtt --experts object,scene --scheduler local --workers 2
    python -m pipelines.extract_cluster --dataset msrvtt --experts all --scheduler tcp://10.0.0.5:8786
    python -m pipelines.extract_cluster --dataset msrvtt --experts all --scheduler slurm --workers 8 --gpus 1 \\
        --slurm-partition gpu --slurm-walltime 04:00:00

One task per shard (a contiguous range of whole store chunks, so tasks never share a chunk). Each
worker builds and loads the experts once (a worker plugin) and runs every shard it is given with
them. A failed task is retried (--retries); a worker that dies has its task rescheduled, and the
shard continues from the chunks already written (the store's resume rule). GPU workers declare a
``GPU`` resource and every task asks for one, so one task runs per GPU. At the end every store is
checked (`shared.store.check_store`); the exit code is 0 when all are valid and complete.
"""
from __future__ import annotations

import argparse
import dataclasses
import shutil
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from shared.config import ConfigError, int_at_least, parse_overrides
from shared.datasets import DatasetError, load_manifest
from shared.store import StoreError, check_store

__all__ = ['ExpertsPlugin', 'extract_shard', 'extract_cluster', 'make_client', 'main']

PLUGIN = 'videoexperts-experts'


class ExpertsPlugin(WorkerPlugin):
    """A Dask worker plugin that builds and loads the run's experts once per worker process."""

    name = PLUGIN

    def __init__(self, opts: dict[str, Any]) -> None:
        self.opts = opts
        self.experts: list[Any] | None = None

    def setup(self, worker: Any) -> None:
        from extract.run import RunOptions, build_experts, load_experts
        from shared.device import pick_device

        opts = RunOptions(**self.opts)
        self.experts = build_experts(opts)
        load_experts(self.experts, pick_device(opts.device))

    def teardown(self, worker: Any) -> None:
        self.experts = None


def extract_shard(opts: dict[str, Any], shard: int, num_shards: int) -> dict[str, Any]:
    """Run one shard on this worker with the plugin's loaded experts (a Dask task)."""
    from distributed import get_worker

    from extract.run import RunOptions, run

    plugin = get_worker().plugins.get(PLUGIN)
    t0 = time.time()
    code = run(RunOptions(**{**opts, 'shard': shard, 'num_shards': num_shards, 'progress': False}),
               loaded=plugin.experts if plugin is not None else None)
    if code != 0:
        raise RuntimeError(f'shard {shard}/{num_shards} ended with exit code {code}')
    return {'shard': shard, 'seconds': time.time() - t0}


def make_client(scheduler: str, workers: int, gpus: int, threads: int, slurm: dict[str, Any]) -> Any:
    """A Dask client for ``local`` (a LocalCluster), ``slurm`` (dask-jobqueue) or a scheduler address."""
    import dask
    from distributed import Client, LocalCluster

    # decode worker processes are children of the Dask worker, which must not be daemonic
    dask.config.set({'distributed.worker.daemon': False})
    resources = {'GPU': gpus} if gpus else None
    if scheduler == 'local':
        cluster = LocalCluster(n_workers=workers, threads_per_worker=threads, processes=True, resources=resources,
                               dashboard_address=None)
        return Client(cluster)
    if scheduler == 'slurm':
        # without sbatch every job submission fails in the background and the run waits for workers forever
        if shutil.which('sbatch') is None:
            raise ConfigError('--scheduler slurm: sbatch is not on PATH, so no SLURM job can be submitted from this '
                              'machine. Run it on a SLURM login node, or use --scheduler local or a scheduler address')
        try:
            from dask_jobqueue import SLURMCluster
        except ImportError:
            raise ConfigError('--scheduler slurm needs dask-jobqueue: pip install dask-jobqueue') from None

        extra = ['--resources', f'GPU={gpus}'] if gpus else []
        directives = [f'--gres=gpu:{gpus}'] if gpus else []
        cluster = SLURMCluster(cores=slurm['cores'], processes=1, memory=slurm['memory'], queue=slurm['partition'],
                               walltime=slurm['walltime'], job_extra_directives=directives,
                               worker_extra_args=extra, log_directory=slurm['log_directory'])
        cluster.scale(jobs=workers)
        return Client(cluster)
    _reachable(scheduler)
    try:
        return Client(scheduler)
    except (OSError, TimeoutError, ValueError) as err:  # distributed raises these for a bad or silent address
        raise ConfigError(f'--scheduler {scheduler}: cannot connect ({err}). Start the scheduler first '
                          '(dask scheduler), or give local or slurm') from None


def _reachable(address: str, timeout: float = 5.0) -> None:
    """One TCP connection to a tcp:// scheduler address, so that one with nothing listening is a
    ConfigError at once (Dask's client retries for 30 s, then raises a bare OSError)."""
    from distributed.comm import parse_address
    from distributed.comm.addressing import parse_host_port

    try:
        protocol, loc = parse_address(address, strict=False)
        if protocol != 'tcp':  # tls://, inproc:// ...: left to Dask
            return
        host, port = parse_host_port(loc)
    except ValueError as err:
        raise ConfigError(f'--scheduler {address}: not local, slurm or a scheduler address such as '
                          f'tcp://HOST:8786 ({err})') from None
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as err:
        raise ConfigError(f'--scheduler {address}: nothing answers there ({err.strerror or err}). Start the scheduler '
                          f'first (dask scheduler --port {port}), check the address, or give local or slurm') from None


def extract_cluster(client: Any, opts: dict[str, Any], num_shards: int, gpus: int = 0, retries: int = 2,
                    progress: bool = True) -> int:
    """Submit one task per shard, wait for them, check every store. Returns an exit code."""
    from distributed import as_completed
    from tqdm import tqdm

    from extract.run import RunOptions, build_experts, open_stores

    base = RunOptions(**opts)
    manifest = load_manifest(base.dataset, base.data_root, **base.dataset_options)
    experts = build_experts(base)  # configured, not loaded: creates the stores before any worker writes
    stores = open_stores(manifest, experts, base)
    n_chunks = next(iter(stores.values())).n_chunks
    num_shards = max(1, min(num_shards, n_chunks))
    opts = {**opts, 'experts': [e.name for e in experts]}
    client.register_plugin(ExpertsPlugin(opts), name=PLUGIN)
    resources = {'GPU': 1} if gpus else None
    futures = [client.submit(extract_shard, opts, s, num_shards, key=f'extract-{base.dataset}-shard-{s}-of-{num_shards}',
                             retries=retries, resources=resources, pure=False) for s in range(num_shards)]
    print(f'{num_shards} shards of {n_chunks} chunks over {len(client.scheduler_info()["workers"])} worker(s); '
          f'experts {", ".join(opts["experts"])}')
    failed = []
    bar = tqdm(total=len(futures), unit='shard', desc='shards', disable=not progress)
    for fut in as_completed(futures):
        try:
            fut.result()
        except Exception as err:  # noqa: BLE001 - report every shard, then fail the run
            failed.append(f'{fut.key}: {err}')
        bar.update(1)
    bar.close()
    code = 0
    for e in opts['experts']:  # each store's whole summary, as `python -m shared.store check`: its verdict last
        report = check_store(stores[e].path)
        print(f'\n{report.summary()}')
        code = max(code, report.exit_code)
    for f in failed:
        print(f'failed after {retries} retries: {f}', file=sys.stderr)
    return code if not failed else max(code, 1)


def main(argv: list[str] | None = None) -> int:
    """The command line; SIGTERM (a SLURM time limit, a `kill`) stops it as Ctrl-C does: the cluster is
    closed and one line says what is kept (it died at once, its workers logging tracebacks as they lost it)."""
    from extract.run import _sigterm

    previous = signal.signal(signal.SIGTERM, _sigterm)
    try:
        return _main(argv)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _main(argv: list[str] | None) -> int:
    from extract.run import INTERRUPTED, RunOptions

    d = RunOptions(dataset='', experts=[])
    p = argparse.ArgumentParser(prog='python -m pipelines.extract_cluster', description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split('\n\n', 1)[1])
    p.add_argument('--dataset', required=True, help='a registered dataset (python -m shared.datasets --help), or '
                                                    'folder:PATH')
    p.add_argument('--experts', required=True, help='an expert, a comma list, or all')
    p.add_argument('--scheduler', default='local',
                   help='local (a LocalCluster on this machine), slurm (dask-jobqueue: one SLURM job per worker), '
                        'or the address of a running scheduler, e.g. tcp://HOST:8786 (default: %(default)s)')
    p.add_argument('--workers', type=int_at_least(1), default=2,
                   help='worker processes (local) or SLURM jobs (default: %(default)s)')
    p.add_argument('--num-shards', type=int_at_least(1), default=None,
                   help='tasks (default: 4 per worker, at most one per chunk)')
    p.add_argument('--gpus', type=int_at_least(0), default=0, help='GPUs per worker; tasks then ask for one GPU each')
    p.add_argument('--retries', type=int_at_least(0), default=2,
                   help='retries of a failed shard (default: %(default)s)')
    p.add_argument('--data-root', type=Path, default=d.data_root,
                   help='directory holding one folder per dataset (default: %(default)s)')
    p.add_argument('--features-root', type=Path, default=d.features_root,
                   help='where the stores are written, {features root}/{dataset}/{expert}.zarr '
                        '(default: %(default)s)')
    p.add_argument('--device', default=d.device, help='as python -m extract --device (default: %(default)s)')
    p.add_argument('--weights', default=None, help='as python -m extract --weights (random only when asked)')
    p.add_argument('--set', dest='settings', action='append', default=[], metavar='KEY=VALUE',
                   help='an expert setting, as python -m extract --set (EXPERT.KEY=VALUE for one expert)')
    p.add_argument('--decode-workers', type=int_at_least(1), default=1,
                   help='decode processes inside each worker (default: %(default)s)')
    p.add_argument('--decode-window', type=float, default=d.decode_window, metavar='SECONDS',
                   help='seconds of a video decoded at once, as python -m extract --decode-window (default: %(default)g)')
    p.add_argument('--chunk-size', type=int, default=None,
                   help="videos per chunk of a new store, the unit of work (default: the existing stores', else "
                        "python -m extract's)")
    p.add_argument('--chunks-per-shard', type=int, default=None,
                   help='chunks per Zarr shard file of a new store, then the unit of work (default: as python -m '
                        'extract)')
    p.add_argument('--retry-failed', action='store_true', help='redo the videos that failed, as python -m extract')
    p.add_argument('--slurm-partition', default=None, help='SLURM partition of the worker jobs (default: the '
                                                           "cluster's default)")
    p.add_argument('--slurm-cores', type=int_at_least(1), default=8,
                   help='CPU cores per SLURM worker job (default: %(default)s)')
    p.add_argument('--slurm-memory', default='32GB', help='memory per SLURM worker job (default: %(default)s)')
    p.add_argument('--slurm-walltime', default='04:00:00',
                   help='time limit per SLURM worker job (default: %(default)s)')
    p.add_argument('--slurm-log-directory', default='logs/dask',
                   help='where the SLURM worker jobs write their logs (default: %(default)s)')
    p.add_argument('--no-progress', action='store_true', help='no progress bar (batch jobs)')
    args = p.parse_args(argv)
    try:
        opts = dataclasses.asdict(RunOptions(
            dataset=args.dataset, experts=args.experts.split(','), data_root=args.data_root,
            features_root=args.features_root, device=args.device, weights=args.weights,
            settings=parse_overrides(args.settings), retry_failed=args.retry_failed, workers=args.decode_workers,
            chunk_size=args.chunk_size, chunks_per_shard=args.chunks_per_shard, decode_window=args.decode_window))
        slurm = {'partition': args.slurm_partition, 'cores': args.slurm_cores, 'memory': args.slurm_memory,
                 'walltime': args.slurm_walltime, 'log_directory': args.slurm_log_directory}
        client = make_client(args.scheduler, args.workers, args.gpus, 1, slurm)
        try:
            return extract_cluster(client, opts, args.num_shards or 4 * args.workers, args.gpus, args.retries,
                                   progress=not args.no_progress)
        finally:
            cluster = client.cluster  # ours to close for local and slurm; None for an existing scheduler
            client.close()
            if cluster is not None:
                cluster.close()
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return 130
    except (ConfigError, DatasetError, StoreError, ValueError, KeyError) as err:
        # a KeyError's str() is its repr, in quotes: print its message as `python -m extract` does
        print(f'error: {err.args[0] if isinstance(err, KeyError) and err.args else err}', file=sys.stderr)
        return 1


if __name__ == '__main__':
    sys.exit(main())
