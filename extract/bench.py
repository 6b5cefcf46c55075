"""Extraction benchmark: decode-only, model-only and end-to-end throughput, in one run.

    python -m extract.bench --dataset demo --experts object,scene --limit 64
    python -m extract.bench --dataset folder:/data/msrvtt_sample --experts all --device cuda --workers 16
    python -m extract.bench --dataset folder:/data/msrvtt_sample --device cuda --decoder nvdec --workers 4
    python -m extract.bench --dataset folder:/data/1080p_sample --device cuda --decoder nvdec --decode-only

End-to-end figures are printed as a ratio to the decode-only figure and to the model-only figure
(rows/s divided by the mean rows per video), so that one sees which side limits the pipeline. The
end-to-end rate is given twice: over the whole run (model loading, pool start), and in the
steady state (from the first decoded video to the end), which is what a long job sees.
Prints a Markdown table to paste into BENCHMARKS.md, with the machine it ran on.
"""
from __future__ import annotations

import argparse
import collections
import cProfile
import dataclasses
import os
import pstats
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from extract.pool import DecodePool
from shared.resources import cpu_limit
from extract.weights import WeightsError
from shared.config import DATA_ROOT_HELP, ConfigError, data_root_default, parse_overrides
from shared.datasets import DatasetError, load_manifest
from shared.device import DEVICE_HELP

__all__ = ['main', 'machine']


def machine(device: str) -> str:
    """One line naming the machine: CPU, cores, GPU, torch."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                cpu = line.split(':', 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if device.startswith('cuda') and torch.cuda.is_available() else 'no GPU'
    usable = cpu_limit()
    cores = f'{os.cpu_count()} cores' + (f' ({usable} usable here)' if usable != os.cpu_count() else '')
    return f'{cpu}, {cores}, {gpu}, torch {torch.__version__}'


def _pool(samplings: dict, workers: int, decoder: str, device: str) -> Any:
    if decoder == 'nvdec':
        from extract.nvdec import NvdecPool

        return NvdecPool(samplings, device, threads=workers)
    return DecodePool(samplings, workers=workers)


def _decode_only(items: list[tuple[int, str]], samplings: dict, workers: int, decoder: str = 'decord',
                 device: str = 'cpu') -> tuple[float, float]:
    """videos/s in the steady state (from the first decoded video to the last, as the end-to-end
    steady state: starting the pool is left out) and mean decoded frames per video."""
    with _pool(samplings, workers, decoder, device) as pool:
        t0 = time.perf_counter()
        frames: dict[int, int] = collections.defaultdict(int)  # row -> frames, over its decode windows
        t_first = None
        for v in pool.imap(items):
            frames[v.row] += len(v.frames) if v.frames is not None else 0
            t_first = t_first or time.perf_counter()
        elapsed = time.perf_counter() - (t_first if len(items) > 1 else t0)
        return max(len(items) - 1, 1) / max(elapsed, 1e-9), float(np.mean(list(frames.values())))


def _model_only(expert: Any, batches: int = 5) -> float:
    """rows/s of the model alone on preprocessed random input at the expert's batch size."""
    import torch

    cfg = expert.cfg
    size = cfg.input_size or cfg.resize[0]
    n = expert.batch_size
    shape = (n, 3, cfg.clip_len, size, size) if cfg.sampling == 'clips' else (n, 3, size, size)
    x = torch.randn(shape, device=expert.device)
    expert.forward(x)  # warm-up (cuDNN autotuning, lazy init)
    if expert.device.type == 'cuda':
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(batches):
        expert.forward(x)
    if expert.device.type == 'cuda':
        torch.cuda.synchronize()
    return batches * n / (time.perf_counter() - t0)


