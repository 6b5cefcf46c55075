"""`python -m pipelines.import_features`: convert the features the papers' authors released into
expert stores, so that their tables can be reproduced without re-extracting.

    python -m pipelines.import_features --source ce --root ~/Downloads/MSRVTT/structured-symlinks --dataset msrvtt
    python -m pipelines.import_features --source mmt --root ~/Downloads/MSRVTT/mult_h5 --dataset msrvtt

CE (Liu et al. 2019): one pickle per expert, ``dict[video_id -> array (D,) or (T, D)]``, a missing
expert stored as a scalar NaN, found by name under --root (e.g.
``aggregated_scene_25fps_256px_stride1_offset0/densenet161-avg.pickle``), with ``raw-captions.pkl``
(``dict[video_id -> list of token lists]``) and the split lists of the release.
MMT (Gabeur et al. 2020): one HDF5 file per video, ``{video_id}.h5``, with ``features.{expert}``
(T, D), optional ``features_t.{expert}`` (T, 2) start/end seconds, and ``raw_captions.{i}``.

Caption order is kept exactly (MSR-VTT 1k-A picks its test queries by position). Captions and
splits are written to ``{data_root}/{dataset}/imported.json``, which the dataset's manifest uses
when the official annotation files are not there. An import applies whole or not at all: every
store is built beside the one it replaces (``.NAME.import-new``), and they are put in place, then
imported.json, only once all of them are built, with Ctrl-C and SIGTERM held until the last rename
(a kill -9 among the renames can leave some stores replaced: rerun the import to apply it whole).
Rows without timing get the store's
UNKNOWN_TIME. Pickle files can run code when loaded: they are read only here, after a warning,
only from the --root you name, and only as arrays, numbers, strings and containers: a pickle that
names any other callable is refused, unrun (`_ReleaseUnpickler`).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from shared.config import DATA_ROOT_HELP, FEATURES_ROOT_HELP, data_root_default, features_root_default
from shared.datasets import DatasetError, dataset_dir, require_registered
from shared.datasets.imported import IMPORTED_FILE, imported_video_path
from shared.datasets.manifest import read_split_list, read_text
from shared.files import atomic_write
from pipelines.release_pickle import ce_captions, ce_rows, read_release, rows_of
from shared.store import (DONE, UNKNOWN_TIME, ExpertStore, StoreError, StoreSpec, VideoResult, check_store,
                          create_store, is_store, open_store, pack_chunk, replacement_path, signals_deferred,
                          store_path, swap_in)

__all__ = ['CE_FILES', 'MMT_EXPERTS', 'import_ce', 'import_mmt', 'release_rows', 'main']

#: (glob under the CE release, our store name)
CE_FILES = (
    ('aggregated_imagenet*/senet154*.pickle', 'object'),
    ('aggregated_imagenet*/resnext101*.pickle', 'object.resnext101_wsl'),
    ('aggregated_scene*/densenet161*.pickle', 'scene'),
    ('aggregated_i3d*/i3d*.pickle', 'action.i3d'),
    ('aggregated_r2p1d*/r2p1d-ig65m*.pickle', 'action.r2plus1d_34_ig65m'),
    ('aggregated_audio_feats/*.pickle', 'audio'),
    ('aggregated_face_feats/facefeats*.pickle', 'face'),
    ('aggregated_ocr_feats/ocr-raw*.pickle', 'ocr'),
    ('aggregated_speech/speech-w2v*.pickle', 'speech'),
)
#: MMT's expert names -> ours
MMT_EXPERTS = {'appearance': 'object', 'motion': 'action', 'audio': 'audio', 'scene': 'scene', 'ocr': 'ocr',
               'face': 'face', 'speech': 'speech'}
#: splits per dataset from list files: name -> (train, val, test list file names, paragraph, first caption only)
SPLIT_LISTS: dict[str, dict[str, tuple[str, str | None, str, bool, bool]]] = {
    'msrvtt': {'full': ('train_list_full.txt', 'val_list_full.txt', 'test_list_full.txt', False, False),
               '1k-A': ('train_list_jsfusion.txt', None, 'val_list_jsfusion.txt', False, False),
               '1k-B': ('train_list_miech.txt', None, 'test_list_miech.txt', False, True)},
    'msvd': {'official': ('train_list.txt', 'val_list.txt', 'test_list.txt', False, False)},
    'didemo': {'official': ('train_list.txt', 'val_list.txt', 'test_list.txt', True, False)},
    'activitynet': {'val1': ('train_list.txt', None, 'val_1_list.txt', True, False),
                    'val2': ('train_list.txt', None, 'val_2_list.txt', True, False)},
}
_SHIPPED_DIR = {'activitynet': 'activity-net'}
#: why an import's dataset must be a registered one
_AS_KNOWN = ': import as one of them (every command reads imported.json through the dataset of that name)'


def write_store(features_root: Path, dataset: str, expert: str, ids: list[str],
                values: dict[str, tuple[np.ndarray | None, np.ndarray | None]], source: str,
                origin: str) -> ExpertStore:
    """One store from per-video (rows, timestamps or None); a video absent from `values` is skipped.

    The store is built beside the one it replaces (`replacement_path`); `_commit` puts it in place.
    """
    present = [v[0] for v in values.values() if v[0] is not None]
    if not present:
        raise ValueError(f'{expert}: no video has features in {origin}')
    dim = present[0].shape[1]
    max_rows = max(len(r) for r in present)
    spec = StoreSpec(dataset=dataset, expert=expert, feature_dim=dim, max_rows=max_rows, model=f'imported:{source}',
                     weights=f'released by the authors ({source}): {origin}', config={'imported_from': origin})
    staged = replacement_path(store_path(features_root, dataset, expert), builder='import')
    store = create_store(staged, ids, spec, overwrite=True)  # what an import cut short left there goes
    try:
        _fill(store, ids, values, dim, max_rows, origin)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return store


def _fill(store: ExpertStore, ids: list[str], values: dict[str, tuple[np.ndarray | None, np.ndarray | None]],
          dim: int, max_rows: int, origin: str) -> None:
    """Write every chunk of a new store from the release's values."""
    for c in range(store.n_chunks):
        results, chunk_ids = [], [ids[r] for r in store.chunk_rows(c)]
        for vid in chunk_ids:
            if vid not in values:
                results.append(VideoResult.skipped(dim, f'not in {origin}'))
                continue
            rows, times = values[vid]
            if rows is None:
                results.append(VideoResult(np.zeros((0, dim), np.float32), np.zeros((0, 2), np.float32), DONE,
                                           available=False))
                continue
            if times is None:
                times = np.full((len(rows), 2), UNKNOWN_TIME, np.float32)
            results.append(VideoResult(rows, times))
        try:
            packed = pack_chunk(results, max_rows, dim, False, ids=chunk_ids)
        except StoreError as err:  # e.g. values beyond float16: name the release file and the video
            raise ValueError(f'{origin}: {err}; fix or drop that video in the release') from None
        store.write_chunk(c, packed)


