"""`python -m train.bench`: training step rate and 5k x 5k retrieval time.

    python -m train.bench                  # full-size MMT (mmt_msrvtt_1k_a), random weights, no download
    python -m train.bench --quick          # tiny models and sizes: checks the command on a CPU in seconds
    python -m train.bench --models mmt --queries 1000 --steps 20   # 1,000 captions over 1,000 videos

(a) MMT's training step at batch 32 with MSR-VTT 1k-A's shapes (7 experts of 30 rows, 30 word
pieces), eager and captured by torch.compile, in steps/s after warm-up, timed between device
synchronisations. The step is the one `python -m train` runs (`train.step.TrainStep`, the
config's optimiser and loss), its batches gathered on the device (`train.data.TrainFeed`).
(b) Text-to-video retrieval of N captions over N videos, each model with its paper config:
encoding every video and caption, the [N x N] scores and the protocol's metrics
(`train.metrics.retrieval_metrics`), in seconds from features in device memory (the
host-to-device copy of those features is its own row); bf16 autocast on CUDA.
(c) For each of --stream-models (default MEE and MMT, their paper configs; a config name of
pipelines/configs/train, e.g. mmt_demo, also works): the training rate with the data in memory
(`train.data.TrainFeed`) and streamed from stores on disk (`train.stream.StreamFeed`, the default
reader processes, shuffle buffer and feature cache), in pairs/s over whole epochs from a fresh
model: epoch 1 (the stores read, the cache written, the step on the threads the readers leave)
apart from the later ones (read back from the cache, or with --no-stream-cache from the stores
again); in --stream-repeats pairs, their order alternated, the load average printed beside each,
since a shared machine's load drifts by more than the effect; in memory also on the streamed
first epoch's threads where they are fewer. Then a whole run of the config's epochs (or steps), computed from
the median epoch rates: in memory the part's load (reading and aggregating the stores) comes first,
streamed the first epoch reads them. And each data path alone (batches made, no model) in
pairs/s: a data path slower than the step starves it. The stores (random features, written with
`shared.store` into a temporary directory) hold --stream-videos videos in chunks of 64.
Inputs are random, in the shapes of the configs. Every row is measured on its own: one that fails
prints its error and the others still run. The table comes last.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from shared.config import ConfigError
from shared.device import DEVICE_HELP, pick_device, torch_threads
from shared.logs import setup_logging
from train.captions import CaptionData
from shared.store import StoreSpec, VideoResult, create_store, pack_chunk
from train.data import ExpertData, SplitData, TrainFeed, aggregate
from train.config import RunCfg, TrainCfg, load_run_cfg
from train.optim import build_optimizer
from train.losses import build_loss
from train.metrics import retrieval_metrics
from train.models import ModelCfg, create_model, structure_only
from train.models.base import TextEmbedding, VideoEmbedding
from train.step import TrainStep
from shared.resources import cpu_limit
from train.stream import StreamedPart, StreamFeed, default_readers, step_threads
from train.stream_cache import UnitCache, cache_path

__all__ = ['main', 'synthetic_split', 'stored_split', 'train_rate', 'epoch_rates', 'data_rate', 'retrieval_seconds',
           'config_run']

CONFIG_DIR = Path(__file__).resolve().parents[1] / 'pipelines' / 'configs' / 'train'
#: the paper config each model is measured with
CONFIGS = {'mmt': 'mmt_msrvtt_1k_a', 'ce': 'ce_msrvtt_1k_a', 'mee': 'mee_msrvtt_1k_b'}


def _tiny(cfg: ModelCfg) -> ModelCfg:
    """The same model (experts, rows, dims) with narrow text and video networks, for --quick."""
    gpt = cfg.text.encoder == 'gpt'
    text = dataclasses.replace(cfg.text, weights='random', vocab_size=200, hidden=32, layers=1, heads=2,
                               ffn=128 if gpt else 64, max_positions=64)
    if hasattr(cfg, 'transformer'):  # MMT, the support-set model
        return dataclasses.replace(cfg, text=text,
                                   transformer=dataclasses.replace(cfg.transformer, layers=1, heads=2, hidden=32, ffn=64))
    return dataclasses.replace(cfg, text=text, embed_dim=32, text_dim=32 if gpt else cfg.text_dim,
                               text_clusters=min(cfg.text_clusters, 4))


def synthetic_split(cfg: ModelCfg, videos: int, words: int, seed: int = 0, captions: int = 1) -> SplitData:
    """`videos` random videos in the shapes `cfg`'s experts read (some rows padded, 10% of the
    videos missing each expert), `captions` random captions of at most `words` tokens each (the
    first of each video is its query)."""
    rng = np.random.default_rng(seed)
    experts = {}
    for spec in cfg.experts:
        available = rng.random(videos) < 0.9
        if spec.aggregation in ('mean', 'max'):
            experts[spec.name] = ExpertData(rng.standard_normal((videos, spec.dim), np.float32), available)
            continue
        rows = spec.max_tokens
        lengths = rng.integers(1, rows + 1, videos)
        start = np.broadcast_to(np.arange(rows, dtype=np.float32), (videos, rows))
        experts[spec.name] = ExpertData(rng.standard_normal((videos, rows, spec.dim), np.float32), available,
                                        np.arange(rows)[None, :] < lengths[:, None], np.stack([start, start + 1], -1))
    return SplitData([f'v{i}' for i in range(videos)], experts, _captions(cfg, videos * captions, words, rng),
                     np.repeat(np.arange(videos), captions), np.arange(0, videos * captions, captions), [])


def _captions(cfg: ModelCfg, n: int, words: int, rng: np.random.Generator) -> CaptionData:
    """`n` random captions of at most `words` tokens for `cfg`'s text encoder."""
    mask = np.arange(words)[None, :] < rng.integers(3, words + 1, n)[:, None]
    if cfg.text.encoder == 'word2vec':
        vectors = rng.standard_normal((1001, cfg.text_dim), np.float32)
        vectors[0] = 0.0
        return CaptionData((rng.integers(1, 1001, (n, words)) * mask).astype(np.int32), mask, vectors)
    return CaptionData((rng.integers(5, cfg.text.vocab_size, (n, words)) * mask).astype(np.int32), mask)


