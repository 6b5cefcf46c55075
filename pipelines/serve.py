"""Search a collection in the browser: a FastAPI service over `train.index`'s index.

    python -m pipelines.serve --run runs/demo/ce/seed0 --index runs/demo/ce/seed0/index/demo
    make serve

GET /               the search page (pipelines/static/search.html)
GET /search?q=&k=   JSON: the top k videos with score, thumbnail, video URL, and the query's
                    mixture weight of each expert (CE's interpretability)
GET /similar?id=&k= JSON: videos like this one, searched by the video's own embedding
GET /thumb/ROW      a thumbnail;  GET /video?path=P  the video file, with HTTP range requests
Only the indexed videos' own paths are served (404 for any other file of the dataset's root), and
they are resolved inside the root: `..`, absolute paths and symlinks that lead out are refused (403).
An index made from another state of the run's checkpoint (retrained since) is refused at start, and a
thumbnail is a 409 once the index folder holds another index than the one loaded (rebuilt since).
Bad input is a 4xx with one line of detail; the server goes on serving.
On a loopback address (the default) only requests naming this machine in their Host header are
answered (localhost, 127.0.0.1, ::1, and each --allowed-host): a web page whose own name is made to
resolve to 127.0.0.1 (DNS rebinding) cannot read the collection through the visitor's browser.
"""
from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from shared.config import DATA_ROOT_HELP, ConfigError, data_root_default
from shared.datasets import DatasetError
from shared.datasets.manifest import resolve_inside
from shared.files import sha256_file
from shared.store import StoreError
from train.captions import build_caption_encoder
from train.index import EMBEDDINGS, STALE_MMT, THUMBS, EmbeddingStore, build_index, default_out, stale_mmt_masks
from train.models.base import TextEmbedding, VideoEmbedding
from train.runs import load_run, run_seeds
from train.search import encode_query
from train.search_index import video_queries

__all__ = ['ServeCfg', 'Collection', 'IndexRebuilt', 'create_app', 'main']

STATIC = Path(__file__).parent / 'static'
#: what a browser on this machine names a loopback server by
LOOPBACK_NAMES = ('localhost', '127.0.0.1', '::1')


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip('[]')).is_loopback
    except ValueError:
        return host.lower() == 'localhost'


def _host_name(header: str) -> str:
    """The name of a Host header without its port ('[::1]:8000' -> '::1')."""
    header = header.strip().lower()
    if header.startswith('['):
        end = header.find(']')
        return header[1:end] if end > 0 and header[end + 1:][:1] in ('', ':') else header
    return header.split(':', 1)[0]


@dataclasses.dataclass(frozen=True)
class ServeCfg:
    """Args: host, port: where uvicorn listens; max_k: the most results one request may ask for;
    allowed_hosts: names a request's Host header may give besides this machine's loopback names
    (a reverse proxy's); '*' any."""

    host: str = '127.0.0.1'
    port: int = 8000
    max_k: int = 100
    allowed_hosts: tuple[str, ...] = ()

    def accepted_hosts(self) -> frozenset[str] | None:
        """The Host names answered, None for any: on a loopback address the loopback names and
        `allowed_hosts`; elsewhere `allowed_hosts` when given (the server was exposed on purpose)."""
        if '*' in self.allowed_hosts:
            return None
        named = {h.lower().strip('[]') for h in self.allowed_hosts}
        if _is_loopback(self.host):
            return frozenset(named | set(LOOPBACK_NAMES))
        return frozenset(named) if named else None

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:  # else uvicorn's traceback, after the collection has loaded
            raise ConfigError(f'--port {self.port}: give a port from 0 to 65535')
        if self.max_k < 1:
            raise ConfigError(f'max_k {self.max_k}: give at least 1')


class IndexRebuilt(RuntimeError):
    """The index folder holds another index than the server loaded: its thumbnails are other videos'."""


def _stat(store: Path) -> tuple[int, ...] | None:
    """What changes when the embedding store's `zarr.json` is made again (None: none there): its inode
    and times, ctime included, which no copy keeps."""
    try:
        st = os.stat(store / 'zarr.json')
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size


