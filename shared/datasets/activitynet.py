"""ActivityNet Captions (Krishna et al. 2017), as paragraph-to-video retrieval tested on val_1.

Files under ``{data_root}/activitynet/``: ``train.json``, ``val_1.json``, ``val_2.json``
(``{video: {duration, timestamps, sentences}}``); videos in ``videos/{video}.{mp4,mkv,webm}``.
Splits ``val1`` (train / - / val_1, CE's protocol) and ``val2`` (train / - / val_2).
"""
from __future__ import annotations

from pathlib import Path

from shared.datasets import DATASETS
from shared.datasets.manifest import DatasetError, Manifest, Split, find_video, read_json, require_files

__all__ = ['activitynet', 'FILES']

FILES = {'train': 'train.json', 'val_1': 'val_1.json', 'val_2': 'val_2.json'}
_EXTENSIONS = ('.mp4', '.mkv', '.webm')


@DATASETS.register()
def activitynet(root: Path) -> Manifest:
    """ActivityNet manifest: videos sorted by id, captions = segment sentences in time order, each
    with its (start, end) seconds in `caption_times`.

    val_2 annotates val_1's videos again: a video's captions are its first file's (val_1's), and
    split val2 tests on val_2's own sentences (`Split.test_captions`)."""
    captions: dict[str, tuple[str, ...]] = {}
    times: dict[str, tuple[tuple[float, float], ...]] = {}
    per_file: dict[str, dict[str, tuple[str, ...]]] = {}
    for part, path in zip(FILES, require_files(root, tuple(FILES.values()), 'ActivityNet Captions file')):
        per_file[part] = {}
        try:
            data = read_json(path, 'an ActivityNet Captions file')
            for vid, entry in data.items():
                order = sorted(range(len(entry['sentences'])), key=lambda i: tuple(entry['timestamps'][i]))
                per_file[part][vid] = tuple(entry['sentences'][i].strip() for i in order)
                if vid not in captions:
                    captions[vid] = per_file[part][vid]
                    times[vid] = tuple(_seconds(entry['timestamps'][i]) for i in order)
        except (KeyError, TypeError, AttributeError, IndexError, ValueError) as err:
            raise DatasetError(f'{path}: not an ActivityNet Captions file ({err!r})') from None
    ids = tuple(sorted(captions))
    paths = tuple(find_video(root / 'videos', root, v, _EXTENSIONS) for v in ids)
    splits = {'val1': Split('val1', tuple(per_file['train']), (), tuple(per_file['val_1']), paragraph=True),
              'val2': Split('val2', tuple(per_file['train']), (), tuple(per_file['val_2']), paragraph=True,
                            test_captions=per_file['val_2'])}
    return Manifest('activitynet', root, ids, paths, captions, splits, caption_times=times)


def _seconds(stamp: object) -> tuple[float, float]:
    """A sentence's ``[start, end]`` as floats (a ValueError for anything else)."""
    start, end = stamp  # type: ignore[misc]
    return float(start), float(end)
