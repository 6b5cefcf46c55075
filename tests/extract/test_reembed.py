"""extract.reembed: an OCR or speech store's words embedded with other vectors, without OCR or ASR."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from extract.experts._words import words_result
from extract.reembed import reembed
from shared.store import DONE, FAILED, SKIPPED, StoreSpec, VideoResult, create_store, open_store, pack_chunk
from shared.text import load_word_vectors
from tests.extract.test_av_experts import _word2vec


def test_reembed_keeps_each_videos_status_and_each_words_times(tmp_path: Path) -> None:
    """A done video's words that the new vectors have keep their own times; skipped and failed videos stay so,
    with their reasons; the store records the vectors it was embedded with."""
    old = _word2vec(tmp_path / 'old.bin', ['cat', 'dog', 'sun'], dim=4)
    new = _word2vec(tmp_path / 'new.bin', ['dog', 'sun', 'moon'], dim=8)
    tokens = [{'word': w, 'start': float(i), 'end': i + 0.5, 'conf': 0.9} for i, w in enumerate(['cat', 'dog', 'sun'])]
    spec = StoreSpec('toy', 'speech', 4, 8, chunk_size=2, has_tokens=True, config={'word_vectors': str(old)})
    store = create_store(tmp_path / 'speech.zarr', ['a', 'b', 'c'], spec)
    store.write_chunk(0, pack_chunk([words_result(tokens, load_word_vectors(old), 8),
                                     VideoResult.skipped(4, 'no audio stream')], 8, 4, True))
    store.write_chunk(1, pack_chunk([VideoResult.failed('cannot decode', 4)], 8, 4, True))
    rows = open_store(reembed(store.path, new, tmp_path / 'new.zarr')).read()
    assert rows.status.tolist() == [DONE, SKIPPED, FAILED] and rows.lengths.tolist() == [2, 0, 0]
    assert [str(e) for e in rows.errors] == ['', 'no audio stream', 'cannot decode']
    np.testing.assert_allclose(rows.timestamps[0, :2], [[1.0, 1.5], [2.0, 2.5]])  # dog's and sun's, not cat's
    vectors = load_word_vectors(new)
    np.testing.assert_allclose(rows.rows(0), np.stack([vectors.lookup('dog'), vectors.lookup('sun')]), atol=2e-3)
    assert open_store(tmp_path / 'new.zarr').attrs['config']['word_vectors'] == str(new.resolve())