@contextlib.contextmanager
def _staging() -> Iterator[list[ExpertStore]]:
    """A list for the stores an import builds; when the import fails before `_commit`, they are
    removed and the stores in place (and imported.json) stay as they were."""
    staged: list[ExpertStore] = []
    try:
        yield staged
    except BaseException:
        for store in staged:
            shutil.rmtree(store.path, ignore_errors=True)
        raise


def _commit(staged: list[ExpertStore], data_root: Path, dataset: str, source: str, ids: list[str],
            captions: dict[str, list[str]], splits: dict) -> list[Path]:
    """Put every built store in place of the one it replaces, then write imported.json; returns
    the store paths. Runs only once every input has been read and every store built; Ctrl-C and
    SIGTERM wait for its end, so that they cannot leave the import half applied."""
    with signals_deferred():
        paths = [swap_in(store).path for store in staged]
        _write_manifest(data_root, dataset, source, ids, captions, splits)
    return paths


def _check_ids(ids: list[str], data_root: Path, dataset: str, origin: Path) -> None:
    """ValueError naming `origin` when a release's video id cannot name a file inside the dataset
    (``../x``, a NUL): imported.json would hold it, and every command would then refuse the dataset."""
    root = dataset_dir(data_root, dataset)
    for vid in ids:
        try:
            imported_video_path(root, vid)
        except DatasetError as err:
            raise ValueError(f'{origin}: video id {vid!r} is not one a video file can have ({err}); '
                             'fix the id in the release') from None


def refuse_extracted(features_root: Path, dataset: str, experts: list[str]) -> None:
    """ValueError when one of the stores an import would write holds features extracted here (not
    an earlier import): those took hours of GPU time, and an import replaces a store whole."""
    for expert in experts:
        path = store_path(features_root, dataset, expert)
        if not is_store(path):
            continue
        model = str(open_store(path, warn_random=False).attrs.get('model', ''))
        if not model.startswith('imported:'):
            raise ValueError(f'{path} holds features extracted here ({model}); the import would replace them. '
                             'Import into another --features-root or as another --dataset, or pass --overwrite')


