"""VATEX (Wang et al. 2019): English captions; the public validation set split into two halves.

Files under ``{data_root}/vatex/``: ``vatex_training_v1.0.json``, ``vatex_validation_v1.0.json``
(lists of ``{videoID, enCap, chCap}``); videos in ``videos/{videoID}.mp4``. Split ``official``:
train = training; val = the first half of validation (1,500), test = the second half (1,500),
halves taken in file order.
"""
from __future__ import annotations

from pathlib import Path

from shared.datasets import DATASETS
from shared.datasets.manifest import (DatasetError, Manifest, Split, ordered_unique, read_json, require_files,
                                      resolve_inside)

__all__ = ['vatex', 'FILES']

FILES = {'train': 'vatex_training_v1.0.json', 'validation': 'vatex_validation_v1.0.json'}


@DATASETS.register()
def vatex(root: Path) -> Manifest:
    """VATEX manifest: videos sorted by id, ten English captions each."""
    captions: dict[str, tuple[str, ...]] = {}
    parts: dict[str, list[str]] = {}
    for part, path in zip(FILES, require_files(root, tuple(FILES.values()), 'VATEX annotation file')):
        try:
            entries = read_json(path, 'a VATEX annotation file')
            for e in entries:
                captions[str(e['videoID'])] = tuple(str(c).strip() for c in e['enCap'])
            parts[part] = ordered_unique(str(e['videoID']) for e in entries)
        except (KeyError, TypeError) as err:
            raise DatasetError(f'{path}: not a VATEX annotation file ({err!r})') from None
    half = (len(parts['validation']) + 1) // 2
    ids = tuple(sorted(captions))
    paths = tuple(resolve_inside(root, f'videos/{v}.mp4') for v in ids)
    split = Split('official', tuple(parts['train']), tuple(parts['validation'][:half]),
                  tuple(parts['validation'][half:]))
    return Manifest('vatex', root, ids, paths, captions, {'official': split})