def _process_only(expert: Any, videos: list[Any]) -> tuple[float, str]:
    """videos/s of a per-video expert on already decoded videos (no decoding timed), through
    `process_batch` as the runner calls it: `videos_per_batch` videos at a time, after one
    warm-up batch."""
    from extract.experts._base import VideoInput

    inputs = []
    for v in videos:
        if expert.modality == 'audio':
            if v.audio is not None:
                inputs.append(VideoInput(audio=v.audio[expert.cfg.sampling_spec().resampler]))
        else:
            plan = v.plans[expert.name]
            inputs.append(VideoInput(frames=v.frames[plan.index[:, 0]], timestamps=plan.timestamps))
    if not inputs:
        return float('nan'), 'no input (no audio streams?)'
    step = expert.videos_per_batch
    inputs = (inputs * -(-step // len(inputs)))[:max(step, len(inputs))]  # at least one whole batch
    expert.process_batch(inputs[:step])  # warm-up: lazy CUDA set-up, cuDNN autotuning
    if expert.device.type == 'cuda':
        import torch

        torch.cuda.synchronize(expert.device)
    t0 = time.perf_counter()
    frames = 0
    for i in range(0, len(inputs), step):
        expert.process_batch(inputs[i:i + step])
        frames += sum(0 if x.frames is None else len(x.frames) for x in inputs[i:i + step])
    elapsed = time.perf_counter() - t0
    note = f'{frames / elapsed:.1f} frames/s' if frames else f'{sum(len(x.audio) for x in inputs) / 16000 / elapsed:.1f} s of audio/s'
    return len(inputs) / elapsed, note


def _report_profile(profiler: cProfile.Profile, folder: Path, target: str) -> None:
    """Save the run's profile and print where the main process spent its time (waits included:
    a thread lock is the decode queue or the writer, a tensor copy may wait for the GPU)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f'{target.replace(",", "+")}.prof'
    profiler.dump_stats(path)
    print(f'profile of the end-to-end run of {target}: {path} (python -m pstats {path}); most time:')
    stats = pstats.Stats(profiler, stream=sys.stdout)
    stats.sort_stats('tottime').print_stats(12)


def main(argv: list[str] | None = None) -> int:
    from extract.decoders import DECODERS

    p = argparse.ArgumentParser(prog='python -m extract.bench', description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split('\n\n')[1])
    p.add_argument('--dataset', default='demo', help='registered dataset or folder:PATH (default: demo)')
    p.add_argument('--data-root', type=Path, default=data_root_default(),
                   help=f'dataset folders (default: {DATA_ROOT_HELP})')
    p.add_argument('--experts', default='object,scene', help='comma list or all (default: object,scene)')
    p.add_argument('--limit', type=int, default=64, help='videos to use (default: 64)')
    p.add_argument('--device', default='auto', help=DEVICE_HELP)
    p.add_argument('--decoder', default='auto', choices=DECODERS, help='as for python -m extract (default: auto)')
    p.add_argument('--workers', type=int, default=None,
                   help='decode processes (decord, default: the CPUs this job may use - 1, at most 16) or '
                        'threads (nvdec, default 4)')
    p.add_argument('--weights', default='random', help='weights for every expert (default: random)')
    p.add_argument('--batch-size', type=int, default=None, help='rows per forward pass (default: per expert)')
    p.add_argument('--set', dest='settings', action='append', default=[], metavar='KEY=VALUE',
                   help='an expert setting, as python -m extract takes it; EXPERT.KEY=VALUE for one')
    p.add_argument('--decode-only', action='store_true',
                   help='measure decoding alone (no models): to compare decoders and resolutions')
    p.add_argument('--host-only', action='store_true',
                   help="the runner's own ceiling: a few decoded videos replayed from memory, the models stubbed "
                        "(zero features), the stores written; no decoding and no model time")
    p.add_argument('--stub-models', action='store_true',
                   help='decoding and the runner, the models stubbed (zero features), the stores written: whether '
                        'the host loop keeps up with the decoders while they load the CPU')
    p.add_argument('--end-to-end', choices=('each', 'all', 'none'), default='each',
                   help='end-to-end runs: each expert alone and then all together (default), only all of them '
                        'together, or none (decode-only and model-only figures)')
    p.add_argument('--profile', type=Path, default=None, metavar='DIR',
                   help='profile the main process of each end-to-end run (cProfile): DIR/TARGET.prof, and the '
                        'functions that took the most time printed')
    args = p.parse_args(argv)
    if args.limit < 1:
        p.error('--limit must be at least 1')
    try:
        return _bench(args)
    except (DatasetError, WeightsError, ConfigError, KeyError, ValueError) as err:
        print(f'error: {err.args[0] if isinstance(err, KeyError) and err.args else err}', file=sys.stderr)
        return 1


def _bench(args: argparse.Namespace) -> int:
    """Every measurement `args` asks for, printed as one table."""
    from extract.decoders import choose_decoder, spread
    from extract.experts import create_expert, resolve_expert_names
    from extract.run import RunOptions, default_workers, _settings_for
    from shared.device import pick_device

    device = pick_device(args.device)
    manifest = load_manifest(args.dataset, args.data_root)
    n = min(args.limit, len(manifest))
    items = [(i, str(manifest.paths[i])) for i in range(n)]
    names = resolve_expert_names(args.experts)
    overrides = parse_overrides(args.settings)
    routing = RunOptions(dataset=args.dataset, experts=names, data_root=args.data_root, weights=args.weights,
                         batch_size=args.batch_size, settings=overrides)
    resolved = {name: _settings_for(name, routing) for name in names}  # dataset presets included
    experts = [create_expert(name, **resolved[name]) for name in names]
    samplings = {e.name: e.cfg.sampling_spec() for e in experts}
    decoder, why = choose_decoder(args.decoder, device, [path for _, path in spread(items)],
                                  any(e.cfg.sampling == 'clips' for e in experts))
    workers = args.workers if args.workers is not None else default_workers(decoder)
    print(f'machine: {machine(device)}')
    print(f'{n} videos of {manifest.name}, decoder {decoder} ({why}) with {workers} '
          f'{"threads" if decoder == "nvdec" else "processes"}, device {device}, weights {args.weights}')

    if args.host_only:
        label, rate, note = _stubbed(items, experts, resolved, device, args.profile)
        _print_table([(label, f'{rate:.1f} videos/s', note)])
        return 0
    if args.stub_models:
        dec_all, frames_all = _decode_only(items, samplings, workers, decoder, device)
        label, rate, note = _stubbed(items, experts, resolved, device, args.profile, decoder, workers)
        _print_table([(f'decode only, {decoder}', f'{dec_all:.1f} videos/s',
                       f'{frames_all:.0f} frames decoded per video'),
                      (label, f'{rate:.1f} videos/s', f'{rate / dec_all:.2f} x decode-only; {note}')])
        return 0
    _say('decode only ...')
    dec_all, frames_all = _decode_only(items, samplings, workers, decoder, device)
    rows = _Rows()
    rows.append((f'decode only, {decoder} (' + ', '.join(names) + ' sampling)', f'{dec_all:.1f} videos/s',
                 f'{frames_all:.0f} frames decoded per video'))
    if args.decode_only:
        _print_table(rows)
        return 0
    video_rate: dict[str, float] = {}  # model-only, in videos/s
    decode_rate: dict[str, float] = {}
    for e in experts:
        _say(f'model only: {e.name} ...')
        e.load(device)
        if args.end_to_end == 'each':  # each expert's own end-to-end row is compared with its own decoding
            decode_rate[e.name], _ = _decode_only(items, {e.name: samplings[e.name]}, workers, decoder, device)
        # a worker process: decord must not share this process with PyNvVideoCodec
        k = max(8, e.videos_per_batch) if e.per_video else 8  # a per-video expert: at least a whole batch
        # whole videos (window_s 0): the sample stands for videos, not for windows of them
        with DecodePool({e.name: samplings[e.name]}, workers=min(workers, k) if decoder == 'decord' else 1,
                        window_s=0) as pool:
            sample = [v for v in pool.imap(items[:k]) if not (v.audio_error if e.modality == 'audio' else v.error)]
        if e.per_video:
            rate, note = _process_only(e, sample)
            rows.append((f'model only: {e.name} ({e.cfg.arch}, {e.videos_per_batch} videos a batch)',
                         f'{rate:.2f} videos/s', note))
            video_rate[e.name] = rate
        else:
            per_video = float(np.mean([len(v.plans[e.name].index) for v in sample]))
            rate = _model_only(e)
            unit = 'clips/s' if e.cfg.sampling == 'clips' else 'images/s'
            video_rate[e.name] = rate / per_video
            rows.append((f'model only: {e.name} ({e.cfg.arch}, batch {e.batch_size})', f'{rate:.1f} {unit}',
                         f'= {video_rate[e.name]:.2f} videos/s at {per_video:.1f} rows/video'))
        e.model = None  # free it before the end-to-end runs load their own
    with tempfile.TemporaryDirectory(prefix='videoexperts-bench-') as tmp:
        sub = _links(items, Path(tmp))
        targets = {'each': [*names, 'all'] if len(names) > 1 else names, 'all': ['all'] if len(names) > 1 else names,
                   'none': []}[args.end_to_end]
        for target in targets:
            selected = names if target == 'all' else [target]
            _say(f'end to end: {" + ".join(selected)} ...')
            # the end-to-end runs read a folder of links: give them exactly the settings measured above
            settings = {f'{n}.{k}': v for n in selected for k, v in resolved[n].items()}
            opts = RunOptions(dataset=f'folder:{sub}', experts=list(selected), features_root=Path(tmp) / target,
                              device=device, decoder=decoder, settings=settings, workers=workers, progress=False)
            t0 = time.perf_counter()
            stats: dict[str, float] = {}
            code = _quiet_run(opts, stats, args.profile, target)
            if code:
                print(f'end-to-end run for {target} failed with exit code {code}', file=sys.stderr)
                _print_table(rows)
                return code
            rate = n / (time.perf_counter() - t0)
            span = max(stats['total_s'] - stats['setup_s'], 1e-9)  # the steady state: first decoded video to the end
            steady = (n - 1) / span
            # experts share the device: the model-only limit adds up their time per video
            limit = 1.0 / sum(1.0 / video_rate[s] for s in selected)
            decode = decode_rate.get(target, dec_all)  # one expert alone: dec_all is its own decoding
            wait = f'{stats["decode_wait_s"] / span:.0%} waiting for decoding'
            if device.startswith('cuda'):  # the rest: the host's own work, and launches into a full GPU queue
                wait += f', {stats["device_wait_s"] / span:.0%} for the GPU\'s results'
            busy = [(k.split('.', 1)[1], v / span) for k, v in stats.items() if k.startswith('busy_s.')]
            if busy:  # the per-video experts' threads: how much of the steady state each was at work
                wait += '; busy: ' + ', '.join(f'{k} {v:.0%}' for k, v in busy)
            for label, r in ((f'end to end: {" + ".join(selected)} (whole run, {stats["setup_s"]:.1f} s setup)', rate),
                             (f'end to end: {" + ".join(selected)} (steady state, {wait})', steady)):
                rows.append((label, f'{r:.2f} videos/s', f'{r / decode:.2f} x decode-only, {r / limit:.2f} x model-only'))
    _print_table(rows)
    return 0


def _links(items: list[tuple[int, str]], tmp: Path) -> Path:
    """A folder of links to the videos, named in order: the end-to-end runs' dataset."""
    sub = tmp / 'videos'
    sub.mkdir()
    for i, path in items:
        os.symlink(os.path.abspath(path), sub / f'{i:06d}{Path(path).suffix}')
    return sub


def _quiet_run(opts: Any, stats: dict[str, float], profile: Path | None, target: str, **kw: Any) -> int:
    """`run` with its printing silenced, profiled into `profile` when given."""
    from extract.run import run

    profiler = cProfile.Profile() if profile else None
    with open(os.devnull, 'w') as null:
        stdout, sys.stdout = sys.stdout, null
        try:
            if profiler is not None:
                profiler.enable()
            code = run(opts, stats=stats, **kw)
        finally:
            if profiler is not None:
                profiler.disable()
            sys.stdout = stdout
    if profiler is not None:
        _report_profile(profiler, profile, target)
    return code


class _Replay:
    """Decoded videos from memory, cycled in the order asked: a decode pool that costs nothing."""

    def __init__(self, videos: list[Any]) -> None:
        self.videos = videos

    def imap(self, items: list[tuple[int, str]]) -> Any:
        for k, (row, _) in enumerate(items):
            yield dataclasses.replace(self.videos[k % len(self.videos)], row=row)

    def close(self, kill: bool = False) -> None:
        pass


def _stubbed(items: list[tuple[int, str]], experts: list[Any], resolved: dict[str, dict], device: str,
             profile: Path | None, decoder: str | None = None, workers: int = 0) -> tuple[str, float, str]:
    """The runner with the models stubbed: each expert's preprocessing a one-pixel slice and its
    model zero features, the stores written.

    Without `decoder`, up to 16 videos are decoded once and replayed from memory: what remains is
    the host loop (uploads to the device, batching, collecting, packing, the store writer), so this
    is the most videos/s the loop can feed on this machine, before the models' own kernel launches.
    With `decoder`, the videos are decoded by `workers` as in a real run: whether the loop keeps up
    with the decoders while they load the CPU.
    """
    import torch

    from extract.run import RunOptions

    pool, what = None, f'decoded by {decoder}'
    if decoder is None:
        samplings = {e.name: e.cfg.sampling_spec() for e in experts}
        with DecodePool(samplings, workers=1, window_s=0) as first:  # replayed as whole videos
            videos = [v for v in first.imap(items[:16]) if not v.error]
        if not videos:
            raise SystemExit('--host-only: none of the first 16 videos could be decoded')
        pool, what = _Replay(videos), f'{len(videos)} decoded videos replayed'
    from shared.store import DONE, VideoResult

    for e in experts:
        e.device = torch.device(device)
        e.preprocess = lambda rows: rows.reshape(len(rows), -1)[:, :1].float()
        e.forward = lambda x, d=e.cfg.feature_dim: torch.zeros(len(x), d)
        # a per-video expert stubbed: no rows for any video, through its own thread and queue as in a real run
        e.process_batch = lambda xs, d=e.cfg.feature_dim: [VideoResult(np.zeros((0, d), np.float32),
                                                                       np.zeros((0, 2), np.float32), DONE,
                                                                       available=False) for _ in xs]
    names = [e.name for e in experts]
    with tempfile.TemporaryDirectory(prefix='videoexperts-bench-') as tmp:
        settings = {f'{n}.{k}': v for n in names for k, v in resolved[n].items()}
        opts = RunOptions(dataset=f'folder:{_links(items, Path(tmp))}', experts=names, features_root=Path(tmp) / 'f',
                          device=device, decoder=decoder or 'decord', workers=workers, settings=settings,
                          progress=False)
        stats: dict[str, float] = {}
        code = _quiet_run(opts, stats, profile, 'host-only' if decoder is None else 'stub-models', loaded=experts,
                          pool=pool)
    if code:
        raise SystemExit(f'the stubbed run failed with exit code {code}')
    span = max(stats['total_s'] - stats['setup_s'], 1e-9)
    rate = (len(items) - 1) / span
    label = 'host loop only' if decoder is None else 'decoding + host loop'
    return (f'{label}: {" + ".join(names)} ({what}, models stubbed, stores written)', rate,
            f'{1000 / rate:.2f} ms per video, {stats["decode_wait_s"] / span:.0%} waiting for decoding')


class _Rows(list):
    """The table's rows, each also printed (to stderr) the moment it is measured: a run of several
    minutes shows its progress, and what it measured survives a time limit that stops it."""

    def append(self, row: tuple[str, str, str]) -> None:
        super().append(row)
        _say(f'{row[0]}: {row[1]} ({row[2]})')


_T0 = time.perf_counter()


def _say(line: str) -> None:
    print(f'[{time.perf_counter() - _T0:6.1f} s] {line}', file=sys.stderr, flush=True)


def _print_table(rows: list[tuple[str, str, str]]) -> None:
    print()
    print('| measurement | throughput | ratio / note |')
    print('|---|---|---|')
    for r in rows:
        print(f'| {r[0]} | {r[1]} | {r[2]} |')


if __name__ == '__main__':
    sys.exit(main())