def stored_split(cfg: ModelCfg, root: Path, videos: int, words: int, chunk: int = 64, seed: int = 0
                 ) -> tuple[SplitData, StreamedPart, float]:
    """`videos` random videos written to one store per expert of `cfg` under `root` (rows up to the
    expert's `max_tokens`, 16 for mean/max; 10% of the videos skipped), as the in-memory path loads
    them (read whole, aggregated) and as the streaming path reads them (default readers); and the
    seconds the in-memory load took (reading and aggregating, the stores just written)."""
    rng = np.random.default_rng(seed)
    ids = [f'v{i}' for i in range(videos)]
    experts, paths, load = {}, {}, 0.0
    for spec in cfg.experts:
        rows = spec.max_tokens or 16
        paths[spec.name] = root / f'{spec.name}.zarr'
        store = create_store(paths[spec.name], ids, StoreSpec('bench', spec.name, spec.dim, rows, chunk_size=chunk,
                                                              weights='random'))
        for c in range(store.n_chunks):
            results = []
            for _ in store.chunk_rows(c):
                n = int(rng.integers(1, rows + 1))
                results.append(VideoResult.skipped(spec.dim) if rng.random() < 0.1 else VideoResult(
                    rng.standard_normal((n, spec.dim), np.float32), np.stack([np.arange(n), np.arange(n) + 1.0], 1)))
            store.write_chunk(c, pack_chunk(results, rows, spec.dim, has_tokens=False))
        store.consolidate()  # as extraction leaves a finished store: each reader process opens it in one read
        t0 = time.perf_counter()
        experts[spec.name] = aggregate(spec, store.read())
        load += time.perf_counter() - t0
    captions, owner = _captions(cfg, videos, words, rng), np.arange(videos)
    workers, prefetch = default_readers()
    streamed = StreamedPart(ids, cfg.experts, paths, {s.name: np.arange(videos) for s in cfg.experts},
                            np.unique(np.r_[np.arange(0, videos, chunk), videos]), captions, owner, owner, [],
                            workers, prefetch)
    return SplitData(ids, experts, captions, owner, owner, []), streamed, load