def release_rows(release: Path, expert: str) -> tuple[dict[str, np.ndarray | None], str]:
    """One expert's per-video (L, D) rows from a release, and what was read: a CE pickle file, a
    CE release directory (the expert's pickle found by `CE_FILES`), or a directory of MMT h5 files
    (``features.{MMT name}``). A video missing in the release (NaN) maps to None. CE pickles are
    unpickled: callers warn first, as `main` does.

    Raises:
        FileNotFoundError: nothing for `expert` in `release`.
    """
    if release.is_file():
        return ce_rows(release), str(release)
    if any(release.glob('*.h5')):
        return _mmt_rows(release, expert), f'{release} features.{_mmt_name(expert)}'
    patterns = [pattern for pattern, name in CE_FILES if name == expert]
    found = next((f for pattern in patterns for f in sorted(release.rglob(pattern))), None)
    if found is None:
        raise FileNotFoundError(f'no CE pickle for expert {expert!r} under {release} '
                                f'(looked for {", ".join(patterns) or "nothing: CE released no such expert"})')
    return ce_rows(found), str(found)


def _mmt_name(expert: str) -> str:
    return next((m for m, ours in MMT_EXPERTS.items() if ours == expert), expert)


@contextlib.contextmanager
def _h5(path: Path) -> Iterator[Any]:
    """One MMT release file, open for reading; whatever goes wrong while it is read names it (h5py's and
    numpy's messages name neither the file nor the video, and a release has thousands)."""
    import h5py

    try:
        h = h5py.File(path, 'r')
    except OSError as err:
        raise OSError(f'{path}: cannot read it as an HDF5 file ({err}): replace or remove it') from None
    with h:
        try:
            yield h
        except (ValueError, TypeError, KeyError, OSError) as err:  # a dataset of another shape, type or encoding
            raise ValueError(f'{path}: {err}') from None


#: a dataset may hold at most this many times its bytes in the file (and 64 MB before any are asked):
#: features compress a few times at most, while an HDF5 dataset never written reads as its fill value
_H5_EXPANSION, _H5_FREE_BYTES = 64, 64 << 20


def _h5_read(h: Any, key: str) -> Any:
    """`h[key]` read whole; a dataset whose size is far beyond what the file holds of it (an unwritten
    dataset of 10**6 rows reads as 8 GB of zeros from a 6 KB file), or whose data is in another file (an
    external link, a soft link, which may lead through one, external storage, a virtual dataset), is a
    ValueError, before it is read."""
    import h5py

    link = h.get(key, getlink=True)
    if isinstance(link, h5py.ExternalLink):  # a file anywhere on this machine, read as the release's
        raise ValueError(f'{key} is a link to {link.path} in {link.filename}, another file: a release file holds '
                         'its own data; refused, not followed')
    if isinstance(link, h5py.SoftLink):  # its path may pass through an external link (another file again)
        raise ValueError(f'{key} is a soft link to {link.path[:200]}: a release file holds its datasets themselves; '
                         'refused, not followed')
    d = h[key]
    if getattr(d, 'external', None) or getattr(d, 'is_virtual', False):
        # HDF5 reads such a dataset from the files it names (/home/.../id_rsa, /dev/zero): their bytes
        # became captions in imported.json
        where = ', '.join(str(e[0]) for e in d.external) if d.external else 'a virtual dataset'
        raise ValueError(f'{key} keeps its data in other files ({where[:200]}): a release file holds its own '
                         'data; refused, not read')
    nbytes = int(getattr(d, 'nbytes', 0))
    if nbytes > _H5_FREE_BYTES and nbytes > _H5_EXPANSION * d.id.get_storage_size():
        raise ValueError(f'{key} declares {d.shape} values ({nbytes >> 20} MB) held in {d.id.get_storage_size()} '
                         'bytes of the file (unwritten or compressed beyond any features): refused, not read')
    return d[()]


def _mmt_rows(root: Path, expert: str) -> dict[str, np.ndarray | None]:
    key = f'features.{_mmt_name(expert)}'
    out: dict[str, np.ndarray | None] = {}
    for f in sorted(root.glob('*.h5')):
        with _h5(f) as h:
            if key in h:
                out[f.stem] = rows_of(_h5_read(h, key), None)[0]
    if not out:
        raise FileNotFoundError(f'no {key} in the h5 files of {root}')
    return out


