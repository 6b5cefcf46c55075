"""Reading the pickles of CE's release, in a process of its own (`read_release`).

A pickle is a program: the unpickler here builds only numbers, strings, containers and numpy arrays
(any other callable is refused before it is looked up), yet numpy's own reconstruction can still be
led to crash the interpreter, allocate gigabytes or hash for ever from a few hundred bytes (forged
array states and dtypes, codec chains, shared nesting: a reviewer built each). So the importer reads
each pickle in a child process under memory and time limits, which turns the features into float32
rows (an .npz read back without pickle) or the captions into JSON; a crash, a hang or an exhausted
limit is then one line about the file, and nothing of it is imported.
"""
from __future__ import annotations

import _compat_pickle
import contextlib
import functools
import json
import math
import os
import pickle
import resource
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ['ce_captions', 'ce_rows', 'read_release', 'rows_of']

#: the child's address space: the interpreter and numpy, plus this many times the pickle's bytes
_MEMORY_BASE, _MEMORY_PER_BYTE = 1 << 30, 8
#: the child's time: this many seconds, plus one per this many bytes of the pickle
_TIME_BASE, _BYTES_PER_SECOND = 120, 10 << 20


def rows_of(value: Any, dim: int | None) -> tuple[np.ndarray | None, str]:
    """A release value -> (L, D) rows, or None with the reason it is missing."""
    if np.iscomplexobj(value):  # numpy's cast keeps the real parts, with a warning only
        raise ValueError(f'features of complex numbers ({np.asarray(value).dtype}); expected real numbers')
    arr = np.asarray(value, dtype=np.float32)
    if arr.ndim == 0:
        return None, 'missing in the release (NaN)'
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or not arr.shape[1] or (dim is not None and arr.shape[1] != dim):
        raise ValueError(f'expected (D,) or (T, D) features{f" with D={dim}" if dim else ""}, got shape {arr.shape}')
    if not np.isfinite(arr).all():
        return None, 'NaN in the release'
    return arr, ''


def _ce_rows_here(path: Path) -> dict[str, np.ndarray | None]:
    data = _by_video(_read_pickle(path), path, 'a CE feature pickle (dict[video_id -> array])')
    out: dict[str, np.ndarray | None] = {}
    dim = None  # the first video with features sets it
    # every number of a list costs its pickle a byte at least, unless the pickle names one list many
    # times (its memo): 40 KB of [[1] * 10**4] * 10**4 are 10**8 numbers (32 s and 0.8 GB in numpy)
    numbers, budget = 0, path.stat().st_size + 1024
    for vid, value in data.items():
        try:
            numbers += _list_numbers(value)  # first: a cheap count, before the rows are looked into
            if numbers > budget:
                raise ValueError(f'its lists hold {numbers} numbers or more, more than the {budget - 1024}-byte '
                                 'file can (the same list named many times): refused before numpy reads them')
            _at_most_two_deep(value)
            if dim is None and np.ndim(value) >= 1 and np.shape(value)[-1]:  # (0,) sets none: it is refused
                dim = np.shape(value)[-1]
            out[vid] = rows_of(value, dim)[0]
        except (ValueError, TypeError) as err:  # name the file and the video: a release has thousands
            raise ValueError(f'{path}: video {vid}: {err}') from None
    return out


def _at_most_two_deep(value: Any) -> None:
    """A ValueError for Python lists nested deeper than (T, D) rows, before numpy reads them: a pickle
    may name one list many times, so 300 bytes of lists nested 8 deep are 10**8 numbers to numpy
    (35 s and 0.8 GB; 9 deep, ten times that), which it builds before any shape is checked."""
    if isinstance(value, (list, tuple)):
        for row in value:
            if isinstance(row, (list, tuple)) and any(isinstance(x, (list, tuple, dict)) for x in row):
                raise ValueError('features are lists nested more than two deep; expected (D,) or (T, D) rows')


def _list_numbers(value: Any) -> int:
    """How many numbers Python lists of (D,) or (T, D) rows hold (0 for an array: its bytes are in the file)."""
    if not isinstance(value, (list, tuple)):
        return 0
    return sum(len(row) if isinstance(row, (list, tuple)) else 1 for row in value)


def _by_video(data: Any, path: Path, what: str) -> dict[str, Any]:
    """A release's per-video dict with its ids as text; a ValueError naming `path` when it is no
    dict, or when two of its ids are one once written as text (1 and '1'), which would merge."""
    if not isinstance(data, dict):
        raise ValueError(f'{path}: holds a {type(data).__name__}, not {what}: is this the file of the release?')
    out: dict[str, Any] = {}
    for key, value in data.items():
        vid = str(key)
        if vid in out:
            raise ValueError(f'{path}: video id {vid!r} is there twice (as {type(key).__name__} and as another type); '
                             'fix the file so that each video has one key')
        out[vid] = value
    return out


