"""HMDB-51 (Kuehne et al. 2011): 51 action classes, three official train/test folds.

Files under ``{data_root}/hmdb51/``: the official split files as released
(``testTrainMulti_7030_splits/{class}_test_split{1,2,3}.txt``, one ``<video>.avi <0|1|2>`` line per
video of the class: 1 training, 2 testing, 0 unused in that fold) and the videos in
``videos/{class}/{video}.avi`` (hmdb51_org, one folder per class). Video ids are ``{class}/{stem}``,
each video's label is its class and its caption the class name in words. Splits ``fold1`` ..
``fold3``: the fold's training and test videos (no validation part).
"""
from __future__ import annotations

import re
from pathlib import Path

from shared.datasets import DATASETS
from shared.datasets.manifest import AnnotationsMissing, DatasetError, Manifest, Split, read_text, resolve_inside

__all__ = ['hmdb51', 'SPLITS_DIR', 'FOLDS']

SPLITS_DIR = 'testTrainMulti_7030_splits'
FOLDS = (1, 2, 3)
_FILE = re.compile(r'(.+)_test_split([123])\.txt')


@DATASETS.register()
def hmdb51(root: Path) -> Manifest:
    """HMDB-51 manifest: videos sorted by class and name, folds fold1..fold3."""
    folder = root / SPLITS_DIR
    files = {}
    for p in sorted(folder.glob('*_test_split*.txt')) if folder.is_dir() else ():
        m = _FILE.fullmatch(p.name)
        if m:
            files[m.group(1), int(m.group(2))] = p
    if not files:
        raise AnnotationsMissing(f'missing HMDB-51 split files: no {folder}/CLASS_test_splitN.txt found. Unpack '
                                 'test_train_splits.rar of the HMDB-51 release there', ())
    classes = sorted({c for c, _ in files})
    lacking = [f'{c}_test_split{k}.txt' for c in classes for k in FOLDS if (c, k) not in files]
    if lacking:
        raise AnnotationsMissing(f'missing HMDB-51 split files in {folder}: {", ".join(lacking[:5])}', tuple(files.values()))
    parts: dict[int, dict[str, list[str]]] = {k: {'train': [], 'test': []} for k in FOLDS}
    ids: set[str] = set()
    for (cls, fold), path in sorted(files.items()):
        for line_no, line in enumerate(read_text(path, 'an HMDB-51 split file').splitlines(), start=1):
            if not line.strip():
                continue
            fields = line.split()
            if len(fields) != 2 or fields[1] not in ('0', '1', '2') or not fields[0].endswith('.avi'):
                raise DatasetError(f'{path}:{line_no}: expected "<video>.avi <0|1|2>", got {line!r}')
            vid = f'{cls}/{fields[0][:-len(".avi")]}'
            ids.add(vid)
            if fields[1] != '0':
                parts[fold]['train' if fields[1] == '1' else 'test'].append(vid)
    order = tuple(sorted(ids))
    paths = tuple(resolve_inside(root, f'videos/{v}.avi') for v in order)
    labels = {v: v.split('/', 1)[0] for v in order}
    splits = {f'fold{k}': Split(f'fold{k}', tuple(sorted(parts[k]['train'])), (), tuple(sorted(parts[k]['test'])))
              for k in FOLDS}
    return Manifest('hmdb51', root, order, paths, {v: (labels[v].replace('_', ' '),) for v in order}, splits,
                    labels=labels)