def _sync(dev: torch.device) -> None:
    if dev.type == 'cuda':
        torch.cuda.synchronize(dev)


def _batches(feed: TrainFeed | StreamFeed, batch: int) -> Iterator:
    for epoch in range(1 << 30):
        yield from feed.epoch(batch, np.random.default_rng([0, epoch]))


def _host_waits(dev: torch.device, fn: Callable[[], None]) -> int | None:
    """How many times `fn` makes the host wait for the device (CUDA's sync debug mode)."""
    if dev.type != 'cuda':
        return None
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        torch.cuda.set_sync_debug_mode('warn')
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode('default')
    return sum('synchronizing' in str(w.message) for w in caught)


def train_rate(cfg: RunCfg, data: SplitData, dev: torch.device, batch: int, warmup: int, steps: int,
               compile: bool, backend: str = 'inductor', feed: TrainFeed | StreamFeed | None = None
               ) -> tuple[float, int | None]:
    """(steady-state steps/s, host waits in 5 steps) of the training step, on batches of `feed`
    (default: `data` in memory, on the device where it fits)."""
    torch.manual_seed(0)
    model = create_model(structure_only(cfg.model)).to(dev).train()
    opt, _ = build_optimizer(cfg.train, model)
    loss = build_loss(cfg.train.loss, cfg.train.margin, cfg.train.temperature)
    step = TrainStep(model, opt, loss, cfg.train.grad_clip, dev, compile,
                     backend=backend)
    feed = feed or TrainFeed(data, dev, 1 << 62 if dev.type == 'cuda' else 0)
    batches = _batches(feed, batch)
    for _ in range(warmup):
        step(*next(batches))
    if compile and not step.compiled:
        raise RuntimeError('torch.compile failed and the step fell back to eager (its warning is above)')
    waits = _host_waits(dev, lambda: [step(*next(batches)) for _ in range(5)])
    _sync(dev)
    t0 = time.perf_counter()
    total = torch.zeros((), dtype=torch.float64, device=dev)
    for _ in range(steps):
        total += step(*next(batches))
    _sync(dev)
    seconds = time.perf_counter() - t0
    if not torch.isfinite(total):
        raise RuntimeError('the loss is not finite')
    return steps / seconds, waits


