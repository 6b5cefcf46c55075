"""Training on several sources (MEE sec. 4.2): a run's videos mixed with items of other datasets
(``data.extra``), e.g. COCO's captioned images, "videos without motion and sound".

MEE sec. 4.2: "for each epoch, we randomly inject image-caption samples such that the ratio of
image-caption samples to video-caption samples is set to a fixed sampling rate: alpha". Each
epoch draws round(rate x the run's training videos) items of each extra source's training part
(`ExtraSources.draw`, from the epoch's generator: a function of the seed and the epoch, so a
resumed run draws the same), and they are shuffled into the batches with the run's videos.

An extra source's items are shaped as the run's own videos (the same experts, dimensions and
rows), so every model takes them unchanged: an expert a source has no store for, or that skipped
an item (clip, audio and speech experts on a still image), is unavailable for it (``available``
False, zero features), as a missing expert is for any video, and the per-pair mixture of the
models handles it. Extra sources are held in memory (aggregated: a few KB an item), also when the
run's own training part is streamed from its stores (`train.stream`).
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np

from shared.datasets import Manifest, load_manifest
from shared.store import StoreError, open_store, store_path
from train.captions import CaptionData, CaptionEncoder
from train.config import DataCfg, ExtraCfg
from train.data import ExpertData, SplitData, open_expert_store, read_aggregated, split_captions, store_rows
from train.models.config import ExpertSpec

_logger = logging.getLogger(__name__)

__all__ = ['ExtraSources', 'extra_manifests', 'extra_train_texts', 'load_extra', 'load_source', 'mix_in',
           'concat_captions', 'token_widths']


@dataclasses.dataclass
class ExtraSources:
    """The extra sources' training items, concatenated in `data` (source after source), and what
    an epoch draws from each: ``(first item, items, drawn a epoch)``."""

    data: SplitData
    ranges: list[tuple[int, int, int]]

    @property
    def size(self) -> int:
        """Items drawn an epoch, of every source."""
        return sum(take for _, _, take in self.ranges)

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        """An epoch's items (indices into `data`): of each source, `take` at random, without
        replacement when it has that many."""
        picks = [start + rng.choice(count, take, replace=take > count) for start, count, take in self.ranges]
        return np.concatenate(picks).astype(np.int64) if picks else np.zeros(0, np.int64)


def extra_manifests(cfg: DataCfg, data_root: Path) -> list[tuple[ExtraCfg, Manifest]]:
    """Each ``data.extra`` source with its dataset's manifest (its split checked)."""
    out = []
    for extra in cfg.extra:
        manifest = load_manifest(extra.dataset, data_root)
        manifest.split(extra.split)  # an unknown split: the dataset's own one-line error
        out.append((extra, manifest))
    return out


def extra_train_texts(sources: list[tuple[ExtraCfg, Manifest]]) -> list[str]:
    """The extra sources' training captions (a ``words`` tokenizer is fitted on them as well)."""
    return [t for extra, m in sources for t in split_captions(m, extra.split, 'train', False)[1]]


def token_widths(features_root: Path, dataset: str, experts: tuple[ExpertSpec, ...]) -> dict[str, int]:
    """Rows per item of each row-keeping expert (vlad, tokens), as the run's own stores give them
    (`train.data.aggregate`): an extra source's items are cut or padded to them."""
    return {spec.name: min(spec.max_tokens, int(open_store(store_path(features_root, dataset, spec.name),
                                                           warn_random=False).attrs['max_rows']))
            for spec in experts if spec.aggregation not in ('mean', 'max')}


def _absent(spec: ExpertSpec, n: int, width: int | None) -> ExpertData:
    """`spec` unavailable for `n` items (no store of it for their source)."""
    if width is None:
        return ExpertData(np.zeros((n, spec.dim), np.float32), np.zeros(n, bool))
    return ExpertData(np.zeros((n, width, spec.dim), np.float32), np.zeros(n, bool), np.zeros((n, width), bool),
                      np.zeros((n, width, 2), np.float32))


def _pad(e: ExpertData, width: int) -> ExpertData:
    """Rows of `e` padded to `width` (masked out, zero times)."""
    extra = width - e.x.shape[1]
    if extra <= 0:
        return e
    grow = lambda a: np.pad(a, [(0, 0), (0, extra)] + [(0, 0)] * (a.ndim - 2))  # noqa: E731
    return ExpertData(grow(e.x), e.available, grow(e.mask), grow(e.times).astype(np.float32, copy=False))


