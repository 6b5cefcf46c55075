"""DiDeMo (Hendricks et al. 2017), as paragraph-to-video retrieval (CE section 4).

Files under ``{data_root}/didemo/``: ``train_data.json``, ``val_data.json``, ``test_data.json``
(lists of moments: ``video``, ``description``, ``times``); videos in ``videos/{video}`` (the id
carries its extension). A video's moment descriptions, in file order, form its paragraph query.
"""
from __future__ import annotations

from pathlib import Path

from shared.datasets import DATASETS
from shared.datasets.manifest import (DatasetError, Manifest, Split, ordered_unique, read_json, require_files,
                                      resolve_inside)

__all__ = ['didemo', 'FILES']

FILES = {'train': 'train_data.json', 'val': 'val_data.json', 'test': 'test_data.json'}


@DATASETS.register()
def didemo(root: Path) -> Manifest:
    """DiDeMo manifest: videos sorted by id, captions = moment descriptions, paragraph queries."""
    captions: dict[str, list[str]] = {}
    parts: dict[str, tuple[str, ...]] = {}
    for part, path in zip(FILES, require_files(root, tuple(FILES.values()), 'DiDeMo annotation file')):
        try:
            moments = read_json(path, 'a DiDeMo annotation file')
            vids = [str(m['video']) for m in moments]
            for m in moments:
                captions.setdefault(str(m['video']), []).append(str(m['description']).strip())
        except (KeyError, TypeError) as err:
            raise DatasetError(f'{path}: not a DiDeMo annotation file ({err!r})') from None
        parts[part] = tuple(ordered_unique(vids))
    ids = tuple(sorted(captions))
    paths = tuple(resolve_inside(root, f'videos/{v}') for v in ids)
    split = Split('official', parts['train'], parts['val'], parts['test'], paragraph=True)
    return Manifest('didemo', root, ids, paths, {v: tuple(captions[v]) for v in ids}, {'official': split})
