"""A user's own videos and still images: every such file under a directory, ids from relative paths, no captions."""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from shared.datasets.manifest import VIDEO_EXTENSIONS, DatasetError, Manifest, Split, resolve_inside
from shared.media import IMAGE_EXTENSIONS

__all__ = ['folder_manifest', 'folder_name']


def folder_name(directory: Path) -> str:
    """The dataset name used for a folder's stores: ``folder-{its name, made path-safe}-{8 hex digits}``.

    The digits hash the folder's resolved absolute path: two folders of the same name
    (``/a/vids``, ``/b/vids``) get stores of their own, and the name stays readable.
    """
    resolved = directory.resolve()
    name = re.sub(r'[^A-Za-z0-9._-]+', '_', resolved.name).strip('._') or 'videos'
    digest = hashlib.sha256(os.fsencode(resolved)).hexdigest()[:8]
    return f'folder-{name}-{digest}'


def folder_manifest(directory: Path, extensions: tuple[str, ...] = VIDEO_EXTENSIONS + IMAGE_EXTENSIONS) -> Manifest:
    """Manifest of every video and still image under `directory`, mixed (recursively; hidden files and
    folders skipped). An image is extracted as a one-frame video (`extract.images`).

    Ids are relative POSIX paths with their extension (``trip/day1.mp4``), sorted, so that the
    same folder always gives the same store rows. Split ``all`` puts every video in test.
    """
    if not directory.is_dir():
        raise DatasetError(f'folder {directory} does not exist or is not a directory')
    exts = {e.lower() for e in extensions}
    ids = []
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith('.'))
        for f in filenames:
            if not f.startswith('.') and os.path.splitext(f)[1].lower() in exts:
                ids.append(Path(os.path.relpath(os.path.join(dirpath, f), directory)).as_posix())
    if not ids:
        raise DatasetError(f'no video or image files under {directory} (looked for {", ".join(sorted(exts))})')
    ids.sort()
    paths = tuple(resolve_inside(directory, v) for v in ids)
    split = Split('all', (), (), tuple(ids))
    return Manifest(folder_name(directory), directory, tuple(ids), paths, {v: () for v in ids}, {'all': split},
                    origin=f'the video and image files under {directory.resolve()}', source=str(directory.resolve()))