def load_source(extra: ExtraCfg, manifest: Manifest, part: str, features_root: Path, experts: tuple[ExpertSpec, ...],
                captions: CaptionEncoder, widths: dict[str, int]) -> SplitData:
    """An extra source's `part` in memory, shaped as the run's videos (`widths`: `token_widths`);
    an expert without a store for the source is unavailable for all its items.

    Raises:
        StoreError: a store of the source has another dimension than the model's expert, lacks
            some of its items or is unfinished (named with the source).
    """
    ids, texts, owner, query = split_captions(manifest, extra.split, part, part == 'test')
    missing = [s.name for s in experts if not store_path(features_root, manifest.name, s.name).exists()]
    if len(missing) == len(experts):  # not extracted, or another features root: every item would be empty
        raise StoreError(f'data.extra {extra.name}: no store of any of the run\'s experts '
                         f'({", ".join(missing)}) under {features_root / manifest.name}: extract them first')
    if missing and part == 'train':
        _logger.info('data.extra %s: no store of %s; unavailable for its items', extra.name, ', '.join(missing))
    data, random = {}, []
    for spec in experts:
        width = widths.get(spec.name)
        if spec.name in missing:
            data[spec.name] = _absent(spec, len(ids), width)
            continue
        store, was_random = open_expert_store(features_root, manifest, spec.name)
        if was_random:
            random.append(spec.name)
        try:
            rows = store_rows(store, ids, spec, f'{extra.split}/{part}')
        except StoreError as err:
            raise StoreError(f'data.extra {extra.name}: {err} (an extra source\'s experts must match the '
                             'run\'s own)') from None
        read = dataclasses.replace(spec, max_tokens=width) if width is not None else spec
        e = read_aggregated(read, store, rows)
        data[spec.name] = e if width is None else _pad(e, width)
    return SplitData(ids, data, captions.encode(texts), owner, query, random)


def load_extra(sources: list[tuple[ExtraCfg, Manifest]], primary_videos: int, features_root: Path,
               dataset: str, experts: tuple[ExpertSpec, ...], captions: CaptionEncoder,
               report: bool = True) -> ExtraSources | None:
    """The extra sources' training parts, each drawn round(rate x `primary_videos`) times an epoch
    (`report`: print so, on the rank that prints)."""
    if not sources:
        return None
    widths = token_widths(features_root, dataset, experts)
    parts, ranges, start = [], [], 0
    for extra, manifest in sources:
        part = load_source(extra, manifest, 'train', features_root, experts, captions, widths)
        take = int(round(extra.rate * primary_videos))
        if report:
            print(f'data.extra {extra.name}: {len(part)} training items, {take} drawn each epoch (rate {extra.rate} x '
                  f'{primary_videos} training videos)')
        parts.append(part)
        ranges.append((start, len(part), take))
        start += len(part)
    return ExtraSources(_concat(parts), ranges)


def concat_captions(parts: list[CaptionData]) -> CaptionData:
    """Captions of several encodings as one: word-vector indices are moved past the rows before them."""
    if parts[0].vectors is None:
        return CaptionData(np.concatenate([p.ids for p in parts]), np.concatenate([p.mask for p in parts]))
    ids, rows, offset = [], [parts[0].vectors[:1]], 0
    for p in parts:
        ids.append(np.where(p.ids > 0, p.ids + offset, 0).astype(p.ids.dtype))
        rows.append(p.vectors[1:])
        offset += len(p.vectors) - 1
    return CaptionData(np.concatenate(ids), np.concatenate([p.mask for p in parts]), np.concatenate(rows))


def _concat(parts: list[SplitData]) -> SplitData:
    """Split parts of the same experts and widths as one (their captions' videos renumbered)."""
    if len(parts) == 1:
        return parts[0]
    starts = np.cumsum([0] + [len(p) for p in parts])
    caps = np.cumsum([0] + [len(p.captions) for p in parts])
    experts = {name: ExpertData(*(None if getattr(parts[0].experts[name], f.name) is None
                                  else np.concatenate([getattr(p.experts[name], f.name) for p in parts])
                                  for f in dataclasses.fields(ExpertData)))
               for name in parts[0].experts}
    return SplitData([v for p in parts for v in p.video_ids], experts, concat_captions([p.captions for p in parts]),
                     np.concatenate([p.caption_video + s for p, s in zip(parts, starts)]),
                     np.concatenate([p.query + c for p, c in zip(parts, caps)]),
                     sorted({n for p in parts for n in p.random_weights}))


def mix_in(primary: SplitData, extra: ExtraSources) -> SplitData:
    """The run's training part and the extra sources' items as one in-memory part: its first
    ``len(primary)`` videos are the run's, each epoch takes them all and `extra.draw`'s items
    (`SplitData.epoch_plan`)."""
    joined = _concat([primary, extra.data])
    ranges = [(start + len(primary), count, take) for start, count, take in extra.ranges]  # of the joined part
    joined.mixed = (len(primary), ExtraSources(joined, ranges))
    return joined
