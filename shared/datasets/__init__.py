"""Dataset manifests: one adapter per dataset, reading its official annotation files.

    manifest = load_manifest('msrvtt', data_root='data')        # data/msrvtt/...
    manifest = load_manifest('folder:/path/to/my/videos')        # any directory of videos
"""
from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any, Callable

from shared.config import data_root_default
from shared.datasets.manifest import (AnnotationsMissing, DatasetError, Manifest, Split, check_dataset_name,
                                      resolve_inside)
from shared.registry import Registry

__all__ = ['DATASETS', 'DatasetError', 'Manifest', 'Split', 'load_manifest', 'list_datasets',
           'dataset_dir', 'resolve_inside', 'check_dataset_name', 'require_registered', 'parse_dataset_options',
           'stores_name']

#: name -> adapter(dataset_dir, **options) -> Manifest
DATASETS: Registry[Callable[..., Manifest]] = Registry('dataset')


def dataset_dir(data_root: str | os.PathLike, name: str) -> Path:
    """Where dataset `name` lives under the data root: ``{data_root}/{name}`` (a DatasetError for a
    name that is no plain folder name, see `check_dataset_name`)."""
    return Path(data_root) / check_dataset_name(name)


def list_datasets() -> list[str]:
    """Every registered dataset, and folder:PATH (importing the adapters registers them)."""
    from shared.datasets import (activitynet, coco, demo, didemo, hmdb51, howto100m, lsmdc,  # noqa: F401
                                 msrvtt, msvd, ucf101, vatex)

    return DATASETS.names() + ['folder:PATH']


def require_registered(name: str, hint: str = '; or folder:PATH for a directory of videos') -> Callable[..., Manifest]:
    """The adapter of registered dataset `name`; a DatasetError (ending with `hint`) for a name no
    command can read (what writes a dataset's files, the importer, checks with this before it writes)."""
    from shared.datasets import (activitynet, coco, demo, didemo, hmdb51, howto100m, lsmdc,  # noqa: F401
                                 msrvtt, msvd, ucf101, vatex)

    check_dataset_name(name)
    try:
        return DATASETS.get(name)
    except KeyError as err:
        said = err.args[0]
        if said.endswith('?') and hint.startswith('; or '):  # after 'did you mean msrvtt?': a sentence of its own
            hint = f' Or {hint[len("; or "):]}'
        raise DatasetError(f'{said}{hint}') from None


def load_manifest(name: str, data_root: str | os.PathLike | None = None, **options: Any) -> Manifest:
    """Build the manifest of a registered dataset, or of ``folder:PATH``.

    The dataset's own annotation files are read; only when none of them is there, features
    imported from a release (``imported.json``, written by `pipelines.import_features`) stand in.
    `Manifest.origin` says which.

    Args:
        options: the adapter's own options (howto100m: ``captions``), from a training config's
            ``data.dataset_options`` or the commands' ``--dataset-option KEY=VALUE``.

    Raises:
        DatasetError: unknown dataset or option, missing or broken annotation file, unknown split,
            path outside root.
    """
    from shared.datasets import folder

    directory = _folder_path(name)
    if directory is not None:
        _check_options('folder:PATH', folder.folder_manifest, options)
        return folder.folder_manifest(directory, **options)
    root = dataset_dir(data_root if data_root is not None else data_root_default(), name)
    adapter = require_registered(name)
    _check_options(name, adapter, options)
    if not root.is_dir():
        if name in _GENERATED:  # nothing to download: the demo sets are made here
            raise DatasetError(f'dataset directory {root} not found; generate it: python -m shared.datasets.demo '
                               f'{_GENERATED[name]}--out {root} (make demo-data DATA_ROOT={root.parent}), or pass '
                               '--data-root (make: DATA_ROOT=) where it is')
        raise DatasetError(f'dataset directory {root} not found; put the {name} files there '
                           '(see README, "Datasets") or pass --data-root (make: DATA_ROOT=) where they are')
    try:
        return adapter(root, **options)
    except AnnotationsMissing as err:
        from shared.datasets.imported import IMPORTED_FILE, imported_manifest

        # only absent official files fall back: broken or partial ones are the user's to fix, and an
        # old imported.json beside them would silently give another dataset
        if err.found or not (root / IMPORTED_FILE).is_file():
            raise
        return imported_manifest(root, name)


#: the datasets `shared.datasets.demo` writes, with the options that pick each
_GENERATED = {'demo': '', 'demo_images': '--images '}


def _folder_path(name: str) -> Path | None:
    """The directory of a ``folder:PATH`` dataset name, None for any other name."""
    if not name.startswith('folder:'):
        return None
    directory = name[len('folder:'):]
    if not directory.strip():  # Path('') is '.': an empty path would quietly scan the working directory
        raise DatasetError(f'--dataset {name!r} names no directory: give folder:PATH, e.g. folder:./videos '
                           '(folder:. for the current directory)')
    return Path(directory)


def stores_name(name: str) -> str:
    """The folder under the features root that dataset `name`'s stores are in: a plain name itself
    (`check_dataset_name`), ``folder-NAME-HASH`` for ``folder:PATH`` (`folder.folder_name`, the
    manifest's name, which extract files them under). Reads nothing: the folder need not be there."""
    directory = _folder_path(name)
    if directory is None:
        return check_dataset_name(name)
    from shared.datasets.folder import folder_name

    return folder_name(directory)


def _check_options(name: str, adapter: Callable[..., Manifest], options: dict[str, Any]) -> None:
    """Options that `adapter` (after its root) takes, else one DatasetError naming those it does."""
    known = list(inspect.signature(adapter).parameters)[1:]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise DatasetError(f'dataset {name} has no option {", ".join(unknown)} '
                           f'({"its options: " + ", ".join(known) if known else "it takes none"})')


def parse_dataset_options(items: list[str]) -> dict[str, str]:
    """``--dataset-option KEY=VALUE`` strings -> options of `load_manifest` (values stay text: they name files)."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition('=')
        if not sep or not key.strip():
            raise DatasetError(f'--dataset-option {item!r}: expected KEY=VALUE, e.g. captions=raw_caption.json')
        out[key.strip()] = value.strip()
    return out
