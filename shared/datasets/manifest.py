"""The dataset manifest: video ids in a fixed order, their paths inside a data root, captions, splits."""
from __future__ import annotations

import dataclasses
import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path

from shared.media import count_media

__all__ = ['DatasetError', 'AnnotationsMissing', 'Split', 'Manifest', 'resolve_inside', 'read_split_list',
           'require_files', 'read_text', 'read_json', 'check_dataset_name', 'VIDEO_EXTENSIONS', 'find_video',
           'OFFICIAL', 'CaptionTimes']

#: Containers the `folder` adapter (and extension look-up) recognise.
VIDEO_EXTENSIONS = ('.mp4', '.avi', '.mkv', '.webm', '.mov', '.m4v', '.mpg', '.mpeg', '.flv', '.wmv',
                    '.ts', '.3gp', '.ogv')


#: `Manifest.origin` of a manifest read from the dataset's own annotation files
OFFICIAL = 'official annotation files'


#: (start, end) seconds of each caption of a video, in the order of its captions
CaptionTimes = Mapping[str, tuple[tuple[float, float], ...]]


class DatasetError(ValueError):
    """Bad dataset input: a missing annotation file, an unknown split, a path outside the root."""


class AnnotationsMissing(DatasetError):
    """Annotation files of a dataset are not there.

    Args:
        found: those of the dataset's files that are there. When none is, the dataset may be read
            from features imported from a release instead (`imported.json`); when some are, the
            official files are incomplete, and that is an error to fix, not to fall back from.
    """

    def __init__(self, message: str, found: tuple[Path, ...]) -> None:
        super().__init__(message)
        self.found = found


def check_dataset_name(name: str) -> str:
    """`name` if it can name a dataset, else a DatasetError.

    A dataset name is a folder under the data root and under the features root, so it is one
    plain path component: letters, digits, ``.``, ``_`` and ``-``, not starting with a dot
    (``..``, ``a/b`` or an absolute path would write outside those roots).
    """
    if not isinstance(name, str) or not re.fullmatch(r'[A-Za-z0-9][A-Za-z0-9._-]{0,199}', name):
        raise DatasetError(f'dataset name {name!r} is not a plain name: use letters, digits, ".", "_" and "-" '
                           '(it names a folder under the data and features roots; no "/", ".." or absolute path), '
                           'or folder:PATH for a directory of videos')
    return name


def resolve_inside(root: Path, relative: str) -> Path:
    """`root / relative`, refusing anything that leaves `root`.

    The check is lexical (after normalising `..`), not through symlinks: a data root that is
    itself a symlink to scratch storage is normal on clusters, a `../` in an annotation is not.
    """
    if not relative or os.path.isabs(relative) or '\x00' in relative:
        raise DatasetError(f'video path {relative!r} must be relative to the data root {root}')
    root_n = os.path.normpath(os.path.abspath(root))
    full = os.path.normpath(os.path.join(root_n, relative))
    if os.path.commonpath([root_n, full]) != root_n:
        raise DatasetError(f'video path {relative!r} escapes the data root {root}')
    return Path(full)


def require_files(root: Path, names: Sequence[str], what: str, hint: str = '') -> tuple[Path, ...]:
    """The dataset's annotation files `root / name`, all checked before any is read: else an
    AnnotationsMissing naming every missing one, and carrying those found (see its `found`)."""
    paths = tuple(root / n for n in names)
    missing = [p for p in paths if not p.is_file()]
    if missing:
        found = tuple(p for p in paths if p not in missing)
        raise AnnotationsMissing(f'missing {what}: {", ".join(map(str, missing))} not found'
                                 + (f'. {hint}' if hint else ''), found)
    return paths


def read_text(path: Path, what: str) -> str:
    """An annotation file's text; one that is not UTF-8 text (binary data, another encoding) is a
    DatasetError naming it and `what` it should be, article included ('an MSR-VTT videodatainfo file')."""
    try:
        text = path.read_text(encoding='utf-8')
    except UnicodeDecodeError as err:
        raise DatasetError(f'{path}: not UTF-8 text (byte {err.start}), so not {what}: put the file of the '
                           'release there, as released (UTF-8)') from None
    if '\x00' in text:  # valid UTF-8 but binary: a CSV or text reader would read garbage rows
        raise DatasetError(f'{path}: binary data (a NUL byte), not {what}: put the file of the release there')
    return text