def data_rate(feed: TrainFeed | StreamFeed, dev: torch.device, batch: int, warmup: int, steps: int) -> float:
    """Batches/s of a data path alone: batches made and on the device, no model."""
    batches = _batches(feed, batch)
    for _ in range(warmup):
        next(batches)
    _sync(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        next(batches)
    _sync(dev)
    return steps / (time.perf_counter() - t0)


@torch.inference_mode()
def retrieval_seconds(cfg: ModelCfg, data: SplitData, dev: torch.device, batch: int, amp: bool
                      ) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Seconds of each phase of N x N retrieval (features already in device memory), and the metrics."""
    torch.manual_seed(0)
    model = create_model(structure_only(cfg)).to(dev).eval()
    t0 = time.perf_counter()
    feed = TrainFeed(data, dev, 1 << 62)
    _sync(dev)
    times = {'copy': time.perf_counter() - t0}
    n = len(data)
    chunks = torch.arange(n, device=dev).split(batch)
    with torch.autocast('cuda', dtype=torch.bfloat16, enabled=amp and dev.type == 'cuda'):
        t0 = time.perf_counter()
        parts = [model.encode_video(feed.videos(idx)) for idx in chunks]
        video = VideoEmbedding(torch.cat([p.emb for p in parts]), torch.cat([p.available for p in parts]))
        _sync(dev)
        t1 = time.perf_counter()
        parts = [model.encode_text(feed.captions(idx)) for idx in chunks]
        text = TextEmbedding(torch.cat([p.emb for p in parts]), torch.cat([p.weights for p in parts]))
        _sync(dev)
        t2 = time.perf_counter()
        # the scores a block of captions at a time: the per-pair mixture holds (block, N, experts)
        sims = torch.cat([model.similarity(TextEmbedding(text.emb[r], text.weights[r]), video).float()
                          for r in torch.arange(n, device=dev).split(1024)])
    metrics = retrieval_metrics(sims, data.caption_video[data.query], chunk_size=n, device=dev)
    t3 = time.perf_counter()
    times.update(video=t1 - t0, text=t2 - t1, scores_metrics=t3 - t2, total=t3 - t0)
    return times, metrics


def _machine(dev: torch.device) -> str:
    if dev.type == 'cuda':
        name = torch.cuda.get_device_name(dev)
        return f'{name}, torch {torch.__version__}, CUDA {torch.version.cuda}'
    return f'CPU {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads), torch {torch.__version__}'


def _measure(rows: list[tuple[str, str, str]], name: str, fn: Callable[[], tuple[str, str]]) -> None:
    """Run one measurement; a failure becomes its row's error line, and the next one runs."""
    print(f'... {name}', flush=True)
    try:
        value, note = fn()
    except Exception as err:  # noqa: BLE001  one failing measurement never stops the others
        traceback.print_exc(limit=3)
        first = (str(err).strip().splitlines() or [''])[0][:160]
        value, note = 'error', f'{type(err).__name__}: {first}'
    rows.append((name, value, note))
    print(f'    {value}  {note}', flush=True)


def epoch_rates(cfg: RunCfg, feed: TrainFeed | StreamFeed, dev: torch.device, batch: int, epochs: int,
                warm: tuple, threads: int | None = None) -> list[tuple[float, int]]:
    """(pairs/s, the step's torch threads) of each of `epochs` whole training epochs of a fresh
    model on `feed`, after one step on `warm` (a batch); the threads as training sets them
    (`train.stream.step_threads`: fewer while reader processes run), or `threads`."""
    torch.manual_seed(0)
    model = create_model(structure_only(cfg.model)).to(dev).train()
    opt, _ = build_optimizer(cfg.train, model)
    step = TrainStep(model, opt, build_loss(cfg.train.loss, cfg.train.margin, cfg.train.temperature),
                     cfg.train.grad_clip, dev, False)
    step(*warm)
    rates = []
    for epoch in range(epochs):
        with step_threads(feed, epoch) if threads is None else torch_threads(threads) as used:
            _sync(dev)
            t0, n = time.perf_counter(), 0
            total = torch.zeros((), dtype=torch.float64, device=dev)
            for b in feed.epoch(batch, np.random.default_rng([0, epoch])):
                total += step(*b)
                n += 1
            _sync(dev)
            rates.append((n * batch / (time.perf_counter() - t0), used))
        if not torch.isfinite(total):
            raise RuntimeError('the loss is not finite')
    return rates


def _load() -> str:
    return f'{os.getloadavg()[0]:.1f}'


def _stream_rows(rows: list[tuple[str, str, str]], name: str, cfg: RunCfg, dev: torch.device, videos: int,
                 epochs: int, repeats: int, cache: bool, workers: int | None = None) -> None:
    """The training rate of `cfg`'s model in memory and streamed, epoch 1 (the stores read, the
    feature cache written) apart from later epochs (read from the cache, or `cache` False: from the
    stores again), in `repeats` alternated pairs with the load average beside each; and each data
    path alone (section c)."""
    batch = cfg.train.batch_size
    with tempfile.TemporaryDirectory(prefix='videoexperts-bench-') as tmp:
        made = []

        def write() -> tuple[str, str]:
            t0 = time.perf_counter()
            made.extend(stored_split(cfg.model, Path(tmp), videos, cfg.data.max_words))
            return f'{videos} videos', (f'written and read whole in {time.perf_counter() - t0:.1f} s, of which the '
                                        f'in-memory load (read whole, aggregated) {made[2]:.2f} s')

        _measure(rows, f'{name} stores', write)
        if not made:
            return
        whole, stored, load_s = made
        if workers is not None:
            stored = dataclasses.replace(stored, workers=workers)
        warm = next(TrainFeed(whole, dev, 0).epoch(batch, np.random.default_rng(1)))

        def streamed(cached: bool) -> StreamFeed:
            """A new streamed part (nothing read yet), with a new cache when `cached`."""
            kept = UnitCache(cache_path(Path(tmp), Path(tmp), f'bench{time.monotonic_ns()}', 0)) if cached else None
            return StreamFeed(dataclasses.replace(stored, cache=kept), dev, 1024)

        def close(feed: TrainFeed | StreamFeed) -> None:
            if isinstance(feed, StreamFeed):
                feed.data.close()

        shape = (f'batch {batch}, {videos} videos in {len(stored.bounds) - 1} store chunks, {stored.workers} reader '
                 f'processes, shuffle buffer 1024')

        def data(path: str) -> tuple[str, str]:
            feed = TrainFeed(whole, dev, 1 << 62 if dev.type == 'cuda' else 0) if path == 'in memory' else \
                streamed(path.endswith('cache'))
            try:  # the first epoch fills the cache; the second is timed
                r = data_rate(feed, dev, batch, len(whole) // batch, len(whole) // batch) * batch
            finally:
                close(feed)
            return f'{r:.0f} pairs/s', f'{shape}; the second epoch timed; load {_load()}'

        for path in ('in memory', 'streaming from the stores', *(('streaming from the cache',) if cache else ())):
            _measure(rows, f'{name} data path alone, {path}', lambda path=path: data(path))
        later = 'cache' if cache else 'stores'
        ratios: dict[str, list[tuple[float, float]]] = {}
        rates: dict[str, tuple[float, float]] = {}
        every: dict[str, list[tuple[float, float]]] = {}  # each path's (epoch 1, later) rates, all pairs

        def train(path: str, threads: int | None) -> tuple[str, str]:
            feed = TrainFeed(whole, dev, 1 << 62 if dev.type == 'cuda' else 0) if path != 'streaming' else \
                streamed(cache)
            load = _load()
            try:
                got = epoch_rates(cfg, feed, dev, batch, epochs, warm, threads)
            finally:
                close(feed)
            first, rest = got[0][0], float(np.median([r for r, _ in got[1:]])) if len(got) > 1 else float('nan')
            rates[path] = first, rest
            every.setdefault(path, []).append((first, rest))
            return (f'epoch 1 {first:.0f} pairs/s, later {rest:.0f} pairs/s',
                    f'load {load} -> {_load()}; step threads {"/".join(str(t) for _, t in got)} by epoch' +
                    (f'; epoch 1 from the stores, later from the {later}' if path == 'streaming' else ''))

        # the streamed first epoch runs the step beside the readers on fewer threads: in memory too, to compare
        few = min(torch.get_num_threads(), max(1, cpu_limit() - stored.workers))
        paths = [('in memory', None), *([(f'in memory, {few} threads', few)] if few != torch.get_num_threads()
                                       else []), ('streaming', None)]
        for r in range(repeats):
            rates.clear()
            for path, threads in (paths if r % 2 == 0 else paths[::-1]):  # alternated: the load drifts
                _measure(rows, f'{name} train, {path}, pair {r + 1}', lambda path=path, threads=threads:
                         train(path, threads))
            if 'streaming' in rates:
                for base in [p for p in rates if p != 'streaming']:
                    ratios.setdefault(base, []).append(tuple(s / b for s, b in zip(rates['streaming'], rates[base])))
        for base, got in ratios.items():
            first, rest = np.array(got).T
            _measure(rows, f'{name} streaming / {base}', lambda first=first, rest=rest: (
                f'epoch 1 {np.median(first):.2f}x, later {np.median(rest):.2f}x',
                f'median of {len(first)} pairs (epoch 1 {first.min():.2f}-{first.max():.2f}, later '
                f'{rest.min():.2f}-{rest.max():.2f}); {epochs} epochs each, streaming later: from the {later}'))
        if 'in memory' in every and 'streaming' in every:
            run_epochs, what = config_run(cfg.train, len(whole), len(whole.caption_video))
            _measure(rows, f'{name} a whole run of its config\'s {what}, streaming / in memory',
                     lambda: _whole_run(every['in memory'], every['streaming'], load_s, len(whole), run_epochs))


def config_run(cfg: TrainCfg, videos: int, pairs: int) -> tuple[int, str]:
    """(epochs, how to say them) of a whole run of `cfg` over `videos` training videos with `pairs`
    captions: its epochs, or as many as its steps make (MMT's 50K steps; the support-set model's
    epochs over every pair)."""
    steps = cfg.run_steps(pairs)
    if not steps:
        return cfg.epochs, f'{cfg.epochs} epochs'
    epochs = -(-steps // max(videos // cfg.batch_size, 1))
    return epochs, f'{steps:,} steps ({epochs:,} epochs of {videos:,} videos)'


def _whole_run(memory: list[tuple[float, float]], streaming: list[tuple[float, float]], load_s: float, videos: int,
               epochs: int) -> tuple[str, str]:
    """The ratio of a whole run's pairs/s, streamed against in memory, computed from the median
    epoch rates: in memory, loading the part (`load_s`) comes before the epochs; streaming, epoch 1
    reads the stores."""
    (m1, m2), (s1, s2) = (np.median(np.array(r), axis=0) for r in (memory, streaming))
    mem = load_s + videos / m1 + (epochs - 1) * videos / m2
    stream = videos / s1 + (epochs - 1) * videos / s2
    return (f'{mem / stream:.2f}x', f'computed from the median epoch rates: in memory {mem:.1f} s (the load '
            f'{load_s:.2f} s, epoch 1, {epochs - 1} later), streaming {stream:.1f} s (epoch 1, {epochs - 1} later)')


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog='python -m train.bench', description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split('\n\n', 1)[1])
    p.add_argument('--device', default='auto', help=DEVICE_HELP)
    p.add_argument('--quick', action='store_true',
                   help='narrow models (1 layer, width 32), batch 8, 3 steps, 32 x 32 retrieval: a check of the '
                        'command, not a measurement')
    p.add_argument('--models', default='mmt,ce,mee', help='models to time retrieval for (default: mmt,ce,mee)')
    p.add_argument('--batch', type=int, help='training batch (default: 32, the MMT config\'s; --quick 8)')
    p.add_argument('--warmup', type=int, help='steps before timing; compiling happens here (default: 10; --quick 1)')
    p.add_argument('--steps', type=int, help='timed training steps (default: 50; --quick 3)')
    p.add_argument('--queries', type=int, help='captions = videos of the retrieval (default: 5000; --quick 32)')
    p.add_argument('--encode-batch', type=int, default=1250, help='videos or captions encoded at once (default: 1250)')
    p.add_argument('--compile-backend', default='inductor',
                   help='torch.compile backend of the compiled step: inductor (reduce-overhead on CUDA), cudagraphs, '
                        'aot_eager (default: inductor)')
    p.add_argument('--no-train', action='store_true', help='skip the training-step rows')
    p.add_argument('--no-retrieval', action='store_true', help='skip the retrieval rows')
    p.add_argument('--stream-models', default='mee,mmt',
                   help='models timed in memory against streaming (default: mee,mmt; empty: none)')
    p.add_argument('--stream-videos', type=int, help='videos in the stores of those rows (default: 1024; --quick 64)')
    p.add_argument('--stream-epochs', type=int, default=3,
                   help='epochs of each streaming-row training: the first, then later ones (default: 3)')
    p.add_argument('--stream-repeats', type=int, default=2,
                   help='alternated in-memory / streaming pairs of those rows (default: 2)')
    p.add_argument('--stream-workers', type=int,
                   help='reader processes of the streamed rows (default: the training default, train.data_workers: null)')
    p.add_argument('--no-stream-cache', action='store_true',
                   help='streaming reads the stores every epoch (train.stream_cache=false)')
    args = p.parse_args(argv)
    if args.stream_workers is not None and args.stream_workers < 0:
        p.error(f'--stream-workers must be 0 or more, got {args.stream_workers}')
    setup_logging()
    q = args.quick
    batch = args.batch or (8 if q else 32)
    warmup = args.warmup if args.warmup is not None else (1 if q else 10)
    steps = args.steps or (3 if q else 50)
    n = args.queries or (32 if q else 5000)
    try:
        dev = torch.device(pick_device(args.device))
        models = [m.strip() for m in args.models.split(',') if m.strip()]
        streamed = [m.strip() for m in args.stream_models.split(',') if m.strip()]
        unknown = [m for m in models if m not in CONFIGS] + [
            m for m in streamed if m not in CONFIGS and not (CONFIG_DIR / f'{m}.yaml').is_file()]
        if unknown:
            raise ConfigError(f'--models: unknown {", ".join(unknown)} (mmt, ce, mee; or for --stream-models a '
                              f'config of {CONFIG_DIR})')
        cfgs = {m: load_run_cfg(CONFIG_DIR / f'{CONFIGS.get(m, m)}.yaml') for m in {'mmt', *models, *streamed}}
    except ConfigError as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    if q:
        cfgs = {m: dataclasses.replace(c, model=_tiny(c.model)) for m, c in cfgs.items()}
    if dev.type == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # fp32 outside autocast
    machine = _machine(dev)
    print(f'machine: {machine}', flush=True)
    rows: list[tuple[str, str, str]] = []
    if not args.no_train:
        mmt = cfgs['mmt']
        words = mmt.data.max_words
        shape = f'batch {batch}, {len(mmt.model.experts)} experts x {mmt.model.experts[0].max_tokens} rows, {words} words'
        data = synthetic_split(mmt.model, batch * max(steps, warmup + 5, 8), words)
        rates: dict[bool, float] = {}

        def rate(compile: bool) -> tuple[str, str]:
            r, waits = train_rate(mmt, data, dev, batch, warmup, steps, compile, args.compile_backend)
            rates[compile] = r
            note = shape + ('' if waits is None else f'; host waits in 5 steps: {waits}')
            if compile and False in rates:
                note = f'{r / rates[False]:.2f}x eager; ' + note
            return f'{r:.2f} steps/s ({1000 / r:.1f} ms)', note

        _measure(rows, 'MMT train step, eager', lambda: rate(False))
        _measure(rows, f'MMT train step, compiled ({args.compile_backend})', lambda: rate(True))
        del data
    if not args.no_retrieval:
        for m in models:
            cfg = cfgs[m]

            def retrieve(cfg: RunCfg = cfg) -> tuple[str, str]:
                data = synthetic_split(cfg.model, n, cfg.data.max_words, seed=1)
                t, metrics = retrieval_seconds(cfg.model, data, dev, args.encode_batch, amp=True)
                return (f'{t["total"]:.3f} s', f'videos {t["video"]:.3f} s, captions {t["text"]:.3f} s, scores + '
                        f'metrics {t["scores_metrics"]:.3f} s (t2v R1 {metrics["t2v"]["R1"]:.2f}); features to '
                        f'the device before: {t["copy"]:.3f} s')

            _measure(rows, f'{m.upper()} retrieval {n} x {n}{" bf16" if dev.type == "cuda" else ""}', retrieve)
    # last: the longest rows (stores written, whole epochs), so a time limit stops them, not the ones above
    for m in streamed:
        _stream_rows(rows, m.upper(), cfgs[m], dev, args.stream_videos or (64 if q else 1024), args.stream_epochs,
                     args.stream_repeats, not args.no_stream_cache, args.stream_workers)
    print(f'\nmachine: {machine}')
    width = max(len(r[0]) for r in rows) if rows else 0
    print(f'| {"measurement":<{width}} | value | note |')
    print(f'|{"-" * (width + 2)}|---|---|')
    for name, value, note in rows:
        print(f'| {name:<{width}} | {value} | {note} |')
    return 1 if any(v == 'error' for _, v, _ in rows) else 0


if __name__ == '__main__':
    sys.exit(main())
