"""Embedding a whole collection for search: every video of a dataset, not one split.

    python -m train.index --run runs/ce-demo-official --dataset demo [--shard I --num-shards N]

A run's tested model embeds each video from the dataset's expert stores into an embedding store
(Zarr, chunked along the videos like the expert stores; a chunk is the unit of work, its `status`
written last, so a rerun skips finished chunks and shards of a cluster job never share one), and
a thumbnail of each video is cut from its file (FFmpeg) with the chunk. Once every chunk is done,
the search index (`train.search_index`) is built beside it. The layout under --out:

    embeddings.zarr/   video_ids [N], paths [N] (inside the dataset root), emb [N, M, d] float32,
                       available [N, M] bool, status [N] uint8 (0 pending, 1 done), chunk_sums [chunks] (JSON
                       {array: CRC-32} of a chunk's emb and available, written before its status); its attributes name
                       the run and the sha256 of the checkpoint that made it (a retrained run's index
                       is refused, or made again with --overwrite)
    thumbs/ROW.jpg     one per video (missing where FFmpeg could not cut one)
    faiss/             one FAISS index per availability pattern
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import uuid
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from shared.config import DATA_ROOT_HELP, FEATURES_ROOT_HELP, ConfigError, data_root_default, features_root_default
from shared.datasets import DatasetError, Manifest, load_manifest, stores_name
from shared.device import pick_device
from shared.files import make_dir, raise_if_stopping, remove_stale_temps, sha256_file, stop_asked, stop_handler, temp_path
from shared.logs import setup_logging
from shared.media import MediaError, count_media, ffmpeg_exe
from shared.store import StoreError, shard_chunks, unreadable
from train.config import RunCfg
from train.data import aggregate, open_expert_store
from train.models.base import RetrievalModel, VideoEmbedding
from train.runs import load_run, run_seeds
from train.search_index import APPROX_KINDS, IndexCfg, SearchIndex

__all__ = ['EMBEDDINGS', 'THUMBS', 'FAISS', 'STALE_MMT', 'EmbeddingStore', 'stale_mmt_masks', 'embed_collection', 'build_index', 'default_out', 'thumbnail',
           'serve_command', 'main']

#: why an MMT index made before 7909de1 cannot be served as it is
STALE_MMT = ('MMT masks of an earlier version, which left a missing expert out of a video\'s scores; MMT mixes '
             'every expert\'s agg output with its own weight (eq. 6)')


def stale_mmt_masks(model: str, available: Any) -> bool:
    """Whether MMT embeddings mark an expert missing: made before MMT scored every expert (eq. 6), when
    a missing one's weight went to the others. The embeddings are the same: only the mask is stale."""
    return model == 'mmt' and not bool(available.all())

_logger = logging.getLogger(__name__)

EMBEDDINGS, THUMBS, FAISS = 'embeddings.zarr', 'thumbs', 'faiss'
CHUNK_SUMS = 'chunk_sums'
CHUNK = 256  # videos per chunk (the unit of work of one writer), rounded up to the expert stores' units
THUMB_WIDTH = 240


