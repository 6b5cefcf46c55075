"""Word vectors shared by OCR, speech and caption encoders: gensim KeyedVectors, loaded once.

Files are word2vec binary or text files (GoogleNews-vectors-negative300.bin in production; the
demo trains its own), which hold numbers only. gensim's native format (`KeyedVectors.save`) is a
pickle, which can run code when loaded: it is never read here, whatever its name, only by the
explicit importer `python -m pipelines.import_word_vectors`, which converts it after a warning.
Tokens are normalised (lower case, outer punctuation stripped); a word without a vector keeps its
token but gets no row.
"""
from __future__ import annotations

import functools
import os
import re
from importlib import resources
from pathlib import Path

import numpy as np

from shared.config import ConfigError
from shared.files import sha256_file

__all__ = ['WordVectors', 'WordVectorsError', 'load_word_vectors', 'normalise', 'split_words', 'word2vec_binary',
           'BINARY_SUFFIXES', 'TEXT_SUFFIXES', 'stop_words', 'remove_stop_words']

#: word2vec binary files, by name (compressed ones are read through gensim's smart_open)
BINARY_SUFFIXES = ('.bin', '.bin.gz', '.bin.bz2')
#: word2vec text files: a "count dim" header, then one word and its numbers a line
TEXT_SUFFIXES = ('.txt', '.vec', '.txt.gz', '.vec.gz', '.txt.bz2', '.vec.bz2')

_PUNCT = re.compile(r"^[^\w]+|[^\w]+$")


def normalise(word: str) -> str:
    """Lower case, outer punctuation stripped ("Hello," -> "hello"; "don't" stays)."""
    return _PUNCT.sub('', word.strip().lower())


def split_words(text: str) -> list[str]:
    """Words of a text, normalised, empties dropped."""
    return [w for w in (normalise(t) for t in text.split()) if w]


@functools.lru_cache(maxsize=1)
def stop_words() -> frozenset[str]:
    """HowTo100M's stop words, the list that made its caption.json (shipped with `shared.datasets`)."""
    text = resources.files('shared.datasets').joinpath('stop_words_howto100m.txt').read_text(encoding='utf-8')
    return frozenset(w for w in (line.strip() for line in text.splitlines()) if w and not w.startswith('#'))


def remove_stop_words(text: str) -> str:
    """`text` without its stop words (compared normalised: "The," goes); the other words are kept
    as written, one space apart."""
    words = stop_words()
    return ' '.join(t for t in text.split() if normalise(t) not in words)


