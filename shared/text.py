"""Word vectors shared by OCR, speech and caption encoders: gensim KeyedVectors, loaded once.

Files are word2vec binaries (GoogleNews-vectors-negative300.bin in production; the demo trains
its own) or gensim's native format, which is memory-mapped. Tokens are normalised (lower case,
outer punctuation stripped); a word without a vector keeps its token but gets no row.
"""
from __future__ import annotations

import functools
import hashlib
import os
import re
from pathlib import Path

import numpy as np

__all__ = ['WordVectors', 'load_word_vectors', 'normalise', 'split_words']

_PUNCT = re.compile(r"^[^\w]+|[^\w]+$")


def normalise(word: str) -> str:
    """Lower case, outer punctuation stripped ("Hello," -> "hello"; "don't" stays)."""
    return _PUNCT.sub('', word.strip().lower())


def split_words(text: str) -> list[str]:
    """Words of a text, normalised, empties dropped."""
    return [w for w in (normalise(t) for t in text.split()) if w]


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
        h = hashlib.sha256()
        with open(self.path, 'rb') as f:
            for block in iter(lambda: f.read(1 << 20), b''):
                h.update(block)
        return h.hexdigest()


@functools.lru_cache(maxsize=4)
def _load(path: str) -> WordVectors:
    from gensim.models import KeyedVectors

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f'word vectors {p} not found (a word2vec .bin, e.g. GoogleNews-vectors-negative300.bin, '
                                'or a gensim KeyedVectors file)')
    if p.suffix in ('.bin', '.gz') or p.name.endswith('.bin.gz'):
        kv = KeyedVectors.load_word2vec_format(str(p), binary=True)
    elif p.suffix in ('.txt', '.vec'):
        kv = KeyedVectors.load_word2vec_format(str(p), binary=False)
    else:
        kv = KeyedVectors.load(str(p), mmap='r')
    return WordVectors(kv, p)


def load_word_vectors(path: str | os.PathLike) -> WordVectors:
    """Load once per process (cached by absolute path)."""
    return _load(os.path.abspath(os.fspath(path)))