class EmbeddingStore:
    """An open embedding store (see the module doc), created once and resumed after that."""

    def __init__(self, path: Path) -> None:
        if not (path / 'zarr.json').is_file():
            raise StoreError(f'no embedding store at {path}: make it with python -m train.index')
        self.path = path
        with self.readable():
            self.group = zarr.open_group(str(path), mode='r+', zarr_format=3)
            self.attrs = dict(self.group.attrs)
            self.n_videos = int(self.group['status'].shape[0])
            self.chunk_size = int(self.attrs['chunk_size'])
            for name in ('video_ids', 'paths', 'emb', 'available'):
                self.group[name]  # noqa: B018 - each array is there (KeyError)
        self.n_chunks = -(-self.n_videos // self.chunk_size)

    def readable(self) -> contextlib.AbstractContextManager[None]:
        """What cannot be read of the store in the block is one StoreError naming it and the fix."""
        return unreadable(self.path, 'embedding store', f'Remove {self.path.parent} and index again')

    @classmethod
    def create(cls, path: Path, manifest: Manifest, n_emb: int, dim: int, attrs: dict,
               chunk_size: int = CHUNK) -> EmbeddingStore:
        """Create the store (built aside and renamed into place: shards that start together never see
        half a store), or open the one there when it was made by the same run for the same videos."""
        if chunk_size < 1:
            raise ValueError(f'the chunk size must be >= 1 video, got {chunk_size}')
        remove_stale_temps(path)  # what builds killed with -9 left (Ctrl-C's are removed below)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = temp_path(path, unique=True)
            try:
                # store_id: what tells this store from one rebuilt in its place (`pipelines.serve` asks it)
                cls._build(tmp, manifest, n_emb, dim, {**attrs, 'chunk_size': chunk_size, 'store_id': uuid.uuid4().hex})
            except BaseException:  # a failed or interrupted build leaves no half store behind
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            try:
                os.rename(tmp, path)
            except OSError:  # another shard's store is in place: use that one
                shutil.rmtree(tmp, ignore_errors=True)
        store = cls(path)
        other = store.made_by_other(attrs, manifest.video_ids)
        if other:
            raise StoreError(f'{path} holds embeddings of {other}: index again with --overwrite, or give another --out')
        return store

    @staticmethod
    def _build(path: Path, manifest: Manifest, n_emb: int, dim: int, attrs: dict) -> None:
        n, c = len(manifest.video_ids), attrs['chunk_size']
        g = zarr.open_group(str(path), mode='w-', zarr_format=3, attributes=attrs)
        g.create_array('video_ids', shape=(n,), chunks=(c,), dtype=str, fill_value='')[:] = \
            np.asarray(manifest.video_ids, dtype=str)
        g.create_array('paths', shape=(n,), chunks=(c,), dtype=str, fill_value='')[:] = \
            np.asarray([os.path.relpath(p, manifest.root) for p in manifest.paths], dtype=str)
        g.create_array('emb', shape=(n, n_emb, dim), chunks=(c, n_emb, dim), dtype='float32', fill_value=0)
        g.create_array('available', shape=(n, n_emb), chunks=(c, n_emb), dtype=bool, fill_value=False)
        g.create_array('status', shape=(n,), chunks=(c,), dtype='uint8', fill_value=0)
        g.create_array(CHUNK_SUMS, shape=(-(-n // c),), chunks=(1,), dtype=str, fill_value='')

    def made_by_other(self, attrs: dict, video_ids: list[str]) -> str:
        """What differs from a store `attrs` would make of `video_ids` ('' when nothing): another run, another
        state of its checkpoint (retrained or resumed in place: same name, other weights), or other videos."""
        if self.attrs.get('run') != attrs['run']:
            return f'another run ({self.attrs.get("run")})'
        if (self.attrs.get('checkpoint'), self.attrs.get('checkpoint_sha256')) != \
                (attrs['checkpoint'], attrs['checkpoint_sha256']):
            return f'another state of the run\'s checkpoint than {attrs["checkpoint"]} now holds'
        if [str(v) for v in self.group['video_ids'][:]] != list(video_ids):
            return 'another video list'
        done = np.asarray(self.group['status'][:]).astype(bool)  # rows not embedded yet hold the fill value
        if stale_mmt_masks(attrs.get('model', ''), np.asarray(self.group['available'][:])[done]):
            return STALE_MMT
        return ''

    def chunk_rows(self, chunk: int) -> range:
        return range(chunk * self.chunk_size, min((chunk + 1) * self.chunk_size, self.n_videos))

    def pending(self, chunks: range) -> list[int]:
        status = self.group['status']
        with self.readable():
            return [c for c in chunks if not np.asarray(status[self.chunk_rows(c).start:self.chunk_rows(c).stop]).all()]

    def write(self, chunk: int, emb: VideoEmbedding) -> None:
        """One whole chunk; `status` last, so a chunk cut short reads as pending."""
        r = self.chunk_rows(chunk)
        self.group['emb'][r.start:r.stop] = emb.emb.float().cpu().numpy()
        arrays = {'emb': emb.emb.float().cpu().numpy(), 'available': emb.available.bool().cpu().numpy()}
        for name, value in arrays.items():
            self.group[name][r.start:r.stop] = value
        if CHUNK_SUMS in self.group:  # a store made before them has none: its chunks are checked by their files
            self.group[CHUNK_SUMS][chunk:chunk + 1] = np.asarray(
                [json.dumps({name: _crc(value) for name, value in arrays.items()})], dtype=str)
        self.group['status'][r.start:r.stop] = np.ones(len(r), np.uint8)

    def complete(self) -> bool:
        return not self.pending(range(self.n_chunks))

    def read(self) -> tuple[list[str], list[str], VideoEmbedding]:
        """(video ids, paths inside the dataset root, embeddings) of every video.

        Raises:
            StoreError: a finished chunk's data is missing or not as written (`damage`).
        """
        g = self.group
        with self.readable():
            ids, paths = [str(v) for v in g['video_ids'][:]], [str(p) for p in g['paths'][:]]
            emb, available = np.asarray(g['emb'][:]), np.asarray(g['available'][:])
            problem = self.damage({'emb': emb, 'available': available}, ids, paths)
        if problem:
            raise StoreError(f'{self.path}: {problem} (a partial copy of the index folder?). Index it again: python -m '
                             f'train.index --run {self.attrs.get("run")} --dataset {self.attrs.get("dataset")} --out '
                             f'{self.path.parent} --overwrite')
        return ids, paths, VideoEmbedding(torch.from_numpy(emb), torch.from_numpy(available))

    def damage(self, arrays: dict[str, np.ndarray] | None = None, ids: list[str] | None = None,
               paths: list[str] | None = None) -> str:
        """What of the finished chunks is missing or not as written, or '' (read here where not given).

        Zarr reads a missing chunk file as the fill value: a done chunk without its `emb` file searched as
        zeros, every score alike. Each chunk is checked against its recorded sums; in a store made before
        them, by its files (a done chunk must have its emb file: embeddings are never all 0).
        """
        g = self.group
        with self.readable():
            if arrays is None:
                arrays = {'emb': np.asarray(g['emb'][:]), 'available': np.asarray(g['available'][:])}
            ids = [str(v) for v in g['video_ids'][:]] if ids is None else ids
            paths = [str(p) for p in g['paths'][:]] if paths is None else paths
            status = np.asarray(g['status'][:]).astype(bool)
            sums = [str(x) for x in g[CHUNK_SUMS][:]] if CHUNK_SUMS in g else None
        if '' in ids or '' in paths:  # never written empty: their chunk file is missing
            return 'its video ids or paths are missing (a chunk file lost)'
        for c in range(self.n_chunks):
            r = self.chunk_rows(c)
            if not status[r.start:r.stop].all():
                continue
            where = f'chunk {c} (videos {r.start}-{r.stop - 1})'
            if sums is None:
                if not self._chunk_file('emb', c).is_file():
                    return f'{where} is done but its emb chunk file is missing'
                continue
            try:
                recorded = json.loads(sums[c]) if sums[c] else None
            except ValueError:
                recorded = None
            if not isinstance(recorded, dict):
                return f'{where} is done but its recorded chunk sums are missing or damaged'
            bad = [name for name, value in arrays.items() if recorded.get(name) != _crc(value[r.start:r.stop])]
            if bad:
                return f'{where} is done but its {" and ".join(bad)} data is not what was written (a chunk file missing)'
        return ''

    def _chunk_file(self, name: str, chunk: int) -> Path:
        arr = self.group[name]
        return self.path / name / arr.metadata.encode_chunk_key((chunk,) + (0,) * (arr.ndim - 1))


def _crc(x: np.ndarray) -> int:
    """CRC-32 of an array as the store holds it: float -0.0 as 0.0 (`+ 0`), since a chunk equal to the fill
    value 0 is never written and reads back as +0.0."""
    return zlib.crc32(np.ascontiguousarray(x + 0 if x.dtype.kind == 'f' else x).tobytes())


def thumbnail(video: Path, out: Path) -> bool:
    """A JPEG of a representative frame among the video's first 100 (FFmpeg's `thumbnail` filter);
    False, logged, where FFmpeg cannot make one: the page shows the video's id instead."""
    tmp = out.with_name(f'.{out.name}.tmp.jpg')
    try:
        proc = subprocess.run([ffmpeg_exe(), '-hide_banner', '-nostdin', '-loglevel', 'error', '-y', '-i', str(video),
                               '-vf', f'thumbnail,scale={THUMB_WIDTH}:-2', '-frames:v', '1', str(tmp)],
                              capture_output=True, text=True, timeout=120, check=False)
    except (MediaError, OSError, subprocess.TimeoutExpired) as err:
        _logger.warning('no thumbnail for %s: %s', video, err)
        return False
    except BaseException:  # Ctrl-C or SIGTERM: subprocess.run killed FFmpeg, whose file is cut short
        tmp.unlink(missing_ok=True)
        raise
    if proc.returncode != 0 or not tmp.is_file():
        _logger.warning('no thumbnail for %s: %s', video, (proc.stderr.strip().splitlines() or ['ffmpeg failed'])[-1])
        return False
    os.replace(tmp, out)
    return True


@torch.no_grad()
def _embed_rows(model: RetrievalModel, cfg: RunCfg, stores: dict, rows: range, device: torch.device) -> VideoEmbedding:
    """The model's video embedding of store rows `rows`, aggregated as in training (`train.data.aggregate`)."""
    inputs = {}
    for spec in cfg.model.experts:
        read = stores[spec.name].read(rows=slice(rows.start, rows.stop))
        if (read.status == 0).any():
            raise StoreError(f'{stores[spec.name].path} has pending videos in rows {rows.start}-{rows.stop - 1}: '
                             'finish the extraction first')
        inputs[spec.name] = aggregate(spec, read).batch(np.arange(len(rows))).to(device)
    return model.encode_video(inputs)


def embed_collection(run: Path, manifest: Manifest, features_root: Path, out: Path, shard: int = 0,
                     num_shards: int = 1, device: torch.device | str = 'cpu', chunk_size: int = CHUNK,
                     overwrite: bool = False) -> EmbeddingStore:
    """Embed this shard's chunks of every video of `manifest` with `run`'s model, and cut their thumbnails.

    `chunk_size` is rounded up to a multiple of the expert stores' units of work (`ExpertStore.unit_size`),
    so that each unit is read once. With `overwrite`, an index under `out` made by another run, checkpoint
    state or video list is removed (embeddings, thumbnails, FAISS) and made again.

    Raises:
        ConfigError: not a finished run; StoreError: an expert store is missing or unfinished, or `out`
        holds another run's index; ValueError: a chunk size below 1.
    """
    if chunk_size < 1:  # before any model loads
        raise ValueError(f'--chunk-size must be >= 1 video, got {chunk_size}')
    make_dir(out, 'index folder', 'give another --out')
    loaded = load_run(run, device)
    stores = {s.name: open_expert_store(features_root, manifest, s.name)[0] for s in loaded.cfg.model.experts}
    for store in stores.values():  # rows are read by position: they must be the manifest's videos, in order
        if list(store.video_ids) != list(manifest.video_ids):
            raise StoreError(f'{store.path} holds other videos than the {manifest.name} manifest lists now: '
                             f'extract it again: python -m extract --dataset {shlex.quote(manifest.argument)} --overwrite')
    # a chunk that splits an expert store's unit (a shard file of 512 videos) would read that unit twice
    unit = math.lcm(*(s.unit_size for s in stores.values()))
    if chunk_size % unit:
        chunk_size = -(-chunk_size // unit) * unit
        _logger.info('chunks of %d videos: a multiple of the expert stores\' units of %d', chunk_size, unit)
    probe = _embed_rows(loaded.model, loaded.cfg, stores, range(0, min(1, len(manifest.video_ids))), device)
    attrs = {'run': str(run.resolve()), 'checkpoint': loaded.checkpoint.name,
             'checkpoint_sha256': sha256_file(loaded.checkpoint), 'model': loaded.cfg.model.model,
             'dataset': manifest.name, 'video_root': str(Path(manifest.root).resolve()),
             'experts': [s.name for s in loaded.cfg.model.experts]}
    if overwrite and (out / EMBEDDINGS).exists():
        old = EmbeddingStore(out / EMBEDDINGS)
        other = old.made_by_other(attrs, manifest.video_ids)
        other = f'holds embeddings of {other}' if other else old.damage()  # damaged: a partial copy
        if other:
            _logger.warning('%s %s: made again (--overwrite)', out / EMBEDDINGS, other)
            for name in (FAISS, THUMBS, EMBEDDINGS):  # the store last: a kill in between is refused on rerun
                shutil.rmtree(out / name, ignore_errors=True)
    store = EmbeddingStore.create(out / EMBEDDINGS, manifest, probe.emb.shape[1], probe.emb.shape[2], attrs,
                                  chunk_size)
    make_dir(out / THUMBS, 'thumbnail folder', 'remove that file and rerun')
    todo = store.pending(shard_chunks(store.n_chunks, shard, num_shards))
    for i, c in enumerate(todo):
        raise_if_stopping()  # a Ctrl-C or SIGTERM lost in a finaliser ("Exception ignored"): else every chunk ran
        rows = store.chunk_rows(c)
        for r in rows:  # thumbnails before the status: a finished chunk has all it will have
            thumbnail(manifest.paths[r], out / THUMBS / f'{r}.jpg')
        store.write(c, _embed_rows(loaded.model, loaded.cfg, stores, rows, device))
        _logger.info('chunk %d (%d/%d of this shard) done', c, i + 1, len(todo))
    return store


def build_index(out: Path, cfg: IndexCfg | None = None) -> SearchIndex:
    """The search index of a complete embedding store, built once (aside, then renamed) and loaded after that.

    Raises:
        StoreError: the store is not complete, or the FAISS index there was built from other embeddings.
    """
    store = EmbeddingStore(out / EMBEDDINGS)
    remove_stale_temps(out / FAISS)  # what builds killed with -9 left, each a copy of the index
    source = {'checkpoint_sha256': store.attrs.get('checkpoint_sha256')}  # what the index was built from
    if (out / FAISS / 'index.json').is_file():
        index = SearchIndex.load(out / FAISS)
        if index.source != source:
            raise StoreError(f'{out / FAISS} was built from other embeddings than {store.path} holds: remove it, '
                             'python -m train.index builds it again')
        return index
    if not store.complete():
        raise StoreError(f'{store.path} is not complete: run every shard of python -m train.index first')
    index = SearchIndex(store.read()[2], cfg)
    tmp = temp_path(out / FAISS)
    try:
        index.save(tmp, source)
    except BaseException:  # Ctrl-C or SIGTERM included: no half-saved index is left behind, as for the store
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        os.rename(tmp, out / FAISS)
    except OSError:  # another shard built it first
        shutil.rmtree(tmp, ignore_errors=True)
    return index


def default_out(run: Path, dataset: str) -> Path:
    """Where `main` writes `dataset`'s index without --out (and `pipelines.serve --dataset` reads it):
    RUN/index/NAME in the run's first seed, NAME the dataset's stores name (``folder-NAME-HASH`` for
    folder:PATH). Reads nothing of the dataset."""
    return run_seeds(run)[0] / 'index' / stores_name(dataset)


def serve_command(run: Path, index: Path, data_root: Path) -> str:
    """The shell line that serves `index`: with its data root, where the run's word vectors and the
    videos the page plays are (the server's default root may be another)."""
    return shlex.join(['python', '-m', 'pipelines.serve', '--run', str(run), '--index', str(index),
                       '--data-root', str(data_root)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog='python -m train.index', description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split('\n\n')[1])
    p.add_argument('--run', type=Path, required=True, help='a finished run (its first seed when it has several)')
    p.add_argument('--dataset', required=True, help='a registered dataset or folder:PATH')
    p.add_argument('--out', type=Path, help='where the index goes (default: RUN/index/DATASET, DATASET the name of '
                   'its stores: folder-NAME-HASH for folder:PATH)')
    p.add_argument('--shard', type=int, default=int(os.environ.get('SLURM_ARRAY_TASK_ID', 0)),
                   help='this job\'s shard of whole chunks (default: $SLURM_ARRAY_TASK_ID, else 0)')
    p.add_argument('--num-shards', type=int, default=int(os.environ.get('SLURM_ARRAY_TASK_COUNT', 1)),
                   help='shards in all (default: $SLURM_ARRAY_TASK_COUNT, else 1)')
    p.add_argument('--data-root', type=Path, default=data_root_default(),
                   help=f'datasets\' videos and word vectors (default: {DATA_ROOT_HELP})')
    p.add_argument('--features-root', type=Path, default=features_root_default(),
                   help=f'the expert stores (default: {FEATURES_ROOT_HELP})')
    p.add_argument('--device', default='cpu', help='cpu, cuda, cuda:1 ... (default: cpu)')
    p.add_argument('--chunk-size', type=int, default=CHUNK,
                   help=f'videos per chunk, the unit of work, rounded up to a multiple of the expert stores\' units '
                        f'(default: {CHUNK})')
    p.add_argument('--overwrite', action='store_true',
                   help='make the index again where --out holds one of another run, checkpoint state or video list')
    p.add_argument('--approx', choices=APPROX_KINDS, default=IndexCfg.approx,
                   help=f'the approximate index of a large availability pattern (default: {IndexCfg.approx})')
    p.add_argument('--approx-threshold', type=int, default=IndexCfg.approx_threshold,
                   help='a pattern with more videos than this gets the approximate index, its candidates scored '
                        f'exactly (default: {IndexCfg.approx_threshold})')
    args = p.parse_args(argv)
    setup_logging()
    # SIGTERM (a SLURM time limit or pre-emption of a shard, a `kill`) stops as Ctrl-C does: one line, and
    # the half-made thumbnail and FAISS folder removed, where its default killed the process silently. Both
    # are remembered (`stop_handler`): a KeyboardInterrupt lost in a finaliser is raised again at the next
    # chunk (`raise_if_stopping`)
    main_thread = threading.current_thread() is threading.main_thread()  # signal.signal refuses others
    stop_asked.clear()
    previous = {s: signal.signal(s, _stop) for s in (signal.SIGINT, signal.SIGTERM)  # not a Ctrl-C ignored (nohup)
                if main_thread and (s == signal.SIGTERM or signal.getsignal(s) is not signal.SIG_IGN)}
    try:
        run = run_seeds(args.run)[0]
        manifest = load_manifest(args.dataset, args.data_root)
        out = args.out or default_out(run, args.dataset)
        shard_chunks(1, args.shard, args.num_shards)  # a bad shard number: one line before any model loads
        index_cfg = IndexCfg(approx_threshold=args.approx_threshold, approx=args.approx)  # as is a bad setting
        store = embed_collection(run, manifest, args.features_root, out, args.shard, args.num_shards,
                                 torch.device(pick_device(args.device)), args.chunk_size, args.overwrite)
        if not store.complete():
            print(f'shard {args.shard} of {args.num_shards} done; the index is built once every shard is')
            return 0
        index = build_index(out, index_cfg)
    except (ConfigError, DatasetError, StoreError, FileNotFoundError, ValueError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: a chunk's status is written last, so finished chunks stay
        _stopping(main_thread)
        print('\ninterrupted: finished chunks are kept; rerun the same command to continue', file=sys.stderr)
        return 130
    finally:
        stop_asked.clear()  # (tests call `main` in one process)
        for s, handler in previous.items():
            if signal.getsignal(s) is _stop:  # (after an interrupt, SIGTERM stays ignored: `_stopping`)
                signal.signal(s, handler)
    for pattern, recall in index.recall.items():
        print(f'approximate index of pattern {pattern}: recall@10 against exact {recall:.3f}')
    # the index holds the manifest's videos (`embed_collection` refuses other ones); stills are not 'videos'
    print(f'{count_media(manifest.paths)} indexed in {out}\nserve it: {serve_command(run, out, args.data_root)}')
    return 0


def _stopping(main_thread: bool) -> None:
    """Stopping after Ctrl-C or SIGTERM: more SIGTERMs are ignored (the handler set up in `main` is not put
    back), so that the line saying how to go on and the cleanup after it run whole."""
    if main_thread:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _stop(signum: int, frame: object) -> None:
    """Ctrl-C and SIGTERM stop the process (finished chunks stay), remembered for `raise_if_stopping`;
    once the interrupt reaches `main`, more SIGTERMs are ignored (`_stopping`)."""
    stop_handler(signum, frame)


if __name__ == '__main__':
    sys.exit(main())
