"""Caption strings -> model text input (`train.captions`), by hand on tiny vocabularies."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shared.text import WordVectors
from train.captions import CLS, EOS, SEP, UNK, SubwordCaptions, WordTokenizer, WordVectorCaptions, bert_caption

WORDS = WordTokenizer(['a', 'cat', 'sits', 'on', 'mat'])  # ids 5 .. 9 after the special tokens
A, CAT, SITS, ON, MAT = range(5, 10)


@pytest.mark.parametrize('kind, max_words, want', [
    ('t5', 4, [[A, CAT, SITS, EOS], [CAT, EOS, 0, 0]]),  # T5: at most max_words - 1 words, then </s>
    ('bert', 5, [[CLS, A, CAT, SITS, SEP], [CLS, CAT, SEP, 0, 0]]),  # BERT: [CLS] ... [SEP]
    ('gpt', 3, [[A, CAT, SITS], [CAT, 0, 0]]),  # GPT: the bare words
])
def test_words_tokenizer_rows_per_text_model(kind: str, max_words: int, want: list[list[int]]) -> None:
    data = SubwordCaptions(kind, max_words, words=WORDS).encode(['A cat sits on the mat.', 'cat'])
    assert data.ids.tolist() == want
    assert data.mask.tolist() == [[i != 0 for i in row] for row in want]


def test_decoded_ids_stop_at_eos_and_skip_special_and_unknown_ids() -> None:
    """A decoder's output: its start token (pad) first, words, [EOS], then whatever it emitted after."""
    assert WORDS.text([0, A, CAT, UNK, SITS, EOS, ON, MAT]) == 'a cat sits'
    assert WORDS.text([A, 99, MAT]) == 'a mat'  # 99: past the fitted words (the decoder's vocab_size is larger)
    assert SubwordCaptions('t5', 8, words=WORDS).decode([0, CAT, EOS, MAT]) == 'cat'


def test_mmt_caption_preprocessing() -> None:
    assert bert_caption(' a cat sits ') == 'A cat sits.'
    assert bert_caption('a cat sits!') == 'A cat sits!' and bert_caption('Is it?') == 'Is it?'
    assert bert_caption('  ') == ''


def test_word_vector_rows_keep_max_words_found_in_the_vectors() -> None:
    """Words without a vector are skipped (not counted); a lower-case word finds a cased vector (GoogleNews)."""
    from gensim.models import KeyedVectors

    kv = KeyedVectors(vector_size=2)
    kv.add_vectors(['cat', 'sits', 'mat', 'Dog'], np.arange(8, dtype=np.float32).reshape(4, 2))
    data = WordVectorCaptions(WordVectors(kv, Path('unused.bin')), 3).encode(['Cat sits on the mat, dog', 'zzz dog'])
    assert data.ids.tolist() == [[1, 2, 3], [4, 0, 0]]
    assert data.mask.tolist() == [[True] * 3, [True, False, False]]
    np.testing.assert_array_equal(data.vectors, [[0, 0], [0, 1], [2, 3], [4, 5], [6, 7]])


def test_word_vectors_missing_under_the_data_root_name_the_option(tmp_path: Path) -> None:
    """`train.search` and `pipelines.serve` run without the demo's --data-root said only '.../word2vec.bin not
    found': the run's `{data_root}/...` word vectors are read under the data root the command was given."""
    from train.captions import build_caption_encoder
    from train.config import DataCfg
    from train.models.config import TextCfg

    data = DataCfg(word_vectors='{data_root}/demo/word2vec.bin')
    with pytest.raises(FileNotFoundError, match=r'not found \(\{data_root\}/demo/word2vec.bin under the data root '
                                                 + str(tmp_path) + r'\): give --data-root \(make: DATA_ROOT=\)'):
        build_caption_encoder(TextCfg(encoder='word2vec'), data, tmp_path, None, None)


def test_words_vocabulary_breaks_frequency_ties_alphabetically_whatever_the_captions_order() -> None:
    """The words tokenizer keeps the most frequent words, and of words as frequent the first in
    alphabetical order: a vocabulary cut among ties is the same whichever order the training
    captions come in (a rerun on a reordered list keeps the checkpoint's token ids)."""
    texts = ['the zebra', 'the apple', 'the mango', 'a kiwi']  # 'the' 3 times; the others once each
    fitted = WordTokenizer.fit(texts, 5 + 3)  # the 5 special tokens, 'the' and two of the five ties
    assert fitted.words[5:] == ['the', 'a', 'apple']
    assert WordTokenizer.fit(texts[::-1], 5 + 3).words == fitted.words
