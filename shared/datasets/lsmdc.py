"""LSMDC (Rohrbach et al. 2017): the challenge's tab-separated annotation files.

Files under ``{data_root}/lsmdc/``: ``LSMDC16_annos_training.csv``, ``LSMDC16_annos_val.csv`` and
``LSMDC16_challenge_1000_publictect.csv`` (columns: clip, start/end aligned, start/end extracted,
sentence); videos in ``videos/{movie}/{clip}.avi`` where movie is the clip name up to its last ``_``.
Split ``official``: training / val / the 1,000 public test clips.
"""
from __future__ import annotations

from pathlib import Path

from shared.datasets import DATASETS
from shared.datasets.manifest import (DatasetError, Manifest, Split, ordered_unique, read_text, require_files,
                                      resolve_inside)

__all__ = ['lsmdc', 'FILES']

FILES = {'train': 'LSMDC16_annos_training.csv', 'val': 'LSMDC16_annos_val.csv',
         'test': 'LSMDC16_challenge_1000_publictect.csv'}


def _read(path: Path, captions: dict[str, list[str]]) -> list[str]:
    clips = []
    for line_no, line in enumerate(read_text(path, 'an LSMDC annotation CSV').splitlines(), start=1):
        if not line.strip():
            continue
        cols = line.split('\t')
        if len(cols) < 2 or not cols[0].strip():
            raise DatasetError(f'{path}:{line_no}: expected tab-separated clip, times and sentence')
        clip, sentence = cols[0].strip(), cols[-1].strip()
        if '_' not in clip:
            raise DatasetError(f'{path}:{line_no}: clip name {clip!r} has no movie prefix')
        captions.setdefault(clip, []).append(sentence)
        clips.append(clip)
    return ordered_unique(clips)


@DATASETS.register()
def lsmdc(root: Path) -> Manifest:
    """LSMDC manifest: clips sorted by name, one caption each."""
    captions: dict[str, list[str]] = {}
    paths = require_files(root, tuple(FILES.values()), 'LSMDC annotation file')
    parts = {part: _read(path, captions) for part, path in zip(FILES, paths)}
    ids = tuple(sorted(captions))
    paths = tuple(resolve_inside(root, f'videos/{c.rsplit("_", 1)[0]}/{c}.avi') for c in ids)
    split = Split('official', tuple(parts['train']), tuple(parts['val']), tuple(parts['test']))
    return Manifest('lsmdc', root, ids, paths, {c: tuple(captions[c]) for c in ids}, {'official': split})
