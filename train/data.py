"""Data for training and evaluation: expert stores -> aggregated inputs, captions -> word vectors.

Videos of a split part are read once from their stores (`shared.store`) and aggregated as the
model asks (mean, max, the first `max_tokens` rows with a mask for NetVLAD, or for transformers
`max_tokens` rows sampled evenly in time order, with their timestamps). Captions are encoded by
the run's `train.captions.CaptionEncoder` into index rows (word-vector rows or sub-word ids), so
a dataset's hundreds of thousands of captions cost megabytes. Training samples one caption per
video per step (CE's practice); evaluation builds the split protocol's full query set.
"""
from __future__ import annotations

import dataclasses
import functools
import shlex
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from shared.datasets import Manifest
from shared.store import ExpertRows, ExpertStore, RandomWeightsWarning, StoreError, open_store, store_path
from train.captions import CaptionData, CaptionEncoder
from train.models.base import ExpertInput, TextInput
from train.models.config import ExpertSpec

if TYPE_CHECKING:
    from train.extra import ExtraSources
    from train.sampling import Sampled, Sampler

__all__ = ['ExpertData', 'SplitData', 'TrainFeed', 'aggregate', 'aggregated_arrays', 'caption_groups', 'load_split',
           'open_expert_store', 'read_aggregated', 'sampled_ids', 'split_captions', 'store_rows']


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


def aggregated_arrays(spec: ExpertSpec) -> tuple[str, ...]:
    """The store arrays `aggregate` uses for `spec` (`ExpertStore.read`'s `arrays`): a pooled
    expert has no use for timestamps, and no model reads ids or errors."""
    return ('features', 'lengths', 'available', *(() if spec.aggregation in ('mean', 'max') else ('timestamps',)))


#: rows `aggregate` makes float32 at a time: its temporaries are (videos, AGGREGATE_ROWS, D) float32,
#: never two copies of every video padded to the longest (a unit of 512 videos beside an hours-long one)
AGGREGATE_ROWS = 128

Blocks = Iterator[tuple[int, np.ndarray, np.ndarray | None]]  # (first row, features, timestamps) of rows read


def aggregate(spec: ExpertSpec, rows: ExpertRows) -> ExpertData:
    """Videos' rows from a store (`ExpertStore.read`, at least `aggregated_arrays(spec)`) as the
    model asks for them (`spec.aggregation`): the one place where rows become model inputs, for
    data read whole and data streamed."""
    width = rows.features.shape[1]
    blocks = ((lo, rows.features[:, lo:lo + AGGREGATE_ROWS],
               None if rows.timestamps is None else rows.timestamps[:, lo:lo + AGGREGATE_ROWS])
              for lo in range(0, width, AGGREGATE_ROWS))
    return _aggregate(spec, rows, width, blocks)