def _splits(dataset: str, ids: list[str], captions: dict[str, list[str]], root: Path, data_root: Path) -> dict:
    """Split lists from the release (when it has them) or the ones shipped with this package."""
    from shared.datasets.msrvtt import JSFUSION_FILE, _jsfusion_queries

    out = {}
    shipped = _SHIPPED_DIR.get(dataset, dataset)

    def read(name: str) -> list[str]:
        local = root / name
        if local.is_file():
            text = read_text(local, 'a split list (a video id a line)')  # errors name the file
            return [line.strip() for line in text.splitlines() if line.strip()]
        return list(read_split_list(shipped, name))

    known = set(ids)
    for name, (train, val, test, paragraph, first) in SPLIT_LISTS.get(dataset, {}).items():
        parts = {'train': read(train), 'val': read(val) if val else [], 'test': read(test)}
        parts = {k: [v for v in vids if v in known] for k, vids in parts.items()}
        s: dict[str, Any] = {**parts, 'paragraph': paragraph}
        if first:
            s['query_captions'] = {v: [0] for v in parts['test']}
        if dataset == 'msrvtt' and name == '1k-A':
            js = next((p for p in (root / JSFUSION_FILE, dataset_dir(data_root, dataset) / JSFUSION_FILE)
                       if p.is_file()), None)
            if js is None:
                s['unavailable'] = (f'1k-A tests on one JSFusion-chosen caption per video: put {JSFUSION_FILE} '
                                    f'in {dataset_dir(data_root, dataset)} and import again')
            else:
                s['query_captions'] = {v: list(k) for v, k in _jsfusion_queries(js, {v: tuple(c) for v, c in captions.items()}).items()}
        out[name] = s
    if not out:  # a dataset without known lists: everything is a test set
        out['all'] = {'train': [], 'val': [], 'test': ids, 'paragraph': False}
    return out


def _write_manifest(data_root: Path, dataset: str, source: str, ids: list[str], captions: dict[str, list[str]],
                    splits: dict) -> Path:
    d = dataset_dir(data_root, dataset)
    d.mkdir(parents=True, exist_ok=True)
    path = d / IMPORTED_FILE
    text = json.dumps({'source': source, 'videos': ids, 'captions': captions, 'splits': splits})
    atomic_write(path, lambda f: f.write(text.encode('utf-8')))
    return path


def import_ce(root: Path, dataset: str, data_root: Path, features_root: Path, progress: bool = True,
              overwrite: bool = False) -> list[Path]:
    """CE's pickles under `root` -> stores + imported.json. Returns the store paths. Stores of
    features extracted here are replaced only with `overwrite`."""
    require_registered(dataset, _AS_KNOWN)  # a bad name fails before the release is read
    cap_file = next(iter(sorted(root.rglob('raw-captions.pkl'))), None)
    if cap_file is None:
        raise FileNotFoundError(f'no raw-captions.pkl under {root}')
    captions = ce_captions(cap_file)
    ids = sorted(captions)
    _check_ids(ids, data_root, dataset, cap_file)
    found = [(f, name) for pattern, name in CE_FILES for f in sorted(root.rglob(pattern))[:1]]
    if not found:
        raise FileNotFoundError(f'no CE feature pickles under {root} (expected e.g. {CE_FILES[0][0]})')
    if not overwrite:
        refuse_extracted(features_root, dataset, [name for _, name in found])
    with _staging() as staged, read_release([('rows', f) for f, _ in found]) as loaders:
        for (f, name), read in zip(tqdm(found, desc='import CE experts', unit='expert', disable=not progress), loaders):
            data = read()
            values = {vid: (data[vid], None) for vid in ids if vid in data}
            if len(values) < len(data):  # said, not dropped silently: a pickle of another dataset shows here
                extra = sorted(set(data) - set(values))
                print(f'{name}: {len(extra)} of the {len(data)} videos of {f.relative_to(root)} are not in '
                      f'{cap_file.name} (e.g. {", ".join(map(str, extra[:3]))}): not imported')
            staged.append(write_store(features_root, dataset, name, ids, values, 'ce', str(f.relative_to(root))))
        splits = _splits(dataset, ids, captions, root, data_root)
    return _commit(staged, data_root, dataset, 'ce', ids, captions, splits)