#: the only callables a release pickle may name: what numpy arrays, numpy scalars and plain containers
#: pickle to (protocols 2-5, Python 2 and 3, numpy 1 and 2). Anything else (os.system, builtins.eval,
#: subprocess.Popen ...) is how a pickle runs code, and a feature or caption file has no use for it.
_PICKLE_GLOBALS = frozenset({
    ('numpy', 'ndarray'), ('numpy', 'dtype'),
    *((m, n) for m in ('numpy.core.multiarray', 'numpy._core.multiarray') for n in ('_reconstruct', 'scalar')),
    ('numpy.core.numeric', '_frombuffer'), ('numpy._core.numeric', '_frombuffer'),
    ('collections', 'OrderedDict'), ('_codecs', 'encode'),  # protocol 2 pickles bytes via _codecs.encode
    ('builtins', 'set'), ('builtins', 'frozenset'),
})


#: a release pickle's arrays may hold at most this many times the file's bytes (64 KB counted at least):
#: array data is pickled as it is, so only a forged declaration stands for more
_PICKLE_EXPANSION = 64


class _RefusedGlobal(pickle.UnpicklingError):
    """A release pickle names a callable that is not in `_PICKLE_GLOBALS`."""


class _ArrayType:
    """What a pickle gets for `numpy.ndarray`: only `_reconstruct` takes it. numpy.ndarray called
    itself (`ndarray(shape, dtype, buffer, offset)`) makes an object array of pointers the file chose
    (a 107-byte pickle crashed the importer) or reads memory before its buffer."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        raise _RefusedGlobal('numpy.ndarray with a buffer of its own')


class _ReleaseUnpickler(pickle.Unpickler):
    """An unpickler that builds only numbers, strings, containers and numpy arrays: a pickle that
    names any other callable (the way a pickle runs code) is refused before the callable is looked up.
    Protocol 2 names (`__builtin__.set`) are read as Python 3's, as pickle does; an array declared
    far larger than the file (an object array of 2 * 10**8 Nones from 141 bytes) is refused unbuilt."""

    def __init__(self, file: Any, size: int) -> None:
        super().__init__(file)
        self.budget = _PICKLE_EXPANSION * max(size, 1 << 16)  # bytes of arrays the file may stand for

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) not in _PICKLE_GLOBALS:
            raise _RefusedGlobal(f'{module}.{name}')
        if name == 'ndarray':
            return _ArrayType
        if name == '_reconstruct':
            return self._reconstruct
        return super().find_class(module, name)

    def _reconstruct(self, subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
        if subtype is not _ArrayType:
            raise _RefusedGlobal(f'numpy _reconstruct of {subtype!r}')
        dtype = np.dtype(dtype)
        size = math.prod(int(n) for n in (shape if isinstance(shape, (tuple, list)) else (shape,)))
        if size * max(dtype.itemsize, 8) > self.budget:
            raise ValueError(f'an array of {size} values of {dtype} is declared in a {self.budget // _PICKLE_EXPANSION}'
                             '-byte file: refused, not built')
        return np.ndarray(shape, dtype)  # what numpy's _reconstruct makes: an empty array, filled by its state


def _read_pickle(path: Path) -> Any:
    with open(path, 'rb') as f:
        try:
            return _ReleaseUnpickler(f, path.stat().st_size).load()  # noqa: S301 - restricted (find_class)
        except _RefusedGlobal as err:
            raise ValueError(f'{path}: refused: the pickle would call {err}, which is no array, number, string or '
                             'container (pickles run code that way); a release of features has no use for it. '
                             'Nothing of it was run') from None
        except (MemoryError, RecursionError):  # a pickle that stands for more than the reader's limits
            raise
        except Exception as err:  # noqa: BLE001 - whatever a file that is no pickle makes the unpickler raise
            raise ValueError(f'{path}: not a readable pickle ({type(err).__name__}: {err}); put the file of '
                             'the release there, whole') from None


#: characters of caption text a captions pickle may stand for per byte of it (64 KB counted at least): a
#: token the pickle names again (its memo) costs 2-5 bytes and is a word of text, a few times that at most
_CAPTION_EXPANSION = 16


def _ce_captions_here(path: Path) -> dict[str, list[str]]:
    """CE's raw-captions.pkl: per video, a list of captions, each a token list (or a string)."""
    out = {}
    chars, budget = 0, _CAPTION_EXPANSION * max(path.stat().st_size, 1 << 16)
    for vid, caps in _by_video(_read_pickle(path), path, 'CE captions (dict[video_id -> list of token lists])').items():
        if not isinstance(caps, (list, tuple)) or not all(
                isinstance(c, str) or (isinstance(c, (list, tuple)) and all(isinstance(t, str) for t in c))
                for c in caps):
            raise ValueError(f'{path}: video {vid!r}: captions must be a list of token lists (or strings), got '
                             f'{type(caps).__name__} of {len(caps) if hasattr(caps, "__len__") else 1}')
        # counted before any is joined: a pickle names one long string many times (1 MB of it stood for
        # 400 million characters, every one then in imported.json, which each command reads)
        chars += sum(len(c) if isinstance(c, str) else sum(map(len, c)) + len(c) for c in caps)
        if chars > budget:
            raise ValueError(f'{path}: video {vid!r}: the captions so far hold {chars} characters, more than '
                             f'{_CAPTION_EXPANSION} per byte of the file (the same text named many times): refused '
                             'before they are built')
        out[vid] = [c if isinstance(c, str) else ' '.join(c) for c in caps]
    return out


