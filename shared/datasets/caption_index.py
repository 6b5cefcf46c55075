"""A compact index of a timed-caption file too big to hold as Python objects (HowTo100M's caption.json).

The source is ``{video_id: {"start": [...], "end": [...], "text": [...]}}``, several GB. It is
stream-parsed once into a folder beside it, ``{source}.index/``, of numpy arrays: the video ids sorted
(one UTF-8 blob + offsets), each video's first caption and count, each caption's (start, end) and
its text (one UTF-8 blob + offsets). The folder records the source's size and mtime and is rebuilt
when they change. Readers memory-map the arrays on first use, so DataLoader workers share the
pages through the OS cache and a pickled index is only its path.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from array import array
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np

from shared.datasets.manifest import DatasetError

__all__ = ['CaptionIndex', 'load_caption_index', 'iter_json_object', 'INDEX_VERSION']

#: bumped when the index layout changes, so that old folders are rebuilt
INDEX_VERSION = 1
#: the index's files, ``{name}.bin`` of these numbers each
_DTYPES = {'id_blob': np.uint8, 'id_offsets': np.int64, 'first': np.int64, 'count': np.int64, 'times': np.float64,
           'text_blob': np.uint8, 'text_offsets': np.int64}
_WS = re.compile(r'[ \t\n\r]*')
_NUMBER = frozenset('0123456789+-.eE')  # characters that may go on a JSON number
T = TypeVar('T')


def iter_json_object(path: Path, what: str, chunk_chars: int = 1 << 20) -> Iterator[tuple[str, object]]:
    """The (key, value) pairs of the JSON object that makes up file `path`, read a chunk at a time.

    Memory holds one value (one video's entry) and a chunk, never the file. Bad JSON is a
    DatasetError naming the file, `what` it should be and the character where reading stopped.
    """
    decoder = json.JSONDecoder()
    with open(path, encoding='utf-8', newline='') as f:
        buf, pos, base, eof = '', 0, 0, False

        def more(want: int) -> None:
            nonlocal buf, pos, base, eof
            text = f.read(want)
            eof = not text
            buf, base, pos = buf[pos:] + text, base + pos, 0  # drop what was read: memory stays one value

        def bad(why: str) -> DatasetError:
            return DatasetError(f'{path}: not {what} ({why} at character {base + pos}): put the file of the release '
                                'there, as released')

        def skip_ws() -> None:
            nonlocal pos
            while True:
                pos = _WS.match(buf, pos).end()
                if pos < len(buf) or eof:
                    return
                more(chunk_chars)

        def value() -> object:
            nonlocal pos
            want = chunk_chars
            while True:
                try:
                    obj, end = decoder.raw_decode(buf, pos)
                    # a number cut by the chunk's end parses as a shorter one: whole once a non-digit follows
                    number = isinstance(obj, (int, float)) and not isinstance(obj, bool)
                    if eof or not number or (end < len(buf) and buf[end] not in _NUMBER):
                        pos = end
                        return obj
                except json.JSONDecodeError as err:
                    if eof:
                        raise bad(f'invalid JSON: {err.msg}') from None
                except RecursionError:
                    raise bad('JSON nested too deeply') from None
                more(want)
                want *= 2  # a value longer than a chunk: fewer re-parses

        def char(expected: str) -> str:
            nonlocal pos
            skip_ws()
            if pos >= len(buf) or buf[pos] not in expected:
                raise bad(f'expected {" or ".join(map(repr, expected))}')
            pos += 1
            return buf[pos - 1]

        try:
            more(chunk_chars)
            char('{')
            skip_ws()
            if buf[pos:pos + 1] == '}':
                pos += 1
            else:
                while True:
                    skip_ws()
                    key = value()
                    if not isinstance(key, str):
                        raise bad('expected a string key')
                    char(':')
                    skip_ws()
                    yield key, value()
                    if char(',}') == '}':
                        break
            skip_ws()
            if pos < len(buf):
                raise bad('extra data after the object')
        except UnicodeDecodeError as err:
            raise DatasetError(f'{path}: not UTF-8 text (byte {err.start} of a chunk), so not {what}: put the file '
                               'of the release there, as released (UTF-8)') from None


class CaptionIndex:
    """Video id -> timed captions, read from an index folder (see `load_caption_index`).

    `captions` and `times` are Mapping views for `Manifest.captions` and `Manifest.caption_times`;
    `without_captions` counts the source's videos whose captions were all empty (not indexed).
    """

    def __init__(self, directory: Path, meta: dict) -> None:
        self.directory = directory
        self.meta = meta
        self._arrays: dict[str, np.ndarray] | None = None
        self.captions: Mapping[str, tuple[str, ...]] = _View(self, self.texts)
        self.times: Mapping[str, tuple[tuple[float, float], ...]] = _View(self, self.spans)

    def __getstate__(self) -> dict:
        return {'directory': self.directory, 'meta': self.meta}  # workers map the files again, nothing is copied

    def __setstate__(self, state: dict) -> None:
        self.__init__(state['directory'], state['meta'])

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            self._arrays = {n: _map(self.directory / f'{n}.bin', t) for n, t in _DTYPES.items()}
            self._arrays['times'] = self._arrays['times'].reshape(-1, 2)
        return self._arrays

    def __len__(self) -> int:
        return int(self.meta['videos'])

    @property
    def total(self) -> int:
        """Captions of every indexed video."""
        return int(self.meta['captions'])

    @property
    def without_captions(self) -> int:
        return int(self.meta['without_captions'])

    def video_id(self, row: int) -> str:
        blob, off = self.arrays['id_blob'], self.arrays['id_offsets']
        return bytes(blob[off[row]:off[row + 1]]).decode('utf-8')

    def row(self, video_id: str) -> int | None:
        """The row of `video_id` (binary search over the sorted ids), None if it has no captions."""
        key = video_id.encode('utf-8')
        blob, off = self.arrays['id_blob'], self.arrays['id_offsets']
        lo, hi = 0, len(self)
        while lo < hi:
            mid = (lo + hi) // 2
            if bytes(blob[off[mid]:off[mid + 1]]) < key:
                lo = mid + 1
            else:
                hi = mid
        return lo if lo < len(self) and bytes(blob[off[lo]:off[lo + 1]]) == key else None

    def texts(self, row: int) -> tuple[str, ...]:
        a = self.arrays
        blob, off, first = a['text_blob'], a['text_offsets'], int(a['first'][row])
        return tuple(bytes(blob[off[k]:off[k + 1]]).decode('utf-8') for k in range(first, first + int(a['count'][row])))

    def spans(self, row: int) -> tuple[tuple[float, float], ...]:
        a = self.arrays
        first = int(a['first'][row])
        return tuple((float(s), float(e)) for s, e in a['times'][first:first + int(a['count'][row])])


class _View(Mapping[str, T]):
    """A read-only mapping video id -> `read(row)` over a CaptionIndex."""

    def __init__(self, index: CaptionIndex, read: Callable[[int], T]) -> None:
        self.index, self._read = index, read

    def __getitem__(self, video_id: str) -> T:
        row = self.index.row(video_id) if isinstance(video_id, str) else None
        if row is None:
            raise KeyError(video_id)
        return self._read(row)

    def __len__(self) -> int:
        return len(self.index)

    def __iter__(self) -> Iterator[str]:
        return (self.index.video_id(r) for r in range(len(self.index)))

    @property
    def total(self) -> int:
        """Captions in all (`Manifest.describe` counts them without reading every entry)."""
        return self.index.total


def _map(path: Path, dtype: type) -> np.ndarray:
    """A raw array file, memory-mapped read-only (an empty file cannot be mapped)."""
    return np.memmap(path, dtype, mode='r') if path.stat().st_size else np.zeros(0, dtype)


def _stamp(source: Path) -> dict:
    st = source.stat()
    return {'version': INDEX_VERSION, 'source': source.name, 'size': st.st_size, 'mtime_ns': st.st_mtime_ns}


def load_caption_index(source: Path, what: str) -> CaptionIndex:
    """The index of caption file `source`, built beside it (``{source}.index/``) when missing or
    older than the file (its size or mtime changed).

    Raises:
        DatasetError: a source that is not in the layout above, or a folder where the index cannot
            be written.
    """
    directory = source.with_name(source.name + '.index')
    stamp = _stamp(source)
    meta = _read_meta(directory)
    if meta is None or any(meta.get(k) != v for k, v in stamp.items()):
        meta = _build(source, directory, stamp, what)
    return CaptionIndex(directory, meta)


def _read_meta(directory: Path) -> dict | None:
    try:
        meta = json.loads((directory / 'meta.json').read_text(encoding='utf-8'))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and all((directory / f'{n}.bin').is_file() for n in _DTYPES) else None


def _build(source: Path, directory: Path, stamp: dict, what: str) -> dict:
    """Parse `source` into a new index folder and put it in place of `directory`. Per-caption data
    go to their files as they are read: memory holds the per-video arrays, not the captions."""
    ids: list[str] = []
    first, count = array('q'), array('q')
    without = n_captions = n_bytes = 0
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f'.{source.name}.index-', dir=source.parent))
    except OSError as err:
        raise DatasetError(f'cannot write the caption index of {source} beside it ({err.strerror}): make '
                           f'{source.parent} writable') from None
    try:
        with (_Appender(tmp / 'text_blob.bin', 'B') as blob, _Appender(tmp / 'text_offsets.bin', 'q') as offsets,
              _Appender(tmp / 'times.bin', 'd') as times):
            offsets.add((0,))
            for vid, entry in iter_json_object(source, what):
                try:
                    texts = [str(t).strip() if isinstance(t, str) else _no_text(t) for t in entry['text']]
                    starts, ends = [float(s) for s in entry['start']], [float(e) for e in entry['end']]
                    if not len(texts) == len(starts) == len(ends):
                        raise ValueError(f'{len(texts)} texts, {len(starts)} starts, {len(ends)} ends')
                except (KeyError, TypeError, ValueError) as err:
                    raise DatasetError(f'{source}: not {what}: video {vid!r} needs lists "start", "end" and "text" '
                                       f'of one number, number and string per caption ({err!r:.120})') from None
                kept = [k for k, t in enumerate(texts) if t]  # stop-word removal leaves empty segments: no caption
                if not kept:
                    without += 1
                    continue
                ids.append(vid)
                first.append(n_captions)
                count.append(len(kept))
                n_captions += len(kept)
                for k in kept:
                    data = texts[k].encode('utf-8')
                    blob.add(data)
                    n_bytes += len(data)
                    offsets.add((n_bytes,))
                    times.add((starts[k], ends[k]))
        order, keep = _sorted_last(ids)  # a repeated key: the last one counts, as for json.load
        id_bytes = [ids[i].encode('utf-8') for i in order[keep]]
        per_video = {'id_blob': np.frombuffer(b''.join(id_bytes), np.uint8),
                     'id_offsets': np.cumsum([0] + [len(b) for b in id_bytes], dtype=np.int64),
                     'first': np.asarray(first, np.int64)[order[keep]],
                     'count': np.asarray(count, np.int64)[order[keep]]}
        for name, a in per_video.items():
            a.astype(_DTYPES[name]).tofile(tmp / f'{name}.bin')
        meta = {**stamp, 'videos': int(keep.sum()), 'captions': int(per_video['count'].sum()),
                'without_captions': without}
        (tmp / 'meta.json').write_text(json.dumps(meta), encoding='utf-8')  # written last: a whole index has it
        _replace(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return meta


class _Appender:
    """Numbers appended to a raw file a block at a time (`typecode` as for `array`)."""

    def __init__(self, path: Path, typecode: str, block: int = 1 << 16) -> None:
        self.file, self.buf, self.block = open(path, 'wb'), array(typecode), block

    def add(self, values) -> None:
        self.buf.extend(values)
        if len(self.buf) >= self.block:
            self.flush()

    def flush(self) -> None:
        self.buf.tofile(self.file)
        del self.buf[:]

    def __enter__(self) -> _Appender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()
        self.file.close()


def _no_text(value: object) -> str:
    raise TypeError(f'caption text {value!r:.40} is not a string')


def _sorted_last(ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(order sorting `ids` by UTF-8 bytes, stable; mask over it keeping the last of equal ids)."""
    keys = np.asarray([i.encode('utf-8') for i in ids], dtype=object)
    order = np.asarray(sorted(range(len(ids)), key=keys.__getitem__), np.int64)
    keep = np.ones(len(order), bool)
    if len(order) > 1:
        keep[:-1] = keys[order[:-1]] != keys[order[1:]]
    return order, keep


def _replace(new: Path, directory: Path) -> None:
    """Put folder `new` at `directory`; another process that built the same index first wins."""
    old = directory.with_name(f'{directory.name}.old-{os.getpid()}')
    try:
        os.replace(directory, old)
    except FileNotFoundError:
        pass
    try:
        os.replace(new, directory)
    except OSError:  # another process put its index there meanwhile: same source, same index
        pass
    shutil.rmtree(old, ignore_errors=True)
