"""Captions -> model text input: word vectors (MEE, CE) or sub-word ids (GPT for CE's contextual
features, BERT for MMT, T5 for the support-set model).

A `CaptionEncoder` is built once per run from the model's text config and turns caption strings
into a `CaptionData` (indices, never one tensor per caption). Pretrained tokenizers come from the
Hugging Face name or local directory of the text model; the ``words`` tokenizer is a word-level
vocabulary of the training captions, saved in the run directory so that search and a resumed
run encode exactly as training did.
"""
from __future__ import annotations

import collections
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from shared.config import weights_dir
from shared.files import atomic_write_text
from shared.text import WordVectors, load_word_vectors, remove_stop_words, split_words
from train.models.base import TextInput
from train.config import DataCfg
from train.models.config import TextCfg

__all__ = ['CaptionData', 'CaptionEncoder', 'StopWordsRemoved', 'WordVectorCaptions', 'SubwordCaptions', 'WordTokenizer',
           'build_caption_encoder', 'resolve_word_vectors', 'SPECIALS']

#: ids of the ``words`` tokenizer's special tokens (pad 0 and eos 1 as T5 expects; BERT pads with 0)
SPECIALS = ('[PAD]', '[EOS]', '[UNK]', '[CLS]', '[SEP]')
PAD, EOS, UNK, CLS, SEP = range(len(SPECIALS))


@dataclasses.dataclass
class CaptionData:
    """Captions as padded index rows: word-vector rows (`vectors` set) or token ids."""

    ids: np.ndarray  # (C, L) int32
    mask: np.ndarray  # (C, L) bool
    vectors: np.ndarray | None = None  # (V + 1, D): row i is the vector of index i (0: padding)

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, idx: np.ndarray) -> TextInput:
        ids = torch.from_numpy(self.ids[idx].astype(np.int64))
        mask = torch.from_numpy(self.mask[idx])
        if self.vectors is not None:
            return TextInput(torch.from_numpy(self.vectors)[ids], mask)
        return TextInput(ids, mask)


class CaptionEncoder:
    """Caption strings -> CaptionData."""

    def encode(self, texts: list[str]) -> CaptionData:
        raise NotImplementedError

    def knows(self, text: str) -> bool:
        """Whether some word of `text` is in the encoder's vocabulary (word vectors: see the encoded mask)."""
        return True


class StopWordsRemoved(CaptionEncoder):
    """Another encoder given the captions without HowTo100M's stop words (``data.stop_words:
    remove``): every caption of training, evaluation and search goes through it."""

    def __init__(self, inner: CaptionEncoder) -> None:
        self.inner = inner

    def encode(self, texts: list[str]) -> CaptionData:
        return self.inner.encode([remove_stop_words(t) for t in texts])

    def knows(self, text: str) -> bool:
        # the inner encoder sees the text without its stop words, and so does its vocabulary check
        return self.inner.knows(remove_stop_words(text))


def resolve_word_vectors(spec: str, data_root: Path) -> Path:
    """A word-vector file: ``{data_root}/...``, a path, or a file name in the weights directory."""
    if '{data_root}' in spec:
        return Path(spec.replace('{data_root}', str(data_root)))
    p = Path(spec).expanduser()
    return p if p.is_absolute() or p.exists() else weights_dir() / spec


class WordVectorCaptions(CaptionEncoder):
    """Word2vec tokens (MEE, CE): a caption's words that have a vector, at most `max_words`."""

    def __init__(self, wv: WordVectors, max_words: int) -> None:
        self.wv, self.max_words = wv, max_words

    def encode(self, texts: list[str]) -> CaptionData:
        vocab: dict[str, int] = {}
        rows: list[np.ndarray] = [np.zeros(self.wv.dim, np.float32)]
        ids = np.zeros((len(texts), self.max_words), np.int32)
        for i, text in enumerate(texts):
            k = 0
            for w in split_words(text):
                if k == self.max_words:
                    break
                idx = vocab.get(w)
                if idx is None:
                    vec = self.wv.lookup(w)
                    if vec is None:
                        continue  # out of vocabulary: no row, as for OCR and speech
                    idx = vocab[w] = len(rows)
                    rows.append(vec)
                ids[i, k] = idx
                k += 1
        return CaptionData(ids, ids > 0, np.stack(rows))


class WordTokenizer:
    """A word-level vocabulary (lower-cased words of `shared.text.split_words`) with SPECIALS first."""

    def __init__(self, words: list[str]) -> None:
        self.words = list(SPECIALS) + [w for w in words if w not in SPECIALS]
        self.index = {w: i for i, w in enumerate(self.words)}

    @classmethod
    def fit(cls, texts: list[str], vocab_size: int) -> WordTokenizer:
        """The vocab_size - len(SPECIALS) most frequent words (ties in alphabetical order)."""
        if vocab_size <= len(SPECIALS):
            raise ValueError(f'text.vocab_size must exceed {len(SPECIALS)} for the words tokenizer')
        counts = collections.Counter(w for t in texts for w in split_words(t))
        ranked = sorted(counts, key=lambda w: (-counts[w], w))
        return cls(ranked[: vocab_size - len(SPECIALS)])

    def __len__(self) -> int:
        return len(self.words)

    def ids(self, text: str) -> list[int]:
        return [self.index.get(w, UNK) for w in split_words(text)]

    def text(self, ids: list[int]) -> str:
        """The words of `ids` up to the first [EOS], special tokens left out, and ids past the
        vocabulary too (a decoder's vocab_size may exceed the words fitted; training never asks
        for those rows, an undertrained decoder may still emit them)."""
        words = []
        for i in ids:
            if i == EOS:
                break
            if len(SPECIALS) <= i < len(self.words):
                words.append(self.words[i])
        return ' '.join(words)

    def save(self, path: Path) -> None:
        atomic_write_text(path, json.dumps({'words': self.words[len(SPECIALS):]}))

    @classmethod
    def load(cls, path: Path) -> WordTokenizer:
        return cls(json.loads(path.read_text())['words'])


