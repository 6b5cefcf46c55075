"""Manifests of datasets whose features were imported from the papers' releases
(`python -m pipelines.import_features`), for when the official annotation files are not there.

``{data_root}/{name}/imported.json`` holds the video ids, every video's captions in the release's
order (1k-A indexes captions by position) and the splits:

    {"source": "ce", "videos": [...], "captions": {"video1": ["...", ...]},
     "splits": {"full": {"train": [...], "val": [...], "test": [...], "paragraph": false,
                         "query_captions": {"video7": [3]}, "unavailable": ""}}}
"""
from __future__ import annotations

from pathlib import Path

from shared.datasets.manifest import DatasetError, Manifest, Split, read_json, resolve_inside

__all__ = ['IMPORTED_FILE', 'imported_manifest', 'imported_video_path']

IMPORTED_FILE = 'imported.json'


def imported_video_path(root: Path, video_id: str) -> Path:
    """The file of an imported video, ``{root}/videos/{id}.mp4`` (DatasetError: an id such as
    ``../x`` that leads outside `root`)."""
    return resolve_inside(root, f'videos/{video_id}.mp4')


def imported_manifest(root: Path, name: str) -> Manifest:
    """The manifest in ``{root}/imported.json``; its `origin` names that file."""
    path = root / IMPORTED_FILE
    try:
        data = read_json(path, 'an imported-features manifest')
        ids = tuple(data['videos'])
        caps = {v: tuple(data['captions'].get(v, ())) for v in ids}
        splits = {}
        for split_name, s in data['splits'].items():
            queries = {v: tuple(k) for v, k in s.get('query_captions', {}).items()} or None
            splits[split_name] = Split(split_name, tuple(s['train']), tuple(s.get('val', ())), tuple(s['test']),
                                       paragraph=bool(s.get('paragraph', False)), query_captions=queries,
                                       unavailable=s.get('unavailable', ''))
        release = str(data.get('source', '?'))
    except (KeyError, TypeError, AttributeError) as err:
        raise DatasetError(f'{path}: not an imported-features manifest ({err!r})') from None
    paths = tuple(imported_video_path(root, v) for v in ids)
    origin = (f'{path} (captions and splits of the features imported from the {release} release; '
              f'no official annotation files in {root})')
    return Manifest(name, root, ids, paths, caps, splits, origin=origin)
