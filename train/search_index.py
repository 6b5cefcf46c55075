"""A search index with the retrieval models' exact scores (DESIGN.md "Search at collection scale").

For MEE, CE and MMT, s(t, v) = sum_m w_m(t) a_m(v) <t_m, v_m> / sum_m w_m(t) a_m(v) (`base.mixture_similarity`;
a_m(v) = 1 for every expert of MMT, whose eq. 6 does not renormalise, so its videos share one pattern).
Videos that share one availability pattern p score as one inner product <q_p(t), x(v)> with
q_p(t) = [w_m(t) / Z_p(t) t_m]_{m in p}, Z_p(t) = sum_{m in p} w_m(t), and x(v) = [v_m]_{m in p}. So one
FAISS index per pattern present, each searched with its own q_p(t), and the per-pattern top-k merged,
rank the whole collection as `model.similarity` does. The support-set model has one embedding that
every video has: one pattern, one index. Videos with no expert at all score 0 (as the mixture does).

A pattern with more than `IndexCfg.approx_threshold` videos gets an approximate index instead of a
flat one (`IndexCfg.approx`): IVF (inverted lists around k-means centroids; only the lists nearest
the query are searched), IVF-PQ (the same lists holding product-quantised codes, which are cheaper to
scan) or an HNSW graph. Each has its candidates scored exactly against the float vectors: IVF and
HNSW keep them and score their candidates with them (HNSW widens its candidates to
`IndexCfg.rerank` x k first); IVF-PQ ranks by its codes, and its best `rerank` x k candidates are
re-ranked by the float vectors (FAISS's IndexRefineFlat). Only the best k by exact scores go to the
merge. Its recall@10 against the exact ranking is measured when it is built (`SearchIndex.recall`).
IVF over float vectors is the default: on a few CPU cores IVF-PQ's training (k-means of 256 codes per
sub-quantiser) costs far more than IVF's (BENCHMARKS.md), and its re-ranking keeps the float vectors
in memory anyway; it pays where the lists scanned per query are long.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import torch

from shared.config import at_least
from shared.files import atomic_write_text
from shared.store import unreadable
from train.models.base import TextEmbedding, VideoEmbedding

__all__ = ['APPROX_KINDS', 'IndexCfg', 'SearchIndex', 'pattern_queries', 'video_queries']

#: the approximate index kinds (`IndexCfg.approx`)
APPROX_KINDS = ('ivf', 'ivfpq', 'hnsw')

_logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class IndexCfg:
    """How each availability pattern's index is built.

    Args:
        approx_threshold: a pattern with more videos than this gets an approximate index.
        approx: ivf, ivfpq or hnsw.
        nlist: IVF's inverted lists per pattern (None: 4 sqrt(videos)).
        nprobe: lists IVF searches per query (recall against speed).
        pq_dims: dimensions per IVF-PQ sub-quantiser (one byte of code each; the pattern's dimensions
            are split into the nearest count of equal sub-vectors).
        hnsw_m: neighbours per node of the HNSW graph.
        ef_construction: candidate list while the graph is built.
        ef_search: candidate list while it is searched (recall against speed).
        rerank: an approximate index returns rerank x k candidates, then scored exactly.
        recall_queries: queries that measure an approximate index's recall@10 when it is built.
    """

    approx_threshold: int = 200_000
    approx: str = 'ivf'
    nlist: int | None = None
    nprobe: int = 64
    pq_dims: int = 4
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 128
    rerank: int = 4
    recall_queries: int = 100

    def __post_init__(self) -> None:
        at_least(self, 1, 'approx_threshold', 'hnsw_m', 'ef_construction', 'ef_search', 'rerank', 'nprobe', 'pq_dims',
                 prefix='index setting ')
        if self.nlist is not None:
            at_least(self, 1, 'nlist', prefix='index setting ')
        if self.approx not in APPROX_KINDS:
            raise ValueError(f'index approx must be one of {", ".join(APPROX_KINDS)}, got {self.approx!r}')


def pattern_queries(text: TextEmbedding, pattern: np.ndarray) -> np.ndarray:
    """(T, |p| d) float32: q_p(t) = [w_m(t) / Z_p(t) t_m] for the experts m in `pattern`."""
    m = torch.from_numpy(np.flatnonzero(pattern))
    w = text.weights[:, m].float()
    w = w / w.sum(1, keepdim=True).clamp(min=1e-8)  # the mixture's own clamp
    return (w[..., None] * text.emb[:, m].float()).reshape(len(w), -1).numpy()


def video_queries(video: VideoEmbedding) -> TextEmbedding:
    """Videos as queries ("videos like this one"): each expert's embedding, weighted evenly over
    the experts the video has, so a neighbour is scored by the mixture over the experts both have."""
    avail = video.available.float()
    return TextEmbedding(video.emb.float(), avail / avail.sum(1, keepdim=True).clamp(min=1))


def _pq_subquantisers(dims: int, pq_dims: int) -> int:
    """The number of IVF-PQ sub-quantisers: a divisor of `dims` nearest to dims / pq_dims."""
    want = max(1, round(dims / pq_dims))
    return min((m for m in range(1, dims + 1) if dims % m == 0), key=lambda m: (abs(m - want), m))


class SearchIndex:
    """One FAISS index per availability pattern of a collection's video embeddings.

    Args:
        video: the collection's embeddings (V, M, d) and availability (V, M).
        cfg: index settings.
    """

    def __init__(self, video: VideoEmbedding, cfg: IndexCfg | None = None) -> None:
        import faiss

        self.cfg = cfg or IndexCfg()
        emb = video.emb.float().cpu().numpy()
        avail = video.available.bool().cpu().numpy()
        self.n_videos, self.n_experts, self.dim = emb.shape
        patterns, inverse = np.unique(avail, axis=0, return_inverse=True)
        self.patterns: list[np.ndarray] = []
        self.rows: list[np.ndarray] = []  # collection rows of each pattern's index entries
        self.indexes: list[faiss.Index | None] = []  # None: the pattern without experts (score 0)
        self.recall: dict[str, float] = {}  # recall@10 of each approximate pattern, by pattern name
        self.source: dict = {}  # what the embeddings came from, as `save` was told
        for i, p in enumerate(patterns):
            rows = np.flatnonzero(inverse.reshape(-1) == i)
            x = np.ascontiguousarray(emb[rows][:, p].reshape(len(rows), -1))
            self.patterns.append(p)
            self.rows.append(rows)
            self.indexes.append(self._build(x) if p.any() else None)
            if self.is_approximate(i):
                self.recall[self.pattern_name(i)] = self._measure_recall(i, x)

    def pattern_name(self, i: int) -> str:
        return ''.join('1' if a else '0' for a in self.patterns[i])

    def is_approximate(self, i: int) -> bool:
        return self.indexes[i] is not None and len(self.rows[i]) > self.cfg.approx_threshold

    def _build(self, x: np.ndarray):  # -> faiss.Index
        import faiss

        n, dims = x.shape
        if n <= self.cfg.approx_threshold:
            index = faiss.IndexFlatIP(dims)
        elif self.cfg.approx == 'hnsw':
            index = faiss.IndexHNSWFlat(dims, self.cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = self.cfg.ef_construction
        else:
            nlist = self.cfg.nlist or int(4 * np.sqrt(n))
            if self.cfg.approx == 'ivfpq':
                m = _pq_subquantisers(dims, self.cfg.pq_dims)
                ivf = faiss.IndexIVFPQ(faiss.IndexFlatIP(dims), dims, nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
                index = faiss.IndexRefineFlat(ivf)  # keeps the float vectors: candidates re-ranked exactly
            else:
                index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dims), dims, nlist, faiss.METRIC_INNER_PRODUCT)
            index.train(x[np.random.default_rng(0).choice(n, min(n, 40 * nlist), replace=False)])
        index.add(x)
        return index

    def _tune(self, index, k: int):  # -> faiss.Index
        """Set the search-time knobs of an approximate index for k results (they are not saved with it)."""
        import faiss

        if isinstance(index, faiss.IndexHNSWFlat):
            index.hnsw.efSearch = max(self.cfg.ef_search, self.cfg.rerank * k)
        else:
            faiss.extract_index_ivf(index).nprobe = self.cfg.nprobe
            if isinstance(index, faiss.IndexRefine):
                index.k_factor = self.cfg.rerank
        return index

    def _measure_recall(self, i: int, x: np.ndarray, k: int = 10) -> float:
        """recall@10 of pattern i's approximate search against the exact one (brute force over its
        vectors x), for queries near them (a video's vector plus noise), and logged."""
        import faiss

        rng = np.random.default_rng(0)
        q = x[rng.choice(len(x), min(self.cfg.recall_queries, len(x)), replace=False)]
        q = q + rng.normal(0, float(x.std()), q.shape).astype(np.float32)
        _, exact = faiss.knn(q, x, k, metric=faiss.METRIC_INNER_PRODUCT)
        _, approx = self._search_pattern(i, q, k)
        recall = float(np.mean([len(set(a) & set(e)) / k for a, e in zip(approx, exact)]))
        _logger.info('pattern %s: %d videos, %s recall@%d against exact %.3f', self.pattern_name(i),
                     len(x), self.cfg.approx, k, recall)
        return recall

    def _search_pattern(self, i: int, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, positions in the pattern) of its top k for queries q: exact scores in every case."""
        import faiss

        index = self.indexes[i]
        n = len(self.rows[i])
        if not self.is_approximate(i):
            return index.search(q, min(k, n))
        index = self._tune(index, k)
        if isinstance(index, faiss.IndexHNSWFlat):
            # HNSWFlat scores its candidates against the stored float vectors: exact inner products,
            # so the best k of the rerank x k candidates, as it returns them, is the exact re-ranking
            scores, cand = index.search(q, min(self.cfg.rerank * k, n))
            return scores[:, :k], cand[:, :k]
        # IVFFlat: the probed lists' vectors, scored exactly; IVF-PQ inside IndexRefineFlat: its
        # rerank x k best by code, re-scored against the float vectors, the best k of those returned
        return index.search(q, min(k, n))

    def search(self, text: TextEmbedding, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The top k of the collection for each query: (scores (T, k'), collection rows (T, k')), best
        first; k' is k capped at the collection's size, and fewer where an IVF search found fewer
        candidates (it sees only its nprobe lists) for every query. A query that found fewer than
        another has row -1 with score -inf after its hits."""
        k = min(k, self.n_videos)
        n_q = text.emb.shape[0]
        scores, rows = [], []
        for i, p in enumerate(self.patterns):
            if self.indexes[i] is None:  # no expert: every such video scores 0
                take = self.rows[i][:k]
                scores.append(np.zeros((n_q, len(take)), np.float32))
                rows.append(np.broadcast_to(take, (n_q, len(take))))
                continue
            s, pos = self._search_pattern(i, pattern_queries(text, p), k)
            valid = pos >= 0
            scores.append(np.where(valid, s, -np.inf).astype(np.float32))
            rows.append(np.where(valid, self.rows[i][np.maximum(pos, 0)], -1))
        scores, rows = np.concatenate(scores, 1), np.concatenate(rows, 1)
        top = np.argsort(-scores, axis=1, kind='stable')[:, :k]
        scores, rows = np.take_along_axis(scores, top, 1), np.take_along_axis(rows, top, 1)
        found = int((rows >= 0).any(0).sum())  # FAISS pads a short answer with -1: those columns come last
        return scores[:, :found], rows[:, :found]

    def save(self, path: Path, source: dict | None = None) -> None:
        """Write the indexes (FAISS's own format; no pickle) and the pattern table under `path`, with
        `source` (JSON: what the embeddings came from) for `load` to give back as `self.source`."""
        import faiss

        path.mkdir(parents=True, exist_ok=True)
        for i, index in enumerate(self.indexes):
            if index is not None:
                faiss.write_index(index, str(path / f'pattern_{self.pattern_name(i)}.faiss'))
        table = {'cfg': dataclasses.asdict(self.cfg), 'shape': [self.n_videos, self.n_experts, self.dim],
                 'recall': self.recall, 'source': source or {},
                 'patterns': [self.pattern_name(i) for i in range(len(self.patterns))]}
        np.savez(path / 'rows.npz', *self.rows)
        atomic_write_text(path / 'index.json', json.dumps(table, indent=1))

    @classmethod
    def load(cls, path: Path) -> SearchIndex:
        """The index `save` wrote under `path`.

        Raises:
            StoreError: a file of it cannot be read (cut short, damaged, missing).
        """
        with unreadable(path, 'search index', f'Remove {path}: python -m train.index builds it again'):
            return cls._load(path)

    @classmethod
    def _load(cls, path: Path) -> SearchIndex:
        import faiss

        table = json.loads((path / 'index.json').read_text())
        self = cls.__new__(cls)
        self.cfg = IndexCfg(**table['cfg'])
        self.n_videos, self.n_experts, self.dim = table['shape']
        self.recall = table['recall']
        self.source = table.get('source', {})  # an index saved before sources were recorded has none
        with np.load(path / 'rows.npz', allow_pickle=False) as z:
            self.rows = [z[f'arr_{i}'] for i in range(len(table['patterns']))]
        self.patterns, self.indexes = [], []
        for name in table['patterns']:
            p = np.array([c == '1' for c in name])
            self.patterns.append(p)
            self.indexes.append(faiss.read_index(str(path / f'pattern_{name}.faiss')) if p.any() else None)
        return self