def bert_caption(text: str) -> str:
    """MMT's caption preprocessing: capitalised, ending with a full stop."""
    text = text.strip()
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text[-1] in '.!?' else text + '.'


class SubwordCaptions(CaptionEncoder):
    """Token ids for a transformer text model: [CLS] ... [SEP] for BERT, ... </s> for T5, the bare
    tokens for GPT; at most `max_words` ids in all (MMT: 30 word pieces)."""

    def __init__(self, kind: str, max_words: int, tokenizer=None, words: WordTokenizer | None = None) -> None:
        self.kind, self.max_words, self.tokenizer, self.words = kind, max_words, tokenizer, words

    def knows(self, text: str) -> bool:
        # a run's own word-level vocabulary: a query of words it never saw is [UNK]s, the same for any.
        # Asked of the ids the model sees, cut at max_words: a known word past the cut is not seen
        return self.words is None or any(i >= len(SPECIALS) for i in self._ids(text))

    def _ids(self, text: str) -> list[int]:
        if self.kind == 'bert':
            text = bert_caption(text)
        if self.words is not None:
            body = self.words.ids(text)
            if self.kind == 'bert':
                return [CLS] + body[: self.max_words - 2] + [SEP]
            if self.kind == 'gpt':
                return body[: self.max_words]
            return body[: self.max_words - 1] + [EOS]
        return list(self.tokenizer(text, truncation=True, max_length=self.max_words)['input_ids'])

    def decode(self, ids: list[int]) -> str:
        """Generated token ids (a decoder's output, start token included) -> caption text."""
        if self.words is not None:
            return self.words.text(ids)
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    def encode(self, texts: list[str]) -> CaptionData:
        ids = np.zeros((len(texts), self.max_words), np.int32)
        pad = PAD if self.words is not None else (self.tokenizer.pad_token_id or 0)
        ids[:] = pad
        mask = np.zeros((len(texts), self.max_words), bool)
        for i, text in enumerate(texts):
            row = self._ids(text)
            ids[i, : len(row)] = row
            mask[i, : len(row)] = True
        return CaptionData(ids, mask)


def build_caption_encoder(text: TextCfg, data: DataCfg, data_root: Path, run_dir: Path | None,
                          train_texts: Callable[[], list[str]] | None) -> CaptionEncoder:
    """The run's caption encoder (`data`: its word vectors, caption length and stop words). A
    ``words`` tokenizer is fitted on the captions `train_texts()` gives (called only then) and
    saved as run_dir/tokenizer.json, or loaded from there when it exists (resume, search)."""
    encoder = _encoder(text, data.word_vectors, data.max_words, data_root, run_dir,
                       train_texts if data.stop_words == 'keep' or train_texts is None
                       else lambda: [remove_stop_words(t) for t in train_texts()])
    return StopWordsRemoved(encoder) if data.stop_words == 'remove' else encoder


def _encoder(text: TextCfg, word_vectors: str, max_words: int, data_root: Path, run_dir: Path | None,
             train_texts: Callable[[], list[str]] | None) -> CaptionEncoder:
    if text.encoder == 'word2vec':
        path = resolve_word_vectors(word_vectors, data_root)
        if '{data_root}' in word_vectors and not path.exists():  # most often a command given another data root
            raise FileNotFoundError(f'word vectors {path} not found ({word_vectors} under the data root {data_root}): '
                                    'give --data-root (make: DATA_ROOT=) where the dataset is')
        return WordVectorCaptions(load_word_vectors(path), max_words)
    if text.tokenizer == 'words':
        saved = run_dir / 'tokenizer.json' if run_dir is not None else None
        if saved is not None and saved.is_file():
            words = WordTokenizer.load(saved)
        elif train_texts is not None:
            words = WordTokenizer.fit(train_texts(), text.vocab_size)
            if saved is not None:
                words.save(saved)
        else:
            raise FileNotFoundError(f'{saved} is missing: the run was trained with a words tokenizer')
        if len(words) > text.vocab_size:
            raise ValueError(f'the tokenizer has {len(words)} words but text.vocab_size is {text.vocab_size}')
        return SubwordCaptions(text.encoder, max_words, words=words)
    from transformers import AutoTokenizer

    from train.models.text_encoders import hub_source

    source = hub_source(text.name, 'tokenizer of')
    try:
        tok = AutoTokenizer.from_pretrained(text.name, **source)
    except OSError as err:
        raise FileNotFoundError(f'tokenizer of {text.name!r} not found: put the model in the Hugging Face cache or '
                                f'give a local directory as text.name ({err})') from None
    return SubwordCaptions(text.encoder, max_words, tokenizer=tok)