def read_json(path: Path, what: str) -> object:
    """An annotation file's JSON; bad text or bad JSON (nesting too deep for the parser included) is
    a DatasetError naming it (`what`: as for `read_text`)."""
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DatasetError(f'{path}: not {what} (invalid JSON at line {err.lineno}, column {err.colno}: '
                           f'{err.msg})') from None
    except RecursionError:
        raise DatasetError(f'{path}: not {what} (JSON nested too deeply to read)') from None


def read_split_list(dataset: str, name: str) -> tuple[str, ...]:
    """A split id list shipped with the package (``shared/datasets/splits/{dataset}/{name}``)."""
    ref = resources.files('shared.datasets').joinpath('splits', dataset, name)
    text = ref.read_text(encoding='utf-8')
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def find_video(videos_dir: Path, root: Path, stem: str, extensions: Sequence[str]) -> Path:
    """The first existing `stem + ext` under `videos_dir`, else the first extension's path."""
    rel_dir = os.path.relpath(videos_dir, root)
    for ext in extensions:
        p = resolve_inside(root, os.path.join(rel_dir, stem + ext))
        if p.exists():
            return p
    return resolve_inside(root, os.path.join(rel_dir, stem + extensions[0]))


@dataclasses.dataclass(frozen=True)
class Split:
    """A named protocol: train/val/test video ids and how test queries are formed.

    Args:
        name: protocol name (``full``, ``1k-A``, ...).
        train, val, test: video ids (val may be empty: 1k-A has no validation set).
        query_captions: for each test video, the caption indices that are queries
            (None: every caption is a query).
        paragraph: captions of a video are joined into one paragraph query (DiDeMo, ActivityNet).
        unavailable: when set, the split cannot be used and this says why (e.g. a missing file).
        test_captions: when set, the captions of the test videos, in place of the manifest's (ActivityNet's
            val_2 annotates val_1's videos again: split val2 tests on val_2's sentences).
    """

    name: str
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]
    query_captions: Mapping[str, tuple[int, ...]] | None = None
    paragraph: bool = False
    unavailable: str = ''
    test_captions: Mapping[str, tuple[str, ...]] | None = None

    def ids(self, part: str) -> tuple[str, ...]:
        """The video ids of `part` (train, val or test)."""
        if part not in ('train', 'val', 'test'):
            raise DatasetError(f'unknown split part {part!r} (train, val or test)')
        self.require()
        return getattr(self, part)

    def captions(self, manifest: Manifest, part: str) -> Mapping[str, tuple[str, ...]]:
        """The captions of `part`'s videos: `test_captions` for the test part where set, else the manifest's."""
        return self.test_captions if part == 'test' and self.test_captions is not None else manifest.captions

    def require(self) -> Split:
        if self.unavailable:
            raise DatasetError(f'split {self.name!r} cannot be used: {self.unavailable}')
        return self