def ce_rows(path: Path) -> dict[str, np.ndarray | None]:
    """A CE feature pickle's (T, D) float32 rows per video (None: missing in the release), read in a
    child process (see the module's docstring); a ValueError naming `path` for a file it refuses."""
    with read_release([('rows', path)]) as (read,):
        return read()


def ce_captions(path: Path) -> dict[str, list[str]]:
    """CE's raw-captions.pkl: per video, its captions as text, read in a child process."""
    with read_release([('captions', path)]) as (read,):
        return read()


@contextlib.contextmanager
def read_release(files: list[tuple[str, Path]]) -> Iterator[list[Callable[[], Any]]]:
    """Read every (kind, path) ('rows' or 'captions') in one child process, under limits (one start for
    an import's pickles); yields a loader per file, which reads its result back when called."""
    with tempfile.TemporaryDirectory(prefix='videoexperts-release-') as tmp:
        out = Path(tmp)
        _in_child(files, out)
        yield [functools.partial(_result, kind, out / str(k)) for k, (kind, _) in enumerate(files)]


def _result(kind: str, stem: Path) -> Any:
    if kind == 'captions':
        return json.loads(stem.with_suffix('.captions.json').read_text(encoding='utf-8'))
    ids = json.loads(stem.with_suffix('.ids.json').read_text(encoding='utf-8'))
    with np.load(stem.with_suffix('.rows.npz'), allow_pickle=False) as rows:
        return {vid: (rows[str(i)] if str(i) in rows.files else None) for i, vid in enumerate(ids)}


def _in_child(files: list[tuple[str, Path]], out: Path) -> None:
    """Run `_child` on `files` under the limits; a ValueError for whatever it refused or did not survive."""
    sizes = [p.stat().st_size for _, p in files]
    memory = _MEMORY_BASE + _MEMORY_PER_BYTE * max(sizes)  # one file at a time
    seconds = _TIME_BASE + sum(sizes) // _BYTES_PER_SECOND

    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join(filter(None, [root, os.environ.get('PYTHONPATH')])),
           'OMP_NUM_THREADS': '1', 'OPENBLAS_NUM_THREADS': '1'}
    # the child sets its own limits (a preexec_fn may deadlock where the parent has threads: zarr's)
    cmd = [sys.executable, '-c', 'from pipelines.release_pickle import _child; _child()', str(out),
           json.dumps([[kind, str(path)] for kind, path in files]), str(memory), str(seconds)]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=2 * seconds)
        code = proc.returncode
    except subprocess.TimeoutExpired:
        code = None
    if code == 0:
        return
    said = out / 'error.txt'
    if said.is_file():
        raise ValueError(said.read_text(encoding='utf-8'))
    reading = (out / 'reading.txt').read_text(encoding='utf-8') if (out / 'reading.txt').is_file() else files[0][1]
    if code is None:
        why = f'took over {2 * seconds} s'
    elif code < 0:
        name = signal.Signals(-code).name
        why = {'SIGXCPU': f'took over {seconds} s of CPU', 'SIGKILL': 'was killed (out of memory?)'}.get(
            name, f'crashed ({name})')
    else:
        why = f'failed ({(proc.stderr.strip().splitlines() or ["exit " + str(code)])[-1][:200]})'
    raise ValueError(f'{reading}: reading it {why}: a damaged or hostile pickle (it is read in a process of its '
                     'own, under limits); nothing of the release was imported')


def _child() -> None:
    """The child's side (argv: OUT, a JSON list of [kind, path], its memory and CPU seconds): each
    file's result as OUT/K.*, or OUT/error.txt with exit 3 for one it refuses; OUT/reading.txt names
    the file at work."""
    out, files, memory, seconds = Path(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CPU, (seconds, seconds + 5))
    for k, (kind, name) in enumerate(files):
        path, stem = Path(name), out / str(k)
        _note(out / 'reading.txt', name)
        try:
            if kind == 'rows':
                rows = _ce_rows_here(path)
                np.savez(stem.with_suffix('.rows.npz'),
                         **{str(i): r for i, r in enumerate(rows.values()) if r is not None})
                _note(stem.with_suffix('.ids.json'), json.dumps(list(rows)))
            else:
                _note(stem.with_suffix('.captions.json'), json.dumps(_ce_captions_here(path)))
        except (ValueError, MemoryError, RecursionError) as err:
            text = str(err) if isinstance(err, ValueError) else (
                f'{path}: reading it ran out of its limits ({type(err).__name__}): a damaged or hostile pickle; '
                'nothing of the release was imported')
            _note(out / 'error.txt', text)
            sys.exit(3)


def _note(path: Path, text: str) -> None:
    """A file of the child's temporary folder, read by the parent once the child has ended (no
    rename needed: a child cut short is reported as such, and its folder removed)."""
    with open(path, 'w', encoding='utf-8') as f:
        f.write(text)
