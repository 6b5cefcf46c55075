"""`python -m train.bench_search`: query latency of the collection index.

    python -m train.bench_search --videos 10000,100000,1000000
    python -m train.bench_search --quick      # small sizes: checks the command in seconds

For each size, a synthetic collection of MEE/CE-like embeddings (3 experts of --dim, L2-normalised;
videos drawn around 2,000 random topics, as real embeddings cluster, with 4 availability patterns:
all experts 70 %, no audio 20 %, object only 5 %, object + audio 5 %) is indexed exactly (flat) and
approximately (IVF, IVF-PQ up to --ivfpq-max, HNSW up to --hnsw-max; `train.search_index`), and one query at a time is timed: text encoding (an MEE
text side, NetVLAD over 12 word vectors of 300 dims) plus the index search for k = 10. Recall@10 of
the approximate index is against the exact one, on the same queries. The table is Markdown.
The text side runs on --threads torch threads (default 1, as the server does: on this 2-core CPU
shared with other jobs, an MEE text encoding took 132 ms on 2 threads and 14 ms on one).
"""
from __future__ import annotations

import argparse
import platform
import sys
import time

import numpy as np
import torch

from train.models import ExpertSpec, create_model, model_cfg
from train.models.base import TextEmbedding, TextInput, VideoEmbedding
from train.search_index import IndexCfg, SearchIndex

__all__ = ['synthetic', 'main']

PATTERNS = np.array([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 0, 1]], bool)
SHARES = (0.7, 0.2, 0.05, 0.05)


def synthetic(n: int, dim: int, seed: int = 0, topics: int = 2000) -> VideoEmbedding:
    """n videos of 3 experts around `topics` random directions, with the availability patterns above."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((topics, 3, dim), dtype=np.float32)
    emb = centres[rng.integers(topics, size=n)]
    emb += 0.7 * rng.standard_normal(emb.shape, dtype=np.float32)
    emb /= np.linalg.norm(emb, axis=-1, keepdims=True)
    avail = PATTERNS[rng.choice(len(PATTERNS), size=n, p=SHARES)]
    return VideoEmbedding(torch.from_numpy(emb), torch.from_numpy(avail))


def _queries(video: VideoEmbedding, n: int, seed: int = 1) -> TextEmbedding:
    """Texts near random videos (another noise draw), with random mixture weights."""
    rng = np.random.default_rng(seed)
    emb = video.emb[rng.integers(len(video.emb), size=n)].numpy()
    emb = emb + 0.7 * rng.standard_normal(emb.shape, dtype=np.float32) / np.sqrt(emb.shape[-1])
    emb /= np.linalg.norm(emb, axis=-1, keepdims=True)
    w = torch.softmax(torch.from_numpy(rng.standard_normal((n, 3), dtype=np.float32)), -1)
    return TextEmbedding(torch.from_numpy(emb), w)


def _median_ms(fn, n: int) -> float:
    times = []
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog='python -m train.bench_search', description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split('\n\n')[1])
    p.add_argument('--videos', default='10000,100000,1000000', help='collection sizes, comma-separated (default: %(default)s)')
    p.add_argument('--dim', type=int, default=256, help='embedding size per expert (default: 256)')
    p.add_argument('--queries', type=int, default=200, help='queries timed one at a time (default: 200)')
    p.add_argument('--quick', action='store_true', help='sizes 2000,5000 and 20 queries')
    p.add_argument('--hnsw-max', type=int, default=10_000,
                   help='build HNSW only up to this size (its build is slow on a few cores; default: 10000)')
    p.add_argument('--ivfpq-max', type=int, default=100_000,
                   help='build IVF-PQ only up to this size (its training is slow on a few cores; default: 100000)')
    p.add_argument('--threads', type=int, default=1,
                   help="torch's threads for the text side (default 1, as pipelines.serve: a query's ops are tiny)")
    args = p.parse_args(argv)
    sizes = [2000, 5000] if args.quick else [int(v) for v in args.videos.split(',')]
    n_q = 20 if args.quick else args.queries
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    model = create_model(model_cfg(model='mee', experts=(ExpertSpec('object', 8), ExpertSpec('scene', 8),
                                                          ExpertSpec('audio', 8)), embed_dim=args.dim,
                                   text_dim=300)).eval()
    words = TextInput(torch.randn(n_q, 12, 300), torch.ones(n_q, 12, dtype=torch.bool))
    with torch.no_grad():
        text_ms = _median_ms(lambda i: model.encode_text(TextInput(words.x[i:i + 1], words.mask[i:i + 1])), n_q)
    print(f'{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads; text encoding '
          f'{text_ms:.2f} ms per query', file=sys.stderr)
    rows = ['| videos | index | build s | search ms (median) | text + search ms | recall@10 vs exact |',
            '|---:|---|---:|---:|---:|---:|']
    for n in sizes:
        video = synthetic(n, args.dim)
        queries = _queries(video, n_q)
        exact_top = None
        kinds = [('exact (flat)', IndexCfg(approx_threshold=n + 1)), ('approximate (IVF)', IndexCfg(approx_threshold=1000))]
        if n <= args.ivfpq_max:
            kinds.append(('approximate (IVF-PQ)', IndexCfg(approx_threshold=1000, approx='ivfpq')))
        if n <= args.hnsw_max:
            kinds.append(('approximate (HNSW)', IndexCfg(approx_threshold=1000, approx='hnsw')))
        for name, cfg in kinds:
            t = time.perf_counter()
            index = SearchIndex(video, cfg)
            build = time.perf_counter() - t
            one = lambda i, index=index: index.search(  # noqa: E731 - bound now: `del index` below frees it
                TextEmbedding(queries.emb[i:i + 1], queries.weights[i:i + 1]), 10)
            ms = _median_ms(one, n_q)
            top = np.concatenate([one(i)[1] for i in range(n_q)])
            if exact_top is None:
                exact_top, recall = top, 1.0
            else:
                recall = float(np.mean([len(set(a) & set(e)) / 10 for a, e in zip(top, exact_top)]))
            rows.append(f'| {n:,} | {name} | {build:.1f} | {ms:.2f} | {ms + text_ms:.2f} | {recall:.3f} |')
            print(rows[-1], file=sys.stderr)
            del index, one  # the next index is built without this one in memory
    print('\n'.join(rows))
    return 0


if __name__ == '__main__':
    sys.exit(main())
