"""COCO 2014 captions (Chen et al. 2015) as one-frame videos, for MEE sec. 4.1 and Tables 2-3.

Files under ``{data_root}/coco/``, as released: ``annotations/captions_train2014.json`` and
``annotations/captions_val2014.json`` (``{"images": [{"id", "file_name", ...}], "annotations":
[{"id", "image_id", "caption"}]}``), images in ``train2014/`` and ``val2014/`` (the json's
``file_name``). An item's id is its file's stem (``COCO_val2014_000000391895``), unique across the
two sets; its captions are in annotation-id order.

Splits:

- ``mee-1k`` (MEE sec. 4.1: "evaluate text-to-image retrieval on randomly sampled 1000
  image-caption pairs from the COCO 2014 validation set"): test = 1,000 val2014 images with one
  caption each, drawn by `mee_1k_choice` with the fixed seed `MEE_1K_SEED`; train = train2014 plus
  the rest of val2014, all captions; val is empty (as MSR-VTT's 1k-B: MEE selects no epoch on COCO,
  and with COCO as an extra source the primary dataset does the selection).
- ``karpathy``: Karpathy & Fei-Fei's 5k test / 5k val, train = train + restval, read from their
  ``dataset_coco.json`` put in ``{data_root}/coco/``; test queries are the first five captions of
  each image (the 25,000 queries of the 5k protocol).
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath

import numpy as np

from shared.datasets import DATASETS
from shared.datasets.manifest import DatasetError, Manifest, Split, read_json, require_files, resolve_inside

__all__ = ['coco', 'mee_1k_choice', 'FILES', 'KARPATHY_FILE', 'MEE_1K_SEED', 'MEE_1K_SIZE']

#: image folder -> its caption file
FILES = {'train2014': 'annotations/captions_train2014.json', 'val2014': 'annotations/captions_val2014.json'}
KARPATHY_FILE = 'dataset_coco.json'
#: the seed of the mee-1k test draw: changing it changes the test set, so it never changes
MEE_1K_SEED = 2018
MEE_1K_SIZE = 1000
#: Karpathy's split names -> our split parts (restval: the 30k val2014 images Karpathy trains on)
_KARPATHY_PARTS = {'train': 'train', 'restval': 'train', 'val': 'val', 'test': 'test'}
#: captions per test image in the 5k protocol
_KARPATHY_QUERIES = 5


def _read_set(path: Path, folder: str, root: Path, captions: dict[str, tuple[str, ...]],
              paths: dict[str, Path]) -> list[str]:
    """The ids of one COCO caption file, sorted; fills `captions` and `paths`."""
    data = read_json(path, 'a COCO captions file')
    try:
        files: dict[int, str] = {}
        for im in data['images']:
            image, name = int(im['id']), im['file_name']
            if not isinstance(name, str):
                raise DatasetError(f'{path}: image {image} has file_name {name!r:.80}, not a string')
            if image in files:
                raise DatasetError(f'{path}: image id {image} is listed twice ({files[image]}, {name})')
            files[image] = name
        anns = [(int(a['image_id']), int(a['id']), a['caption']) for a in data['annotations']]
    except (KeyError, TypeError, ValueError) as err:
        raise DatasetError(f'{path}: not a COCO captions file ({err!r})') from None
    found: dict[int, list[tuple[int, str]]] = {i: [] for i in files}
    for image, ann, text in anns:
        if image not in found:
            raise DatasetError(f'{path}: caption {ann} is of image {image}, which the file does not list: put the '
                               'captions file of the release there, as released')
        if not isinstance(text, str):  # the text side needs strings
            raise DatasetError(f'{path}: caption {ann} of image {image} is not a string: {text!r:.80}')
        found[image].append((ann, text.strip()))
    ids = []
    for image, file_name in files.items():
        vid = _image_id(file_name, path)
        captions[vid] = tuple(text for _, text in sorted(found[image]))
        paths[vid] = resolve_inside(root, f'{folder}/{file_name}')
        ids.append(vid)
    return sorted(ids)


def _image_id(file_name: str, path: Path) -> str:
    """The id of an image: its file's stem (``COCO_val2014_000000391895``)."""
    stem = PurePosixPath(file_name).stem
    if not stem:
        raise DatasetError(f'{path}: image file_name {file_name!r} names no file')
    return stem