def import_mmt(root: Path, dataset: str, data_root: Path, features_root: Path, progress: bool = True,
               overwrite: bool = False) -> list[Path]:
    """MMT's per-video HDF5 files under `root` -> stores + imported.json (`overwrite`: as `import_ce`)."""
    require_registered(dataset, _AS_KNOWN)  # a bad name fails before the release is read
    files = sorted(root.glob('*.h5'))
    if not files:
        raise FileNotFoundError(f'no .h5 files in {root}')
    ids = [f.stem for f in files]
    _check_ids(ids, data_root, dataset, root)
    dims: dict[str, int] = {}  # per expert, set by the first file with rows
    captions: dict[str, list[str]] = {}
    per_expert: dict[str, dict[str, tuple[np.ndarray | None, np.ndarray | None]]] = {}
    for f in tqdm(files, desc='read MMT files', unit='video', disable=not progress):
        with _h5(f) as h:
            keys = list(h.keys())
            caps = sorted((int(k.split('.', 1)[1]), k) for k in keys if k.startswith('raw_captions.'))
            captions[f.stem] = [_decode(_h5_read(h, k)) for _, k in caps]
            for k in keys:
                if not k.startswith('features.'):
                    continue
                expert = k.split('.', 1)[1]
                rows, _ = rows_of(_h5_read(h, k), dims.get(expert))
                if rows is not None:
                    dims.setdefault(expert, rows.shape[1])
                times = None
                if rows is not None and f'features_t.{expert}' in h:
                    t = np.asarray(_h5_read(h, f'features_t.{expert}'), np.float32)
                    times = np.stack([t, t], -1) if t.ndim == 1 else t.reshape(-1, 2)
                    if len(times) != len(rows) or not np.isfinite(times).all() or (times[:, 1] < times[:, 0]).any():
                        times = None
                    else:  # stores keep a video's rows in time order (OCR, faces, words may be listed otherwise)
                        order = np.argsort(times[:, 0], kind='stable')
                        rows, times = rows[order], times[order]
                per_expert.setdefault(expert, {})[f.stem] = (rows, times)
    if not per_expert:
        raise ValueError(f'no features.EXPERT datasets in the {len(files)} .h5 files in {root}: not an MMT '
                         'feature release (each VIDEO.h5 holds features.appearance, features.motion, ...)')
    if not overwrite:
        refuse_extracted(features_root, dataset, [MMT_EXPERTS.get(e, e) for e in per_expert])
    with _staging() as staged:
        for e, values in per_expert.items():
            staged.append(write_store(features_root, dataset, MMT_EXPERTS.get(e, e), ids, values, 'mmt',
                                      f'{root} features.{e}'))
        splits = _splits(dataset, ids, captions, root, data_root)
    return _commit(staged, data_root, dataset, 'mmt', ids, captions, splits)


def _decode(value: Any) -> str:
    """An MMT caption dataset's text (ValueError: one of numbers, which str() made a caption of '1.0 1.0')."""
    if isinstance(value, bytes):
        return value.decode('utf-8')
    if isinstance(value, np.ndarray):
        return ' '.join(_decode(v) for v in value.tolist())
    if not isinstance(value, str):
        raise ValueError(f'a caption holds {type(value).__name__} {str(value)[:40]}, not text')
    return value


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog='python -m pipelines.import_features', description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split('\n\n', 1)[1])
    p.add_argument('--source', choices=['ce', 'mmt'], required=True, help="whose release: CE's pickles or MMT's h5 files")
    p.add_argument('--root', type=Path, required=True, help='the unpacked release directory')
    p.add_argument('--dataset', required=True, help='the dataset name to import as (msrvtt, msvd, ...)')
    p.add_argument('--data-root', type=Path, default=data_root_default(),
                   help='dataset folders: imported.json goes to DATA_ROOT/DATASET '
                        f'(default: {DATA_ROOT_HELP})')
    p.add_argument('--features-root', type=Path, default=features_root_default(),
                   help=f'expert stores (default: {FEATURES_ROOT_HELP})')
    p.add_argument('--overwrite', action='store_true',
                   help='replace stores of features extracted here too (earlier imports are always replaced)')
    p.add_argument('--no-progress', action='store_true', help='no progress bar (batch jobs)')
    args = p.parse_args(argv)
    if not args.root.is_dir():
        print(f'error: {args.root} is not a directory', file=sys.stderr)
        return 1
    if args.source == 'ce':
        warnings.warn(f'reading pickle files from {args.root}: only arrays, numbers, strings and '
                      'containers are built from them (a pickle naming any other callable is refused); import only '
                      'releases you trust', stacklevel=1)
    try:
        fn = import_ce if args.source == 'ce' else import_mmt
        paths = fn(args.root.resolve(), args.dataset, args.data_root, args.features_root, not args.no_progress,
                   args.overwrite)
    except (FileNotFoundError, ValueError, OSError, StoreError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    bad = 0
    for path in paths:
        report = check_store(path)
        bad += not report.valid
        print(f'{report.summary()}\n')
    print(f'captions and splits: {dataset_dir(args.data_root, args.dataset) / IMPORTED_FILE}')
    return 2 if bad else 0


if __name__ == '__main__':
    sys.exit(main())
