"""Words -> store rows, shared by the OCR and speech experts: tokens keep every word (so they can
be re-embedded later), features keep the word vectors of the in-vocabulary ones, in time order."""
from __future__ import annotations

from typing import Any

import numpy as np

from extract.weights import WeightsError, resolve_weights
from shared.store import DONE, VideoResult
from shared.text import WordVectors, load_word_vectors

__all__ = ['words_result', 'word_vectors_for']


def word_vectors_for(spec: str) -> WordVectors:
    """Word vectors from a spec (a path, or file:NAME in the weights directory)."""
    try:
        resolved = resolve_weights(spec, 'https://code.google.com/archive/p/word2vec/ (GoogleNews vectors)')
    except WeightsError as err:
        raise WeightsError(f'word vectors: {err}') from None
    assert resolved.path is not None
    return load_word_vectors(resolved.path)


def words_result(tokens: list[dict[str, Any]], wv: WordVectors, max_rows: int) -> VideoResult:
    """Tokens (dicts with word, start, end, conf) sorted by time -> a VideoResult with tokens."""
    tokens = sorted(tokens, key=lambda t: (t['start'], t['end']))
    vecs, keep = wv.embed([t['word'] for t in tokens])
    vecs, keep = vecs[:max_rows], keep[:max_rows]
    stamps = np.asarray([[tokens[i]['start'], tokens[i]['end']] for i in keep], np.float32).reshape(-1, 2)
    # a word ending before it starts (an aligner's rounding) is one instant: stores refuse rows that end first
    stamps[:, 1] = np.maximum(stamps[:, 1], stamps[:, 0])
    return VideoResult(vecs, stamps, DONE, tokens=tokens, available=len(keep) > 0)