def mee_1k_choice(val_ids: Sequence[str], captions: Mapping[str, Sequence[str]],
                  seed: int = MEE_1K_SEED, size: int = MEE_1K_SIZE) -> dict[str, int]:
    """MEE's 1,000 test image-caption pairs: test image id -> the index of its one query caption.

    The draw depends only on the ids, their caption counts and `seed` (the ids are sorted first;
    a NumPy Generator, no Python ``hash``), so every run and process gets the same pairs.

    Raises:
        DatasetError: fewer than `size` val images have a caption.
    """
    pool = sorted(v for v in val_ids if captions[v])
    if len(pool) < size:
        raise DatasetError(f'only {len(pool)} val2014 images have captions; mee-1k draws {size}')
    rng = np.random.default_rng(seed)
    chosen = sorted(pool[i] for i in rng.permutation(len(pool))[:size])
    return {v: int(rng.integers(len(captions[v]))) for v in chosen}


def _karpathy(path: Path, known: Mapping[str, tuple[str, ...]]) -> Split:
    """The ``karpathy`` split from Karpathy's ``dataset_coco.json``."""
    parts: dict[str, list[str]] = {'train': [], 'val': [], 'test': []}
    seen: dict[str, str] = {}  # image -> its split: an image in two parts would leak test into train
    try:
        for im in read_json(path, "Karpathy's dataset_coco.json")['images']:
            vid = _image_id(str(im['filename']), path)
            part = _KARPATHY_PARTS.get(im['split'])
            if part is None:
                raise DatasetError(f'{path}: image {vid} has split {im["split"]!r} (expected one of '
                                   f'{", ".join(_KARPATHY_PARTS)})')
            if vid not in known:
                raise DatasetError(f'{path}: image {vid} is in neither COCO 2014 captions file: put the file of '
                                   "Karpathy's release there, beside the 2014 annotations")
            if vid in seen:
                raise DatasetError(f'{path}: image {vid} is listed twice (splits {seen[vid]!r} and {im["split"]!r})')
            seen[vid] = im['split']
            parts[part].append(vid)
    except (KeyError, TypeError) as err:
        raise DatasetError(f"{path}: not Karpathy's dataset_coco.json ({err!r})") from None
    test = tuple(sorted(parts['test']))
    queries = {v: tuple(range(min(_KARPATHY_QUERIES, len(known[v])))) for v in test}
    return Split('karpathy', tuple(sorted(parts['train'])), tuple(sorted(parts['val'])), test,
                 query_captions=queries)


@DATASETS.register()
def coco(root: Path) -> Manifest:
    """COCO 2014 manifest: train2014 then val2014 images, in id order, with all their captions."""
    captions: dict[str, tuple[str, ...]] = {}
    paths: dict[str, Path] = {}
    sets = {}
    files = require_files(root, tuple(FILES.values()), 'COCO 2014 captions file',
                          'Both come from the COCO 2014 release (annotations_trainval2014.zip); put its '
                          f'annotations/ folder in {root}')
    for (folder, _), path in zip(FILES.items(), files):
        before = len(captions)
        sets[folder] = _read_set(path, folder, root, captions, paths)
        if len(captions) != before + len(sets[folder]):
            raise DatasetError(f'{path}: image ids repeat within the file or across the two 2014 files')
    ids = tuple(sets['train2014'] + sets['val2014'])
    try:
        queries = mee_1k_choice(sets['val2014'], captions)
    except DatasetError as err:
        mee = Split('mee-1k', (), (), (), unavailable=str(err))
    else:
        rest = [v for v in sets['val2014'] if v not in queries]
        mee = Split('mee-1k', tuple(sets['train2014'] + rest), (), tuple(queries),
                    query_captions={v: (k,) for v, k in queries.items()})
    karpathy_path = root / KARPATHY_FILE
    if karpathy_path.is_file():
        karpathy = _karpathy(karpathy_path, captions)
    else:
        karpathy = Split('karpathy', (), (), (),
                         unavailable=f"Karpathy's split file {karpathy_path} is missing: put {KARPATHY_FILE} "
                                     "(from Karpathy's caption_datasets.zip) in " + os.fspath(root))
    return Manifest('coco', root, ids, tuple(paths[v] for v in ids), {v: captions[v] for v in ids},
                    {s.name: s for s in (mee, karpathy)})