def _store_id(store: Path) -> str | None:
    try:
        with open(store / 'zarr.json', 'rb') as f:
            return json.load(f).get('attributes', {}).get('store_id')
    except (OSError, ValueError, AttributeError):
        return None


class Collection:
    """A run's model and text encoder with an index of a collection (`train.index`), loaded once."""

    def __init__(self, run: Path, index: Path, data_root: Path) -> None:
        run = run_seeds(run)[0]
        # before the store is read: an index rebuilt while this loads is not taken for the one read
        self._store, self._stat = index / EMBEDDINGS, _stat(index / EMBEDDINGS)
        loaded = load_run(run)
        self.model = loaded.model
        cfg = loaded.cfg
        self.captions = build_caption_encoder(cfg.model.text, cfg.data, data_root, run, None)
        store = EmbeddingStore(index / EMBEDDINGS)
        if store.attrs['run'] != str(run.resolve()):
            raise ConfigError(f'{index} indexes the videos of run {store.attrs["run"]}, not {run}: pass that --run')
        if store.attrs.get('checkpoint_sha256') != sha256_file(loaded.checkpoint):
            raise ConfigError(f'{index} was made from another state of {loaded.checkpoint} (retrained since?): '
                              f'index it again: python -m train.index --run {run} --out {index} --overwrite '
                              f'--dataset {store.attrs["dataset"]}')
        self.ids, self.paths, self.video = store.read()
        self._store_id = store.attrs.get('store_id')  # None in an index made before it: its stat alone
        if stale_mmt_masks(cfg.model.model, self.video.available):  # its search index renormalises: made again
            raise ConfigError(f'{index} holds {STALE_MMT}: index it again: python -m train.index --run {run} '
                              f'--out {index} --overwrite --dataset {store.attrs["dataset"]}')
        self.served = set(self.paths)  # /video serves these files only, not the rest of the dataset root
        self.row = {v: i for i, v in enumerate(self.ids)}
        self.root = Path(store.attrs['video_root'])
        self.dataset = str(store.attrs['dataset'])
        self.thumbs = index / THUMBS
        self.index = build_index(index)
        experts = list(store.attrs['experts'])
        self.experts = experts if self.video.emb.shape[1] == len(experts) else ['joint']  # one embedding: CE concat, SSB

    def _hits(self, text: TextEmbedding, k: int, skip: int | None = None) -> list[dict]:
        """The top k; each with its experts' mixture weights for the query, renormalised over the
        experts the video has (what its score mixes)."""
        scores, rows = self.index.search(text, k + (skip is not None))
        w = text.weights[0].float()
        hits = []
        for s, r in zip(scores[0].tolist(), rows[0].tolist()):
            if r == skip or r < 0:  # r < 0: fewer candidates than k (an IVF search)
                continue
            a = self.video.available[r].float() * w
            mix = (a / a.sum().clamp(min=1e-8)).tolist()
            hits.append({'id': self.ids[r], 'score': float(s), 'thumb': f'/thumb/{r}', 'video': self.paths[r],
                         'weights': {e: round(m, 3) for e, m, has in zip(self.experts, mix, self.video.available[r])
                                     if has}})
        return hits[:k]

    def search(self, query: str, k: int) -> dict:
        """The top k for free text (ValueError: an empty query, or one of unknown words)."""
        text = encode_query(self.model, self.captions, query)
        weights = {e: round(float(w), 4) for e, w in zip(self.experts, text.weights[0].tolist())}
        return {'query': query, 'weights': weights, 'results': self._hits(text, k)}

    def similar(self, video_id: str, k: int) -> dict:
        """The top k videos like `video_id`, itself left out (KeyError: no such video)."""
        r = self.row[video_id]
        text = video_queries(VideoEmbedding(self.video.emb[r:r + 1], self.video.available[r:r + 1]))
        return {'id': video_id, 'results': self._hits(text, k, skip=r)}

    def current(self) -> None:
        """IndexRebuilt where the index folder no longer holds the index loaded (`train.index --overwrite`
        made another there): thumbnails are read from it by row, and showed other videos beside the results.
        One stat per call; the store's id is read only when the stat differs."""
        now = _stat(self._store)
        if now == self._stat:
            return
        if now is not None and self._store_id is not None and _store_id(self._store) == self._store_id:
            self._stat = now  # the same store, its zarr.json rewritten or copied back
            return
        raise IndexRebuilt('the index was rebuilt since the server started: restart it')

    def thumb(self, row: int) -> Path:
        """Video `row`'s thumbnail (FileNotFoundError: no such row, or none cut; PermissionError: a symlink
        that leads out of the index's thumbs folder, as /video refuses one out of the video root;
        IndexRebuilt: see `current`)."""
        self.current()
        path = self.thumbs / f'{row}.jpg'
        if not 0 <= row < len(self.ids) or not path.is_file():
            raise FileNotFoundError(f'no thumbnail {row}')
        real = _real_inside(path, self.thumbs, f'thumbnail {row} leads outside the index')
        # again: a rebuild removes the thumbnails before the store, and cuts new ones only once its new store
        # is there, so a file found while the store is still the one loaded is this index's
        self.current()
        return real

    def file(self, relative: str) -> Path:
        """An indexed video's file inside the root (PermissionError: outside it, through `..`, an absolute
        path or a symlink; FileNotFoundError: not an indexed video's path, or no such file)."""
        if not relative:
            raise FileNotFoundError('no video path given: ?path= takes a path from the results\' "video"')
        try:
            path = resolve_inside(self.root, relative)
        except DatasetError as err:  # said without the root: a client learns what is wrong with its path, not
            # where this machine keeps its files
            raise PermissionError(str(err).replace(f' {self.root}', '')) from None
        if relative not in self.served:
            raise FileNotFoundError(f'no video {relative!r} in this index')
        real = _real_inside(path, self.root, f'video path {relative!r} leads outside the video root')
        if not real.is_file():
            raise FileNotFoundError(f'no video {relative!r}')
        return real


