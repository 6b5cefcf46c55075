"""MSVD (Chen and Dolan 2011): AllVideoDescriptions.txt and the YouTube-id mapping.

Files under ``{data_root}/msvd/``: ``AllVideoDescriptions.txt`` (``<clip> <caption>`` per line,
``#`` comments), ``youtube_mapping.txt`` (``<clip> vid<N>`` per line), videos in
``videos/{clip}.avi`` (the YouTubeClips folder). Split ``official``: 1200/100/670.
"""
from __future__ import annotations

import re
from pathlib import Path

from shared.datasets import DATASETS
from shared.datasets.manifest import (DatasetError, Manifest, Split, read_split_list, read_text, require_files,
                                      resolve_inside)

__all__ = ['msvd']


@DATASETS.register()
def msvd(root: Path) -> Manifest:
    """MSVD manifest: 1,970 clips in the order of the mapping's vid numbers, every English caption."""
    mapping_path, desc_path = require_files(
        root, ('youtube_mapping.txt', 'AllVideoDescriptions.txt'), 'MSVD annotation file',
        'youtube_mapping.txt maps clip names to vid1..vid1970; both ship with the MSVD release')
    order: dict[str, int] = {}
    for line_no, line in enumerate(read_text(mapping_path, 'an MSVD YouTube-id mapping').splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        m = re.fullmatch(r'vid(\d+)', parts[-1]) if len(parts) == 2 else None
        if not m:
            raise DatasetError(f'{mapping_path}:{line_no}: expected "<clip> vid<N>", got {line!r}')
        order[parts[0]] = int(m.group(1))
    captions: dict[str, list[str]] = {}
    for line_no, line in enumerate(read_text(desc_path, 'an MSVD descriptions file').splitlines(), start=1):
        if not line.strip() or line.startswith('#'):
            continue
        clip, _, text = line.strip().partition(' ')
        if not text:
            raise DatasetError(f'{desc_path}:{line_no}: expected "<clip> <caption>", got {line!r}')
        if clip not in order:
            raise DatasetError(f'{desc_path}:{line_no}: clip {clip!r} is not in {mapping_path.name}')
        captions.setdefault(clip, []).append(text.strip())
    ids = tuple(sorted(order, key=lambda c: order[c]))
    paths = tuple(resolve_inside(root, f'videos/{c}.avi') for c in ids)
    split = Split('official', read_split_list('msvd', 'train_list.txt'), read_split_list('msvd', 'val_list.txt'),
                  read_split_list('msvd', 'test_list.txt'))
    return Manifest('msvd', root, ids, paths, {c: tuple(captions.get(c, ())) for c in ids}, {'official': split})
