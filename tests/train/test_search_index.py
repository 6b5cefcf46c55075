"""The collection index (issue 25): its top k is the brute-force `model.similarity` top k."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from train.models.base import TextEmbedding, VideoEmbedding, mixture_similarity
from train.search_index import IndexCfg, SearchIndex, video_queries


def _gallery(n: int, m: int = 4, d: int = 16, seed: int = 0, topics: int = 0) -> VideoEmbedding:
    """Unit-norm per-expert embeddings with several availability patterns, one of them no expert at all;
    around `topics` random directions when given (real embeddings cluster: approximate indexes rely on it)."""
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(n, m, d, generator=g)
    if topics:
        emb = torch.randn(topics, m, d, generator=g)[torch.randint(topics, (n,), generator=g)] + 0.5 * emb
    emb = torch.nn.functional.normalize(emb, dim=-1)
    patterns = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 1], [1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]], dtype=torch.bool)
    which = torch.multinomial(torch.tensor([0.5, 0.2, 0.15, 0.149, 0.001]), n, replacement=True, generator=g)
    return VideoEmbedding(emb, patterns[which][:, :m])


def _texts(n: int, m: int = 4, d: int = 16, seed: int = 1) -> TextEmbedding:
    g = torch.Generator().manual_seed(seed)
    emb = torch.nn.functional.normalize(torch.randn(n, m, d, generator=g), dim=-1)
    return TextEmbedding(emb, torch.softmax(2 * torch.randn(n, m, generator=g), -1))


def _assert_same_top(index: SearchIndex, text: TextEmbedding, video: VideoEmbedding, k: int) -> None:
    """Same scores, and the same videos wherever the brute-force scores are not tied."""
    brute = mixture_similarity(text, video)
    top = torch.topk(brute, k)
    scores, rows = index.search(text, k)
    np.testing.assert_allclose(scores, top.values.numpy(), atol=1e-5)
    np.testing.assert_allclose(np.take_along_axis(brute.numpy(), rows, 1), scores, atol=1e-5)  # rows' own scores
    gaps = np.diff(top.values.numpy(), axis=1)
    distinct = np.concatenate([gaps[:, :1], gaps], 1) < -1e-5  # below the previous one by a margin
    distinct &= np.concatenate([gaps, gaps[:, -1:]], 1) < -1e-5
    assert (rows[distinct] == top.indices.numpy()[distinct]).all()
    assert distinct.mean() > 0.9


def test_exact_index_top_k_equals_brute_force_on_50k_videos_of_several_patterns() -> None:
    video, text = _gallery(50_000), _texts(40)
    index = SearchIndex(video)
    assert len(index.patterns) == 5 and not index.recall  # flat: no approximate pattern
    _assert_same_top(index, text, video, 10)
    _assert_same_top(index, _texts(3, seed=5), video, 50)


def test_a_collection_smaller_than_k_and_videos_without_experts() -> None:
    video = _gallery(7, seed=3)
    video.available[0] = False  # no expert: scores 0, as the mixture does
    index = SearchIndex(video)
    scores, rows = index.search(_texts(2), 100)
    assert scores.shape == (2, 7) and sorted(rows[0].tolist()) == list(range(7))
    assert scores[0][rows[0] == 0] == 0.0
    _assert_same_top(index, _texts(2, seed=8), video, 7)


def test_one_pattern_for_a_single_embedding_model() -> None:
    """The support-set model: one embedding that every video has."""
    g = torch.Generator().manual_seed(4)
    video = VideoEmbedding(torch.nn.functional.normalize(torch.randn(3000, 1, 32, generator=g), dim=-1),
                           torch.ones(3000, 1, dtype=torch.bool))
    text = TextEmbedding(torch.nn.functional.normalize(torch.randn(5, 1, 32, generator=g), dim=-1), torch.ones(5, 1))
    index = SearchIndex(video)
    assert len(index.indexes) == 1
    _assert_same_top(index, text, video, 10)


@pytest.mark.parametrize('kind', ['ivf', 'ivfpq', 'hnsw'])
def test_approximate_index_reranks_exactly_and_measures_its_recall(kind: str, tmp_path) -> None:
    video, text = _gallery(20_000, d=8, topics=200), _texts(30, d=8)
    index = SearchIndex(video, IndexCfg(approx_threshold=2_000, approx=kind, hnsw_m=16, ef_search=64))
    approx = [index.pattern_name(i) for i in range(len(index.patterns)) if index.is_approximate(i)]
    assert approx and sorted(index.recall) == sorted(approx)
    import faiss

    kinds = {'ivf': faiss.IndexIVFFlat, 'ivfpq': faiss.IndexRefine, 'hnsw': faiss.IndexHNSWFlat}
    built = [index.indexes[i] for i in range(len(index.patterns)) if index.is_approximate(i)]
    assert all(isinstance(b, kinds[kind]) for b in built), [type(b) for b in built]
    if kind == 'ivfpq':  # product-quantised codes inside, re-ranked against the float vectors
        assert all(isinstance(faiss.downcast_index(b.base_index), faiss.IndexIVFPQ) for b in built)
    assert all(r >= 0.9 for r in index.recall.values()), index.recall
    brute = mixture_similarity(text, video).numpy()
    scores, rows = index.search(text, 10)
    np.testing.assert_allclose(np.take_along_axis(brute, rows, 1), scores, atol=1e-5)  # exact scores
    exact = np.argsort(-brute, 1)[:, :10]
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(rows, exact)])
    assert recall >= 0.9, recall
    index.save(tmp_path / 'faiss')
    again = SearchIndex.load(tmp_path / 'faiss')
    assert again.recall == index.recall
    np.testing.assert_array_equal(again.search(text, 10)[1], rows)


def test_videos_like_this_one_rank_the_video_itself_first() -> None:
    video = _gallery(5000, seed=6)
    has = video.available.any(1).nonzero()[:20, 0]
    query = video_queries(VideoEmbedding(video.emb[has], video.available[has]))
    _, rows = SearchIndex(video).search(query, 3)
    assert (rows[:, 0] == has.numpy()).all()


def test_an_ivf_search_that_finds_fewer_than_k_returns_real_rows_only() -> None:
    """IVF sees only its nprobe lists: with lists of ~10 videos and nprobe 1, k=50 finds fewer; FAISS
    pads with row -1, which must not reach a caller as a video (nor -inf as a score)."""
    g = torch.Generator().manual_seed(7)
    video = VideoEmbedding(torch.nn.functional.normalize(torch.randn(300, 1, 8, generator=g), dim=-1),
                           torch.ones(300, 1, dtype=torch.bool))
    index = SearchIndex(video, IndexCfg(approx_threshold=100, nlist=30, nprobe=1, recall_queries=10))
    assert index.is_approximate(0)
    texts = TextEmbedding(torch.nn.functional.normalize(torch.randn(6, 1, 8, generator=g), dim=-1), torch.ones(6, 1))
    brute = mixture_similarity(texts, video).numpy()
    counts = []
    for t in range(6):  # one query at a time, as the server asks: every column is a video
        scores, rows = index.search(TextEmbedding(texts.emb[t:t + 1], texts.weights[t:t + 1]), 50)
        assert 0 < rows.shape[1] < 50 and (rows >= 0).all() and np.isfinite(scores).all()
        np.testing.assert_allclose(brute[t, rows[0]], scores[0], atol=1e-5)
        counts.append(rows.shape[1])
    scores, rows = index.search(texts, 50)  # together: as many columns as the query that found most
    assert rows.shape[1] == max(counts) and ((rows >= 0).sum(1) == counts).all()
    assert ((rows >= 0) == np.isfinite(scores)).all()


def test_an_index_of_more_than_ten_patterns_loads_each_patterns_rows(tmp_path) -> None:
    """rows.npz holds arr_0 .. arr_15: read by name order (arr_10 before arr_2) the rows of one pattern would
    go with another's FAISS index, and the loaded index would answer other videos' ids."""
    g = torch.Generator().manual_seed(9)
    patterns = torch.tensor([[(p >> e) & 1 for e in range(4)] for p in range(16)], dtype=torch.bool)
    video = VideoEmbedding(torch.nn.functional.normalize(torch.randn(160, 4, 8, generator=g), dim=-1),
                           patterns[torch.arange(160) % 16])
    index = SearchIndex(video)
    assert len(index.patterns) == 16
    index.save(tmp_path / 'faiss')
    text = _texts(5, d=8)
    _assert_same_top(SearchIndex.load(tmp_path / 'faiss'), text, video, 10)
