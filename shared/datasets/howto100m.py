"""HowTo100M (Miech et al. 2019): narrated videos with timed ASR captions, for pretraining.

Files under ``{data_root}/howto100m/``, as released: ``HowTo100M_v1.csv`` (video_id, category_1,
category_2, rank, task_id); ``caption.json`` (``{video_id: {"start": [...], "end": [...], "text":
[...]}}``, stop words removed) or ``raw_caption.json`` (the same, words kept), picked by option
``captions``; videos in ``videos/{video_id}.{mp4,webm,mkv}``.

Every download is partial: a listed video without a file is skipped and counted, not an error.
Split ``pretrain`` (all in train) holds every video with a file and captions; the manifest's
captions and their (start, end) seconds are read lazily from an index built beside the caption
file (`shared.datasets.caption_index`).
"""
from __future__ import annotations

import csv
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from shared.datasets import DATASETS
from shared.datasets.caption_index import load_caption_index
from shared.datasets.manifest import DatasetError, Manifest, Split, read_text, require_files

__all__ = ['howto100m', 'VIDEO_LIST', 'CAPTION_FILES']

VIDEO_LIST = 'HowTo100M_v1.csv'
#: the two caption files of the release: stop words removed (the default), or kept
CAPTION_FILES = ('caption.json', 'raw_caption.json')
_EXTENSIONS = ('.mp4', '.webm', '.mkv')


@DATASETS.register()
def howto100m(root: Path, captions: str = CAPTION_FILES[0]) -> Manifest:
    """HowTo100M manifest: listed videos that have a file, sorted by id; split ``pretrain``.

    Args:
        captions: which caption file to read, ``caption.json`` or ``raw_caption.json``.
    """
    if captions not in CAPTION_FILES:
        raise DatasetError(f'howto100m option captions={captions!r}: use one of {", ".join(CAPTION_FILES)}')
    video_list, caption_file = require_files(root, (VIDEO_LIST, captions), 'HowTo100M file',
                                             'Download them from the HowTo100M release')
    listed = sorted(set(_listed_ids(video_list)))
    files = _video_files(root / 'videos')
    ids = tuple(v for v in listed if v in files)
    index = load_caption_index(caption_file, f'a HowTo100M {captions} file')
    pretrain = tuple(v for v in ids if index.row(v) is not None)
    notes = (f'listed in {VIDEO_LIST}: {len(listed)}; skipped for want of a file in videos/: {len(listed) - len(ids)}',
             f'videos with a file but no captions in {captions} (not in pretrain): {len(ids) - len(pretrain)}',
             f'{captions}: {len(index)} videos with captions, {index.without_captions} with only empty ones '
             f'(index {index.directory.name})')
    paths = _VideoPaths(root / 'videos', ids, files)
    return Manifest('howto100m', root, ids, paths, index.captions,  # type: ignore[arg-type]
                    {'pretrain': Split('pretrain', pretrain, (), ())}, caption_times=index.times, notes=notes)


def _listed_ids(path: Path) -> Iterator[str]:
    """The video_id column of HowTo100M_v1.csv."""
    rows = csv.reader(read_text(path, 'the HowTo100M video list').splitlines())
    header = next(rows, [])
    if 'video_id' not in header:
        raise DatasetError(f'{path}: not the HowTo100M video list (no video_id column in its first line '
                           f'{",".join(header)[:80]!r}): put {VIDEO_LIST} of the release there')
    column = header.index('video_id')
    for n, row in enumerate(rows, start=2):
        if len(row) <= column or not row[column].strip():
            raise DatasetError(f'{path}:{n}: no video_id: put {VIDEO_LIST} of the release there')
        yield row[column].strip()


def _video_files(videos: Path) -> dict[str, str]:
    """video id -> extension of its file under `videos` (the first of mp4, webm, mkv), one listing
    of the folder rather than a look-up per video (1.2M on a cluster file system)."""
    found: dict[str, str] = {}
    try:
        entries = list(os.scandir(videos))
    except FileNotFoundError:
        return found  # no video downloaded yet: every listed one is counted as missing
    rank = {e: k for k, e in enumerate(_EXTENSIONS)}
    for e in entries:
        stem, ext = os.path.splitext(e.name)
        if ext in rank and e.is_file() and rank[ext] < rank.get(found.get(stem, ''), len(rank)):
            found[stem] = ext
    return found


class _VideoPaths(Sequence[Path]):
    """The manifest's paths, made when asked: a million Path objects would cost ~0.5 GB. Every
    name comes from a listing of `videos`, so none leaves it."""

    def __init__(self, videos: Path, ids: tuple[str, ...], files: dict[str, str]) -> None:
        self.videos, self.ids = videos, ids
        self.ext = bytes(_EXTENSIONS.index(files[v]) for v in ids)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        return self.videos / (self.ids[i] + _EXTENSIONS[self.ext[i]])
