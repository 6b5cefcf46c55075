"""Data for training and evaluation: expert stores -> aggregated inputs, captions -> word vectors.

Videos of a split part are read once from their stores (`shared.store`) and aggregated as the
model asks (mean, max, or rows padded to `max_tokens` with a mask for NetVLAD/transformers).
Captions are kept as indices into a vocabulary matrix of word vectors (`shared.text`), so a
dataset's hundreds of thousands of captions cost megabytes. Training samples one caption per
video per step (CE's practice); evaluation builds the split protocol's full query set.
"""
from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from shared.datasets import Manifest
from shared.store import RandomWeightsWarning, StoreError, open_store, store_path
from shared.text import WordVectors, split_words
from train.models.base import ExpertInput, TextInput
from train.models.config import ExpertSpec

__all__ = ['ExpertData', 'CaptionData', 'SplitData', 'load_split']


@dataclasses.dataclass
class ExpertData:
    """One expert over a split part's videos, aggregated for the model."""

    x: np.ndarray  # (N, D) aggregated, or (N, L, D) rows
    available: np.ndarray  # (N,) bool
    mask: np.ndarray | None = None  # (N, L) bool
    times: np.ndarray | None = None  # (N, L, 2)

    def batch(self, idx: np.ndarray) -> ExpertInput:
        t = lambda a: None if a is None else torch.from_numpy(np.ascontiguousarray(a[idx]))  # noqa: E731
        return ExpertInput(t(self.x).float(), t(self.available), t(self.mask), t(self.times))


def _aggregate(spec: ExpertSpec, feats: np.ndarray, times: np.ndarray, lengths: np.ndarray,
               available: np.ndarray) -> ExpertData:
    n, t, d = feats.shape
    if d != spec.dim:
        raise StoreError(f'{spec.name}: the store has D={d} but the model config says dim={spec.dim}')
    valid = np.arange(t)[None, :] < lengths[:, None]
    if spec.aggregation in ('mean', 'max'):
        f = feats.astype(np.float32)
        if spec.aggregation == 'mean':
            agg = (f * valid[..., None]).sum(1) / np.maximum(lengths, 1)[:, None]
        else:
            agg = np.where(valid[..., None], f, -np.inf).max(1)
            agg[lengths == 0] = 0.0
        return ExpertData(agg.astype(np.float32), available)
    keep = min(spec.max_tokens, t)  # the first max_tokens rows, in time order
    return ExpertData(feats[:, :keep].astype(np.float32), available, valid[:, :keep], times[:, :keep])


@dataclasses.dataclass
class CaptionData:
    """Captions as word indices into `vectors` (row 0 unused: padding)."""

    words: np.ndarray  # (C, max_words) int32, 0 = padding
    vectors: np.ndarray  # (V + 1, D) float32

    def batch(self, idx: np.ndarray) -> TextInput:
        w = torch.from_numpy(self.words[idx].astype(np.int64))
        return TextInput(torch.from_numpy(self.vectors)[w], w > 0)


def _encode_captions(texts: list[str], wv: WordVectors, max_words: int) -> CaptionData:
    vocab: dict[str, int] = {}
    rows: list[np.ndarray] = [np.zeros(wv.dim, np.float32)]
    words = np.zeros((len(texts), max_words), np.int32)
    for i, text in enumerate(texts):
        k = 0
        for w in split_words(text):
            if k == max_words:
                break
            idx = vocab.get(w)
            if idx is None:
                vec = wv.lookup(w)
                if vec is None:
                    continue  # out of vocabulary: no row, as for OCR and speech
                idx = vocab[w] = len(rows)
                rows.append(vec)
            words[i, k] = idx
            k += 1
    return CaptionData(words, np.stack(rows))


@dataclasses.dataclass
class SplitData:
    """One part (train, val or test) of a split: its videos' experts and captions."""

    video_ids: list[str]
    experts: dict[str, ExpertData]
    captions: CaptionData
    caption_video: np.ndarray  # (C,) the video of each caption
    query: np.ndarray  # (Q,) indices of the captions that are evaluation queries
    random_weights: list[str]

    def __len__(self) -> int:
        return len(self.video_ids)

    @functools.cached_property
    def captions_by_video(self) -> list[np.ndarray]:
        """Each video's caption indices, grouped once (one sort, not a scan per video)."""
        order = np.argsort(self.caption_video, kind='stable')
        bounds = np.searchsorted(self.caption_video[order], np.arange(len(self) + 1))
        return [order[bounds[v]:bounds[v + 1]] for v in range(len(self))]

    def videos(self, idx: np.ndarray) -> dict[str, ExpertInput]:
        return {name: e.batch(idx) for name, e in self.experts.items()}

    def train_batches(self, batch_size: int, rng: np.random.Generator) -> Iterator[tuple[dict[str, ExpertInput], TextInput]]:
        """Shuffled videos, one randomly chosen caption each; the last short batch is dropped."""
        order = rng.permutation(len(self))
        by_video = self.captions_by_video
        for s in range(0, len(order) - batch_size + 1, batch_size):
            idx = order[s:s + batch_size]
            caps = np.array([c[rng.integers(len(c))] for c in (by_video[v] for v in idx)])
            yield self.videos(idx), self.captions.batch(caps)


def load_split(manifest: Manifest, split: str, part: str, features_root: Path, experts: tuple[ExpertSpec, ...],
               wv: WordVectors, max_words: int, test_queries: bool = True) -> SplitData:
    """Read a split part's stores and captions.

    Args:
        test_queries: use the split's evaluation queries (e.g. 1k-A's one JSFusion caption per
            video); else every caption is kept (training).
    """
    s = manifest.split(split)
    ids = list(s.ids(part))
    if not ids:
        raise StoreError(f'{manifest.name} split {split} has no {part} videos')
    data: dict[str, ExpertData] = {}
    random_weights = []
    for spec in experts:
        path = store_path(features_root, manifest.name, spec.name)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always', RandomWeightsWarning)
            try:
                store = open_store(path)
            except StoreError as err:
                raise StoreError(f'{err}; extract it first: python -m extract --dataset {manifest.name} '
                                 f'--expert {spec.name}') from None
        if caught:
            random_weights.append(spec.name)
        rows = store.read(ids=ids)
        if (rows.status == 0).any():
            raise StoreError(f'{path} has {int((rows.status == 0).sum())} pending videos in {split}/{part}: '
                             'finish the extraction first')
        data[spec.name] = _aggregate(spec, rows.features, rows.timestamps, rows.lengths, rows.available.astype(bool))
    texts, owner, query = [], [], []
    for v, vid in enumerate(ids):
        caps = list(manifest.captions.get(vid, ()))
        if s.paragraph:
            caps = [' '.join(caps)]
        chosen = s.query_captions.get(vid) if (s.query_captions and test_queries and part == 'test') else None
        for k, text in enumerate(caps):
            if chosen is None or k in chosen:
                query.append(len(texts))
            texts.append(text)
            owner.append(v)
    if not texts:
        raise StoreError(f'{manifest.name} {split}/{part}: no captions')
    return SplitData(ids, data, _encode_captions(texts, wv, max_words), np.asarray(owner), np.asarray(query),
                     random_weights)
