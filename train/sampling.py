"""Training samples cut out of long videos by their timed captions (MMT sec. 4.2, support-set appendix 6.3).

``data.sample: window`` (MMT's HowTo100M pretraining): a video, then `window_words` consecutive
words of its timed captions (across segments, in time order), then the `window_seconds` of its
features closest in time to those words. ``data.sample: segment`` (the support-set model's): a
video, then one of its timed captions (an ASR segment) and the features of that caption's own
seconds. ``video`` (the default) is neither: whole videos, one caption each (`train.data`).

A video's sample is drawn from a generator seeded by (the epoch's key, a hash of the video's id):
it depends neither on the order of the videos, nor on the DataLoader workers that read them, nor
on whether the part is in memory or streamed. `Sampler.aggregate` cuts each video's window out of
its store rows and hands them to `train.data.aggregate`, the hook both paths call; the words are
encoded in the main process (`Sampled.text`), a batch at a time.
"""
from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Mapping, Sequence

import numpy as np

from shared.datasets import DatasetError, Manifest
from shared.datasets.manifest import CaptionTimes
from shared.store import ExpertRows
from shared.text import remove_stop_words
from train.captions import CaptionEncoder
from train.config import DataCfg
from train.data import ExpertData, aggregate
from train.models.base import ExpertInput, TextInput
from train.models.config import ExpertSpec

__all__ = ['Sample', 'Sampler', 'Sampled', 'make_sampler', 'take_rows']


@dataclasses.dataclass(frozen=True)
class Sample:
    """One video's sample: its caption and the (start, end) seconds that caption covers."""

    text: str
    start: float
    end: float


class Sampler:
    """Draws window or segment samples (`mode`) of the videos of a dataset with timed captions.

    Picklable without the caption encoder, so that DataLoader workers cut the same windows as the
    main process encodes the words of.
    """

    def __init__(self, mode: str, captions: Mapping[str, tuple[str, ...]], times: CaptionTimes, words: int,
                 seconds: float, stop_words: bool) -> None:
        self.mode, self.captions, self.times = mode, captions, times
        self.words, self.seconds, self.stop_words = words, seconds, stop_words

    def draw(self, video_id: str, key: int) -> Sample:
        """The sample of `video_id` in the epoch of `key`."""
        texts, times = self.captions[video_id], self.times[video_id]
        rng = np.random.default_rng([key, zlib.crc32(video_id.encode('utf-8'))])
        if self.mode == 'segment':
            k = int(rng.integers(len(texts)))
            return Sample(texts[k], *times[k])
        words: list[str] = []
        segment: list[int] = []
        for k in sorted(range(len(texts)), key=lambda k: times[k][0]):  # words in time order
            w = (remove_stop_words(texts[k]) if self.stop_words else texts[k]).split()
            words += w
            segment += [k] * len(w)
        if not words:  # only stop words: an empty caption over the first segment
            first = min(range(len(times)), key=lambda k: times[k][0])
            return Sample('', *times[first])
        start = int(rng.integers(max(1, len(words) - self.words + 1)))
        chosen = set(segment[start:start + self.words])
        return Sample(' '.join(words[start:start + self.words]), min(times[k][0] for k in chosen),
                      max(times[k][1] for k in chosen))

    def window(self, sample: Sample, last_end: float) -> tuple[float, float]:
        """The (start, end) seconds of features kept for `sample` of a video whose rows end at
        `last_end`: a segment's own seconds; or the `seconds` closest to the window's words,
        centred on them and moved back inside the video where it would pass its end."""
        if self.mode == 'segment':
            return sample.start, sample.end
        lo = (sample.start + sample.end - self.seconds) / 2
        lo = max(0.0, min(lo, last_end - self.seconds))
        return lo, lo + self.seconds

    def aggregate(self, spec: ExpertSpec, rows: ExpertRows, key: int) -> ExpertData:
        """`rows` (videos read from a store) cut to each video's window, then aggregated as
        `train.data.aggregate` does for whole videos. A row is kept when its middle lies in the
        window; a window shorter than a row keeps the rows it overlaps. Times are counted from
        the window's start (a window deep into a long video uses the first temporal embeddings,
        as the fine-tuning videos do); a video with no row in its window is unavailable. A row
        whose time is unknown (negative: features imported without times) cannot be placed in a
        window and is always kept, its time still unknown: such an expert gives its whole video to
        every window (dropping its rows made every video unavailable for it)."""
        feats, times, lengths = rows.features, rows.timestamps, rows.lengths
        n, t = feats.shape[:2]
        valid = np.arange(t)[None, :] < lengths[:, None]
        last_end = np.where(lengths > 0, times[np.arange(n), np.maximum(lengths - 1, 0), 1], 0.0)
        lo, hi = np.array([self.window(self.draw(str(v), key), float(e))
                           for v, e in zip(rows.video_ids, last_end)], np.float64).reshape(n, 2).T
        lo_, hi_ = lo[:, None], hi[:, None]
        middle = times.mean(-1)
        keep = valid & (((middle >= lo_) & (middle < hi_)) | (times[..., 0] < 0))
        overlap = valid & (times[..., 0] < hi_) & ((times[..., 1] > lo_) | (times[..., 0] >= lo_))
        short = ~keep.any(1)
        keep[short] = overlap[short]
        count = keep.sum(1)
        order = np.argsort(~keep, axis=1, kind='stable')[:, :max(1, int(count.max(initial=0)))]
        kept = np.arange(order.shape[1])[None, :] < count[:, None]
        cut_times = np.take_along_axis(times, order[..., None], 1)
        known = cut_times >= 0  # a negative time is unknown (imported features): it stays so
        cut_times = np.where(known, np.maximum(cut_times - lo[:, None, None], 0.0), cut_times).astype(np.float32)
        cut_feats = np.where(kept[..., None], np.take_along_axis(feats, order[..., None], 1), 0)
        cut = dataclasses.replace(rows, features=cut_feats,
                                  timestamps=np.where(kept[..., None], cut_times, 0).astype(np.float32),
                                  lengths=count.astype(lengths.dtype), available=rows.available & (count > 0))
        return aggregate(spec, cut)