class WordVectors:
    """A KeyedVectors with the lookups the experts and text encoders need."""

    def __init__(self, kv, path: Path) -> None:
        self.kv = kv
        self.path = path
        self.dim = int(kv.vector_size)

    def __contains__(self, word: str) -> bool:
        return word in self.kv.key_to_index

    def lookup(self, word: str) -> np.ndarray | None:
        """The vector of a normalised word, trying its original case forms too (GoogleNews is cased)."""
        for form in (word, word.capitalize(), word.upper()):
            idx = self.kv.key_to_index.get(form)
            if idx is not None:
                return np.asarray(self.kv.vectors[idx], np.float32)
        return None

    def embed(self, words: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(vectors of the words that have one (K, D), indices of those words in `words`)."""
        rows, keep = [], []
        for i, w in enumerate(words):
            v = self.lookup(normalise(w))
            if v is not None:
                rows.append(v)
                keep.append(i)
        vecs = np.stack(rows) if rows else np.zeros((0, self.dim), np.float32)
        return vecs, np.asarray(keep, np.int64)

    @functools.cached_property
    def sha256(self) -> str:
        return sha256_file(self.path)


class WordVectorsError(ConfigError):
    """A word-vector file that is not in a format read here (the setting that names it is wrong)."""


def word2vec_binary(path: Path) -> bool:
    """Whether `path` names a word2vec binary (True) or text (False) file.

    Raises:
        WordVectorsError: any other name. The format is chosen by name, never by trying loaders,
            so that no file reaches a loader that unpickles.
    """
    name = path.name.lower()
    if name.endswith(BINARY_SUFFIXES):
        return True
    if name.endswith(TEXT_SUFFIXES):
        return False
    raise WordVectorsError(
        f'word vectors {path}: not a word2vec file by its name (binary: {", ".join(BINARY_SUFFIXES)}; text: '
        f'{", ".join(TEXT_SUFFIXES)}). A gensim KeyedVectors.save file is a pickle, which can run code, and is not '
        f'read here: convert one you trust with python -m pipelines.import_word_vectors {path} OUT.bin')


@functools.lru_cache(maxsize=4)
def _load(path: str) -> WordVectors:
    from gensim.models import KeyedVectors

    p = Path(path)
    binary = word2vec_binary(p)  # before anything opens the file
    if not p.is_file():
        raise FileNotFoundError(f'word vectors {p} not found (a word2vec .bin, e.g. '
                                'GoogleNews-vectors-negative300.bin, or a word2vec text file)')
    _check_header(p)
    # word2vec formats hold words and numbers only: parsed, never unpickled
    try:
        kv = KeyedVectors.load_word2vec_format(str(p), binary=binary)
    except (ValueError, EOFError, IndexError, OverflowError, MemoryError) as err:  # what gensim's parser raises
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:120]
        layout = ('a "COUNT DIM" line, then COUNT records of a word, a space and DIM float32s' if binary else
                  'UTF-8 text: a "COUNT DIM" line, then a word and DIM numbers per line')
        raise WordVectorsError(f'word vectors {p}: not a word2vec {"binary" if binary else "text"} file ({reason}); '
                               f'give a file of that format ({layout})') from None
    except OSError as err:  # a .gz/.bz2 name on a file that is not compressed so, or one that cannot be read
        raise WordVectorsError(f'word vectors {p}: cannot read it ({err.strerror or err}); give a readable word2vec '
                               'file, compressed only when its name says so (.gz, .bz2)') from None
    if not len(kv.key_to_index) or kv.vector_size < 1:  # gensim loads both: every caption would embed to nothing
        raise WordVectorsError(f'word vectors {p}: {len(kv.key_to_index)} words of {kv.vector_size} numbers; give a '
                               'word2vec file with words and numbers in it')
    _refuse_non_finite(kv.vectors, kv.index_to_key, p)
    return WordVectors(kv, p)


#: numbers a compressed word2vec file may declare per byte of it (text and float32s compress ~2-4 times)
_COMPRESSED_NUMBERS_PER_BYTE = 64


def _check_header(path: Path) -> None:
    """WordVectorsError for a "COUNT DIM" header that declares more numbers than the file can hold (a
    number takes 4 bytes of a binary, 2 of a text file at least): gensim allocates COUNT x DIM float32s
    first, and a 22-byte file declaring 2 words of 2 * 10**9 numbers took 8 GB and 31 s to refuse (a few
    more words: the machine's memory). A header that is no two numbers is left to gensim's parser."""
    from gensim import utils

    try:
        with utils.open(str(path), 'rb') as f:
            head = f.readline(256).split()
    except OSError:  # e.g. a .gz name on a file that is not: gensim says so
        return
    if len(head) != 2 or not all(x.isdigit() for x in head):
        return
    count, dim = int(head[0]), int(head[1])
    size = path.stat().st_size
    compressed = path.name.lower().endswith(('.gz', '.bz2'))
    if count * dim > size * (_COMPRESSED_NUMBERS_PER_BYTE if compressed else 1):
        raise WordVectorsError(f'word vectors {path}: its header declares {count} words of {dim} numbers, more than '
                               f'its {size} bytes can hold (a damaged or forged header, refused before any memory is '
                               'taken for it); give a word2vec file whose "COUNT DIM" line counts its words')


def _refuse_non_finite(vectors: np.ndarray, words: list[str], path: Path, block: int = 65536) -> None:
    """WordVectorsError naming the first word whose vector holds NaN or inf: such a vector makes a
    caption's embedding NaN (training loss NaN) and an OCR/speech video fail. Checked a block at a
    time: GoogleNews' 3M x 300 vectors are 3.6 GB."""
    for start in range(0, len(vectors), block):
        bad = ~np.isfinite(vectors[start:start + block]).all(axis=1)
        if bad.any():
            word = words[start + int(np.argmax(bad))]
            raise WordVectorsError(f'word vectors {path}: the vector of {word!r} holds NaN or inf '
                                   f'({int(bad.sum())}+ such words); give a file of finite numbers')


def load_word_vectors(path: str | os.PathLike) -> WordVectors:
    """Load once per process (cached by absolute path)."""
    return _load(os.path.abspath(os.fspath(path)))