def _aggregate(spec: ExpertSpec, rows: ExpertRows, width: int, blocks: Blocks) -> ExpertData:
    """`aggregate` of `rows` whose features and timestamps come a row block at a time (`blocks`,
    `width` rows in all); every block is consumed (a store checks its sums at the end)."""
    lengths, available, (n, _, d) = rows.lengths, rows.available.astype(bool), rows.features.shape
    if d != spec.dim:
        raise StoreError(f'{spec.name}: the store has D={d} but the model config says dim={spec.dim}')
    # rows come padded to the longest video read; what the model gets depends on the store's T only
    t = rows.max_rows or width
    if spec.aggregation in ('mean', 'max'):
        agg = None
        for lo, feats, _ in blocks:
            f = _float32(feats)
            valid = ((lo + np.arange(f.shape[1]))[None, :] < lengths[:, None])[..., None]
            if spec.aggregation == 'mean':
                f *= valid  # in place: no copy for the mask
                # summed row after row as one sum over every row would be: the same float32 result
                agg = f.sum(1) if agg is None else np.concatenate([agg[:, None], f], 1).sum(1)
            else:
                np.copyto(f, -np.inf, where=~valid)  # in place, as the mean's mask
                block = f.max(1, initial=-np.inf)
                agg = block if agg is None else np.maximum(agg, block)
        if agg is None:  # width 0: no video read has rows
            agg = np.zeros((n, d), np.float32)
        if spec.aggregation == 'mean':
            agg = agg / np.maximum(lengths, 1)[:, None]
        else:
            agg[lengths == 0] = 0.0
        return ExpertData(agg.astype(np.float32, copy=False), available)
    keep = min(spec.max_tokens, t)
    width = max(width, keep)  # fewer rows than kept: zero rows after them
    x = np.zeros((n, keep, d), np.float32)
    times = np.zeros((n, keep, 2), rows.timestamps.dtype)
    if spec.aggregation == 'tokens' and spec.sample == 'uniform' and t > keep:
        # Evenly spaced rows over each video's own length, in time order (MMT samples 30 of them).
        pos = np.minimum((np.arange(keep)[None, :] * np.maximum(lengths, keep)[:, None]) // keep, width - 1)
    else:
        pos = np.broadcast_to(np.arange(keep)[None, :], (n, keep))
    for lo, feats, block_times in blocks:  # only the row blocks that hold kept positions are copied
        at, k = np.nonzero((pos >= lo) & (pos < lo + feats.shape[1]))
        x[at, k] = feats[at, pos[at, k] - lo]
        times[at, k] = block_times[at, pos[at, k] - lo]
    return ExpertData(x, available, pos < lengths[:, None], times)


def _float32(a: np.ndarray) -> np.ndarray:
    """A float32 copy of `a`, converted by torch: numpy converts float16 in software, 20x slower on
    this CPU (4 ms against 0.2 ms for a chunk of 64 x 16 x 2048), which made it most of a streamed
    chunk's aggregation. The values are the same: float16 -> float32 is exact."""
    return torch.from_numpy(np.ascontiguousarray(a)).to(torch.float32, copy=True).numpy()


@dataclasses.dataclass
class SplitData:
    """One part (train, val or test) of a split: its videos' experts and captions."""

    video_ids: list[str]
    experts: dict[str, ExpertData]
    captions: CaptionData
    caption_video: np.ndarray  # (C,) the video of each caption
    query: np.ndarray  # (Q,) indices of the captions that are evaluation queries
    random_weights: list[str]
    sampled: Sampled | None = None  # a training part drawn by window or segment (`train.sampling`)
    #: a training part with extra sources' items after its own videos (`train.extra.mix_in`): (its
    #: own videos, what each epoch draws from the items after them)
    mixed: tuple[int, ExtraSources] | None = None

    def __len__(self) -> int:
        return len(self.video_ids)

    @property
    def epoch_size(self) -> int:
        """Training samples an epoch: every video, and the extra sources' draws."""
        return len(self) if self.mixed is None else self.mixed[0] + self.mixed[1].size

    @functools.cached_property
    def captions_by_video(self) -> list[np.ndarray]:
        """Each video's caption indices, grouped once (one sort, not a scan per video)."""
        order, bounds = caption_groups(self.caption_video, len(self))
        return [order[bounds[v]:bounds[v + 1]] for v in range(len(self))]

    def videos(self, idx: np.ndarray) -> dict[str, ExpertInput]:
        return {name: e.batch(idx) for name, e in self.experts.items()}

    def video_batches(self, batch: int) -> Iterator[dict[str, ExpertInput]]:
        """Every video in order, `batch` at a time (evaluation; a streamed part gives a chunk at a time)."""
        for s in range(0, len(self), batch):
            yield self.videos(np.arange(s, min(s + batch, len(self))))

    def epoch_plan(self, batch_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """An epoch's batches as (steps, batch_size) video and caption indices: the videos shuffled,
        one randomly chosen caption each, the last short batch dropped (every step has the same
        shapes, which a captured step needs). A `mixed` part shuffles its own videos with the items
        that the epoch draws from its extra sources."""
        if self.mixed is None:
            order = rng.permutation(len(self))
        else:
            own, extra = self.mixed  # the draw first: a streamed part draws the same (`train.stream`)
            pool = np.concatenate([np.arange(own), extra.draw(rng)])
            order = pool[rng.permutation(len(pool))]
        steps = len(order) // batch_size
        videos = order[:steps * batch_size].reshape(steps, batch_size)
        if self.sampled is not None:  # no caption to choose: each video's sample makes its own
            return videos, np.zeros_like(videos)
        by_video = self.captions_by_video
        # one draw per video in batch order, as a scalar call: a vectorised draw gives other numbers
        caps = np.array([c[rng.integers(len(c))] for c in (by_video[v] for v in videos.reshape(-1))], np.int64)
        return videos, caps.reshape(videos.shape)

    def train_batches(self, batch_size: int, rng: np.random.Generator) -> Iterator[tuple[dict[str, ExpertInput], TextInput]]:
        """The batches of `epoch_plan`, gathered on the host."""
        for videos, caps in zip(*self.epoch_plan(batch_size, rng)):
            yield self.videos(videos), self.captions.batch(caps)

    def train_nbytes(self) -> int:
        """Bytes of the training inputs as `TrainFeed` holds them on a device."""
        arrays = [a for e in self.experts.values() for a in (e.x, e.available, e.mask, e.times) if a is not None]
        caps = self.captions
        return (sum(a.nbytes for a in arrays) + caps.ids.size * 8 + caps.mask.nbytes
                + (caps.vectors.nbytes if caps.vectors is not None else 0))


class TrainFeed:
    """A training split's batches on `device` (in-memory training, DESIGN.md "Growing past one machine").

    When the split fits `budget` bytes it is copied to the device once and every batch is gathered
    there from the epoch's index tensors (copied once per epoch): a step costs no host work and no
    copy. Otherwise batches are gathered on the host and copied from pinned memory without waiting,
    so the host prepares the next batch while the device runs the step.
    """

    def __init__(self, data: SplitData, device: torch.device, budget: int, rank: int = 0, world: int = 1) -> None:
        self.data, self.device = data, torch.device(device)
        self.rank, self.world = rank, world
        # sampled windows are cut on the host, a batch at a time
        self.on_device = data.sampled is None and data.train_nbytes() <= budget
        self._experts: dict[str, ExpertInput] = {}
        if self.on_device:
            put = lambda a: None if a is None else torch.from_numpy(np.ascontiguousarray(a)).to(self.device)  # noqa: E731
            self._experts = {n: ExpertInput(put(e.x).float(), put(e.available), put(e.mask), put(e.times))
                             for n, e in data.experts.items()}
            caps = data.captions
            self._ids, self._mask, self._vectors = put(caps.ids.astype(np.int64)), put(caps.mask), put(caps.vectors)

    def epoch(self, batch_size: int, rng: np.random.Generator, skip: int = 0
              ) -> Iterator[tuple[dict[str, ExpertInput], TextInput]]:
        """The batches of `SplitData.epoch_plan` on the device, from its `skip`-th on (a resumed
        epoch: the plan is drawn whole, the batches before are not built); of `world` ranks, rank
        `rank`'s share of each (`batch_size` is the global batch: `train.distributed`)."""
        sampled = self.data.sampled
        key = sampled.epoch_key(rng) if sampled is not None else None
        videos, caps = self.data.epoch_plan(batch_size, rng)
        videos, caps = videos[skip:], caps[skip:]
        if self.world > 1:  # every rank draws the same plan and takes its own columns
            local = batch_size // self.world
            videos, caps = (a[:, self.rank * local:(self.rank + 1) * local] for a in (videos, caps))
        if not self.on_device:
            for v, c in zip(videos, caps):
                if sampled is None:
                    video, text = self.data.videos(v), self.data.captions.batch(c)
                else:  # the videos' samples in place of their captions c
                    video, text = sampled.videos(v, key), sampled.text([self.data.video_ids[i] for i in v], key)
                yield ({n: ExpertInput(*(_copy(a, self.device) for a in (e.x, e.available, e.mask, e.times)))
                        for n, e in video.items()},
                       TextInput(_copy(text.x, self.device), _copy(text.mask, self.device)))
            return
        for v, c in zip(_put(videos, self.device), _put(caps, self.device)):
            yield self.videos(v), self.captions(c)

    def videos(self, idx: torch.Tensor) -> dict[str, ExpertInput]:
        """Videos `idx` (a tensor on the device), gathered there (`on_device` only)."""
        return {n: ExpertInput(*(None if a is None else a[idx] for a in (e.x, e.available, e.mask, e.times)))
                for n, e in self._experts.items()}

    def captions(self, idx: torch.Tensor) -> TextInput:
        """Captions `idx` (a tensor on the device), gathered there (`on_device` only)."""
        ids = self._ids[idx]
        return TextInput(self._vectors[ids] if self._vectors is not None else ids, self._mask[idx])


def _put(a: np.ndarray, device: torch.device) -> torch.Tensor:
    return _copy(torch.from_numpy(np.ascontiguousarray(a)), device)


def _copy(t: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    """A host tensor on `device`; to CUDA from pinned memory, without waiting for the copy (a
    pageable copy makes the host wait for the device)."""
    if t is None or device.type != 'cuda':
        return None if t is None else t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def caption_groups(caption_video: np.ndarray, n_videos: int) -> tuple[np.ndarray, np.ndarray]:
    """(order, bounds): the captions of video v are ``order[bounds[v]:bounds[v + 1]]``."""
    order = np.argsort(caption_video, kind='stable')
    return order, np.searchsorted(caption_video[order], np.arange(n_videos + 1))


def split_captions(manifest: Manifest, split: str, part: str, test_queries: bool = True
                   ) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """(video ids, caption texts in the manifest's order, each caption's video, query indices).

    Paragraph splits (DiDeMo, ActivityNet) join a video's captions into one."""
    s = manifest.split(split)
    ids = list(s.ids(part))
    if not ids:
        raise StoreError(f'{manifest.name} split {split} has no {part} videos')
    texts, owner, query = [], [], []
    captions = s.captions(manifest, part)
    for v, vid in enumerate(ids):
        caps = list(captions.get(vid, ()))
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
    return ids, texts, np.asarray(owner), np.asarray(query)


def open_expert_store(features_root: Path, manifest: Manifest, expert: str) -> tuple[ExpertStore, bool]:
    """(the store of `expert` on `manifest`'s dataset, whether its weights were random); a missing
    store is a StoreError that says how to extract it."""
    path = store_path(features_root, manifest.name, expert)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always', RandomWeightsWarning)
        try:
            store = open_store(path)
        except StoreError as err:
            raise StoreError(f'{err}; extract it first: python -m extract --dataset {shlex.quote(manifest.argument)} '
                             f'--expert {expert}') from None
    return store, bool(caught)


def store_rows(store: ExpertStore, ids: list[str], spec: ExpertSpec, where: str) -> np.ndarray:
    """The store rows of `ids`, checked as `load_split` checks what it reads: every id present,
    none pending, the model's dimension."""
    if int(store.attrs['feature_dim']) != spec.dim:
        raise StoreError(f'{spec.name}: the store has D={store.attrs["feature_dim"]} but the model config says '
                         f'dim={spec.dim}')
    index = {v: i for i, v in enumerate(store.video_ids)}
    missing = [v for v in ids if v not in index]
    if missing:
        raise StoreError(f'{len(missing)} video ids not in {store.path}, e.g. {missing[:3]}')
    rows = np.asarray([index[v] for v in ids], np.int64)
    pending = int((store.status()[rows] == 0).sum())
    if pending:
        raise StoreError(f'{store.path} has {pending} pending videos in {where}: finish the extraction first')
    return rows


def read_aggregated(spec: ExpertSpec, store: ExpertStore, rows: np.ndarray) -> ExpertData:
    """`aggregate` of the store `rows`, read a unit of work at a time and a row block at a time
    (`ExpertStore.read_blocks`): what is held at once is one row block of a unit, not its rows
    padded to its longest video (a store keeps every second of hours-long videos)."""
    units = rows // store.unit_size
    order = np.argsort(units, kind='stable')
    cuts = np.flatnonzero(np.diff(units[order])) + 1
    parts = []
    for at in np.split(order, cuts):
        if len(at):  # a row block at a time: one unit's rows are never padded to its longest video
            head, blocks = store.read_blocks(rows[at])
            parts.append(_aggregate(spec, head, int(np.clip(head.lengths, 0, store.max_rows).max(initial=0)), blocks))
    back = np.argsort(order, kind='stable')

    def whole(arrays: list[np.ndarray | None]) -> np.ndarray | None:
        return None if arrays[0] is None else np.concatenate(arrays)[back]

    if not parts:
        return aggregate(spec, store.read(rows=rows, arrays=aggregated_arrays(spec)))
    return ExpertData(*(whole([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(ExpertData)))


def load_split(manifest: Manifest, split: str, part: str, features_root: Path, experts: tuple[ExpertSpec, ...],
               captions: CaptionEncoder, test_queries: bool = True, sampler: Sampler | None = None) -> SplitData:
    """Read a split part's stores and captions.

    Args:
        test_queries: use the split's evaluation queries (e.g. 1k-A's one JSFusion caption per
            video); else every caption is kept (training).
        sampler: draw training samples by window or segment (`train.sampling`): the part keeps
            its store rows, and its captions are the samples'.
    """
    if sampler is not None:
        ids, texts, owner, query = sampled_ids(manifest, split, part)
    else:
        ids, texts, owner, query = split_captions(manifest, split, part, test_queries)
    data: dict[str, ExpertData] = {}
    raw: dict[str, ExpertRows] = {}
    random_weights = []
    for spec in experts:
        store, random = open_expert_store(features_root, manifest, spec.name)
        if random:
            random_weights.append(spec.name)
        rows = store_rows(store, ids, spec, f'{split}/{part}')
        if sampler is not None:
            raw[spec.name] = store.read(rows=rows)
        else:
            data[spec.name] = read_aggregated(spec, store, rows)
    out = SplitData(ids, data, captions.encode(texts), owner, query, random_weights)
    if sampler is not None:
        from train.sampling import Sampled

        out.sampled = Sampled(sampler, captions, experts, raw)
    return out


def sampled_ids(manifest: Manifest, split: str, part: str) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """`split_captions` of a part drawn by a `train.sampling.Sampler`: its videos and no captions
    (the samples make them; HowTo100M's 100M ASR segments are never listed)."""
    ids = list(manifest.split(split).ids(part))
    if not ids:
        raise StoreError(f'{manifest.name} split {split} has no {part} videos')
    return ids, [], np.zeros(0, np.int64), np.zeros(0, np.int64)