def make_sampler(data: DataCfg, manifest: Manifest, video_ids: Sequence[str]) -> Sampler | None:
    """The sampler of ``data.sample`` for training on `video_ids` of `manifest` (None for ``video``).

    Raises:
        DatasetError: window or segment sampling of videos without timed captions.
    """
    if data.sample == 'video':
        return None
    times = manifest.caption_times
    # a lazy index (howto100m) holds only videos with timed captions; a dict is checked video by video
    untimed = [v for v in video_ids if v not in times] if isinstance(times, dict) or not times else []
    if untimed:
        raise DatasetError(f'data.sample: {data.sample} needs timed captions, but {len(untimed)} of the '
                           f'{len(video_ids)} training videos of {manifest.name} have none (e.g. {untimed[0]!r}): '
                           'train on a dataset whose captions carry their seconds (howto100m), or set '
                           'data.sample: video')
    return Sampler(data.sample, manifest.captions, times, data.window_words, data.window_seconds,
                   data.stop_words == 'remove')


def take_rows(rows: ExpertRows, idx: np.ndarray) -> ExpertRows:
    """The videos `idx` of `rows`."""
    return dataclasses.replace(rows, **{f.name: getattr(rows, f.name)[idx] for f in dataclasses.fields(rows)
                                        if isinstance(getattr(rows, f.name), np.ndarray)})


@dataclasses.dataclass
class Sampled:
    """A training part drawn by a `Sampler`: the windows are cut when a batch is made, so the
    part holds its videos' store rows (in memory) or reads them (streamed), not aggregates."""

    sampler: Sampler
    encoder: CaptionEncoder
    specs: tuple[ExpertSpec, ...]
    rows: dict[str, ExpertRows] = dataclasses.field(default_factory=dict)  # in memory only

    @staticmethod
    def epoch_key(rng: np.random.Generator) -> int:
        """The key of an epoch's samples, drawn first from the epoch's generator (seeded by (seed, epoch))."""
        return int(rng.integers(1 << 62))

    def text(self, video_ids: Sequence[str], key: int) -> TextInput:
        """The encoded captions of the videos' samples."""
        texts = [self.sampler.draw(v, key).text for v in video_ids]
        return self.encoder.encode(texts).batch(np.arange(len(texts)))

    def videos(self, idx: np.ndarray, key: int) -> dict[str, ExpertInput]:
        """The in-memory videos `idx`, each cut to its sample's window."""
        every = np.arange(len(idx))
        return {s.name: self.sampler.aggregate(s, take_rows(self.rows[s.name], idx), key).batch(every)
                for s in self.specs}