@dataclasses.dataclass(frozen=True)
class Manifest:
    """A dataset: ids in store-row order, paths inside `root`, captions and splits.

    Args:
        origin: which files the manifest was read from, for people (the dataset's own annotation
            files, or features imported from a release).
        source: what its videos are, where the name alone does not say (a folder: its resolved
            path). Stores record it and refuse a run with another source.
        caption_times: for videos whose captions are timed (ASR segments, ActivityNet sentences,
            DiDeMo moments), ``caption_times[v][k]`` is the (start, end) seconds of ``captions[v][k]``;
            a video not in it has untimed captions.
        notes: lines for people about what was read, e.g. listed videos skipped for want of a file.
        labels: the class of each video of an action-recognition dataset (HMDB-51, UCF-101; the
            demo's photo), which `train.probe` classifies; empty for a dataset without classes.

    `captions` and `caption_times` are plain dicts, checked here, or lazy mappings over an index
    (HowTo100M's 1.2M videos), checked when the index was built.
    """

    name: str
    root: Path
    video_ids: tuple[str, ...]
    paths: tuple[Path, ...]
    captions: Mapping[str, tuple[str, ...]]
    splits: Mapping[str, Split]
    origin: str = OFFICIAL
    source: str = ''
    caption_times: CaptionTimes = dataclasses.field(default_factory=dict)
    notes: tuple[str, ...] = ()
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.video_ids) != len(self.paths):
            raise DatasetError(f'{self.name}: {len(self.video_ids)} ids but {len(self.paths)} paths')
        if len(set(self.video_ids)) != len(self.video_ids):
            raise DatasetError(f'{self.name}: duplicate video ids')
        if '' in self.video_ids:  # its path would be the videos folder itself, and a store row of no video
            raise DatasetError(f'{self.name} ({self.root}): a video id is empty; fix the annotation file')
        if isinstance(self.captions, dict):  # a lazy index was checked when built: reading it all here defeats it
            for vid, caps in self.captions.items():  # e.g. a caption given as a list: the text side needs strings
                if not isinstance(caps, tuple) or not all(isinstance(c, str) for c in caps):
                    raise DatasetError(f'{self.name} ({self.root}): the captions of video {vid!r} must be a list of '
                                       f'strings, got {caps!r:.80}: fix the annotation file to give each caption as '
                                       'a string')
        if isinstance(self.caption_times, dict):
            for vid, times in self.caption_times.items():
                if len(times) != len(self.captions.get(vid, ())) or not all(len(t) == 2 for t in times):
                    raise DatasetError(f'{self.name} ({self.root}): video {vid!r} has {len(times)} caption times for '
                                       f'{len(self.captions.get(vid, ()))} captions: each caption needs one '
                                       '(start, end) pair in the annotation file')
        known = set(self.video_ids)
        stray = [v for v in self.labels if v not in known]
        if stray:
            raise DatasetError(f'{self.name}: {len(stray)} labelled ids have no video, e.g. {stray[:3]}')
        for split in self.splits.values():
            for part in ('train', 'val', 'test'):
                extra = [v for v in getattr(split, part) if v not in known]
                if extra:
                    raise DatasetError(f'{self.name} split {split.name}/{part}: {len(extra)} ids have no '
                                       f'video in the annotations, e.g. {extra[:3]}')
                twice = next((v for v, n in Counter(getattr(split, part)).items() if n > 1), None)
                # a repeated test video is two gallery rows; a repeated train video is drawn twice as often
                if twice is not None:
                    raise DatasetError(f'{self.name} split {split.name}/{part} lists video {twice!r} twice: '
                                       'each video once, as the release lists it')

    def __len__(self) -> int:
        return len(self.video_ids)

    @property
    def argument(self) -> str:
        """How a command's --dataset names this dataset: its name, or folder:PATH for a folder of videos,
        whose stores are filed under `name` (folder-NAME-HASH), a name no command reads videos by."""
        return f'folder:{self.source}' if self.source else self.name

    def split(self, name: str) -> Split:
        """The named split, or a DatasetError listing the known ones."""
        if name not in self.splits:
            raise DatasetError(f'unknown split {name!r} for {self.name} (known: {", ".join(self.splits)})')
        return self.splits[name].require()

    def index(self) -> dict[str, int]:
        """video id -> row."""
        return {v: i for i, v in enumerate(self.video_ids)}

    def path(self, video_id: str) -> Path:
        return self.paths[self.index()[video_id]]

    def describe(self) -> str:
        """A few lines: counts per split, captions per video."""
        # a lazy index knows its count: summing its values would read all of it
        n_caps = getattr(self.captions, 'total', None)
        if n_caps is None:
            n_caps = sum(len(c) for c in self.captions.values())
        timed = f' ({len(self.caption_times)} videos with timed captions)' if self.caption_times else ''
        classes = f', {len(set(self.labels.values()))} classes' if self.labels else ''
        lines = [f'{self.name}: {count_media(self.paths)}, {n_caps} captions{timed}{classes}, root {self.root}',
                 f'  read from: {self.origin}', *(f'  {n}' for n in self.notes)]
        for s in self.splits.values():
            state = f' (unavailable: {s.unavailable})' if s.unavailable else ''
            mode = ', paragraph queries' if s.paragraph else ''
            lines.append(f'  split {s.name}: train {len(s.train)}, val {len(s.val)}, test {len(s.test)}{mode}{state}')
        return '\n'.join(lines)


def ordered_unique(items: Iterable[str]) -> list[str]:
    """Items in first-seen order, without repeats."""
    return list(dict.fromkeys(items))
