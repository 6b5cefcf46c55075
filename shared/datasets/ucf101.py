"""UCF-101 (Soomro et al. 2012): 101 action classes, three official train/test folds.

Files under ``{data_root}/ucf101/``: the official split files as released (``ucfTrainTestlist/``:
``classInd.txt``, ``<index> <Class>`` per line; ``trainlist0{1,2,3}.txt``, ``<Class>/<video>.avi
<index>``; ``testlist0{1,2,3}.txt``, ``<Class>/<video>.avi``) and the videos in
``videos/<Class>/<video>.avi`` (the UCF-101 folder). Video ids are ``<Class>/<video>``, each video's
label is its class and its caption the class name in words (``ApplyEyeMakeup``: "apply eye
makeup"). Splits ``fold1`` .. ``fold3``: the fold's training and test lists (no validation part).
"""
from __future__ import annotations

import re
from pathlib import Path

from shared.datasets import DATASETS
from shared.datasets.manifest import DatasetError, Manifest, Split, read_text, require_files, resolve_inside

__all__ = ['ucf101', 'LISTS_DIR', 'FOLDS']

LISTS_DIR = 'ucfTrainTestlist'
FOLDS = (1, 2, 3)


def _entries(path: Path, classes: dict[str, str], train: bool) -> list[str]:
    """The video ids of one list file, each checked against classInd.txt."""
    out = []
    for line_no, line in enumerate(read_text(path, 'a UCF-101 list file').splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        entry = fields[0]
        ok = len(fields) == (2 if train else 1) and entry.endswith('.avi') and entry.count('/') == 1
        if not ok or entry.split('/')[0].lower() not in classes:
            raise DatasetError(f'{path}:{line_no}: expected "<Class>/<video>.avi{" <index>" if train else ""}" '
                               f'with a class of classInd.txt, got {line!r}')
        out.append(entry[:-len('.avi')])
    return out


@DATASETS.register()
def ucf101(root: Path) -> Manifest:
    """UCF-101 manifest: videos sorted by id, folds fold1..fold3."""
    names = ['classInd.txt'] + [f'{kind}list0{k}.txt' for k in FOLDS for kind in ('train', 'test')]
    paths = require_files(root / LISTS_DIR, names, 'UCF-101 split file',
                          'unpack UCF101TrainTestSplits-RecognitionTask.zip of the UCF-101 release there')
    classes = {}
    for line_no, line in enumerate(read_text(paths[0], 'a UCF-101 classInd file').splitlines(), start=1):
        if line.strip():
            fields = line.split()
            if len(fields) != 2 or not fields[0].isdigit():
                raise DatasetError(f'{paths[0]}:{line_no}: expected "<index> <Class>", got {line!r}')
            classes[fields[1].lower()] = fields[1]
    lists = {p.name: _entries(p, classes, p.name.startswith('train')) for p in paths[1:]}
    order = tuple(sorted({v for entries in lists.values() for v in entries}))
    # classes are matched without case, spelled as classInd.txt spells them: the release writes one
    # class two ways (HandstandPushups, HandStandPushups)
    labels = {v: classes[v.split('/')[0].lower()] for v in order}
    words = {c: re.sub(r'(?<=[a-z])(?=[A-Z])', ' ', c).lower() for c in classes.values()}
    splits = {f'fold{k}': Split(f'fold{k}', tuple(sorted(lists[f'trainlist0{k}.txt'])), (),
                                tuple(sorted(lists[f'testlist0{k}.txt']))) for k in FOLDS}
    return Manifest('ucf101', root, order, tuple(resolve_inside(root, f'videos/{v}.avi') for v in order),
                    {v: (words[labels[v]],) for v in order}, splits, labels=labels)