def _real_inside(path: Path, folder: Path, outside: str) -> Path:
    """`path` with its symlinks resolved, a PermissionError(`outside`) where that leaves `folder`."""
    real, within = os.path.realpath(path), os.path.realpath(folder)
    if os.path.commonpath([real, within]) != within:
        raise PermissionError(outside)
    return Path(real)


def _validation_line(errors: Sequence[Any]) -> str:
    """FastAPI's validation errors as one line: where, what, and the value given (cut short)."""
    parts = []
    for e in errors:
        where = ' '.join(map(str, e.get('loc', ())))  # ('query', 'k') -> 'query k'
        given = e.get('input')
        got = f' (got {given!r:.60})' if isinstance(given, str) else ''
        parts.append(f'{where}: {e.get("msg", "invalid")}{got}')
    return '; '.join(parts) or 'invalid request'


def create_app(collection: Collection, cfg: ServeCfg | None = None):  # -> fastapi.FastAPI
    """The FastAPI app over `collection`."""
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse

    cfg = cfg or ServeCfg()
    app = FastAPI(title='videoexperts search')
    accepted = cfg.accepted_hosts()

    if accepted is not None:
        @app.middleware('http')
        async def known_host(request: Request, call_next: Any) -> Any:
            if _host_name(request.headers.get('host', '')) not in accepted:
                return JSONResponse({'detail': 'unknown Host header: open the page at the address the server printed, '
                                               'or start it with --allowed-host NAME'}, status_code=400)
            return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def one_line(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's detail is a list of error objects: the page showed '[object Object]' for a k left empty
        return JSONResponse({'detail': _validation_line(exc.errors())}, status_code=422)

    def check_k(k: int) -> None:
        if not 1 <= k <= cfg.max_k:
            raise HTTPException(400, f'k must be between 1 and {cfg.max_k}, got {k}')

    # response_model=None: the return annotations are strings here (FileResponse is imported in this
    # function), which pydantic cannot resolve: /openapi.json and /docs answered 500
    @app.get('/', response_model=None)
    def page() -> FileResponse:
        return FileResponse(STATIC / 'search.html', media_type='text/html')

    @app.get('/search')
    def search(q: str = '', k: int = 10) -> dict:
        check_k(k)
        try:
            return collection.search(q, k)
        except ValueError as err:
            raise HTTPException(400, f'{err}: try other words') from None

    @app.get('/similar')
    def similar(id: str, k: int = 10) -> dict:  # noqa: A002 - the query parameter's name
        check_k(k)
        try:
            return collection.similar(id, k)
        except KeyError:
            raise HTTPException(404, f'no video {id!r} in this index') from None

    @app.get('/thumb/{row}', response_model=None)
    def thumb(row: int) -> FileResponse:
        try:
            return FileResponse(collection.thumb(row), media_type='image/jpeg')
        except IndexRebuilt as err:
            raise HTTPException(409, str(err)) from None
        except PermissionError as err:
            raise HTTPException(403, str(err)) from None
        except FileNotFoundError as err:
            raise HTTPException(404, str(err)) from None

    @app.get('/video', response_model=None)
    def video(path: str) -> FileResponse:
        try:
            return FileResponse(collection.file(path))  # Starlette answers Range requests with 206
        except PermissionError as err:
            raise HTTPException(403, str(err)) from None
        except FileNotFoundError as err:
            raise HTTPException(404, str(err)) from None

    # files answer HEAD too (players and link checkers ask it before a GET; FileResponse sends the
    # headers alone); left out of the schema, where a second operation per route is a duplicate id
    for path, endpoint in (('/', page), ('/thumb/{row}', thumb), ('/video', video)):
        app.add_api_route(path, endpoint, methods=['HEAD'], response_model=None, include_in_schema=False)
    return app


def main(argv: list[str] | None = None) -> int:
    d = ServeCfg()
    p = argparse.ArgumentParser(prog='python -m pipelines.serve', description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split('\n\n')[1])
    p.add_argument('--run', type=Path, required=True, help='the run whose model made the index')
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument('--index', type=Path, help='what python -m train.index wrote (its --out)')
    where.add_argument('--dataset', help='the dataset that python -m train.index indexed without --out: its '
                                         'default folder in RUN/index/')
    p.add_argument('--data-root', type=Path, default=data_root_default(),
                   help='dataset folders: the run\'s word vectors (the videos are played from the folder the index '
                        'was made from) (default: '
                        f'{DATA_ROOT_HELP})')
    p.add_argument('--host', default=d.host, help=f'address to listen on (default: {d.host})')
    p.add_argument('--port', type=int, default=d.port, help=f'port (default: {d.port})')
    p.add_argument('--allowed-host', action='append', default=[], metavar='NAME',
                   help='a name requests may give in their Host header besides localhost, 127.0.0.1 and ::1, '
                        'e.g. a reverse proxy\'s (repeatable; * for any). On a non-loopback --host any name is '
                        'answered unless some are given')
    args = p.parse_args(argv)
    try:
        cfg = ServeCfg(args.host, args.port, allowed_hosts=tuple(args.allowed_host))
        index = args.index if args.index is not None else default_out(args.run, args.dataset)
        collection = Collection(args.run, index, args.data_root)
    except (ConfigError, StoreError, FileNotFoundError, ValueError, KeyError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C while the model, word vectors (GoogleNews': a minute) and index load
        print('\ninterrupted while loading: nothing was served', file=sys.stderr)
        return 130
    import uvicorn

    # one query's ops are tiny: more threads only wait for each other (an MEE text encoding took 132 ms
    # on 2 threads and 14 ms on one, on a 2-core CPU shared with other jobs); set only once serving, so
    # that a caller's process (a test) keeps its threads when main returns an error
    torch.set_num_threads(1)

    if not collection.root.is_dir():  # the index records where its videos were: moved since, every play is a 404
        folder = collection.dataset.startswith('folder-')  # folder:PATH's stores name: its PATH is what moved
        where = 'folder:PATH' if folder else f'{collection.dataset} --data-root ROOT'
        print(f'warning: the videos of this index were in {collection.root}, which is not there now: results show, '
              f'videos do not play. Index them where they are now: python -m train.index --run {args.run} --out '
              f'{index} --overwrite --dataset {where}', file=sys.stderr)
    print(f'{len(collection.ids)} videos; open http://{args.host}:{args.port}/')
    uvicorn.run(create_app(collection, cfg), host=cfg.host, port=cfg.port,
                log_level='warning')
    return 0


if __name__ == '__main__':
    sys.exit(main())
