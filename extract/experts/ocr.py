"""OCR expert: text shown on frames -> words with time spans -> word2vec rows (CE/MMT's OCR).

easyocr (CRAFT detector + recogniser) is the default; RapidOCR (ONNX; its models ship in the
wheel; CPU) is the offline alternative. Frames are read at `fps`; a word seen on consecutive
sampled frames becomes one token spanning them.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from extract.experts import EXPERTS, build_expert
from extract.experts._base import ExpertCfg, VideoExpert, VideoInput
from extract.experts._words import word_vectors_for, words_result
from extract.weights import ResolvedWeights, WeightsError, weights_dir
from shared.store import VideoResult
from shared.text import normalise

__all__ = ['OcrExpert', 'OcrCfg', 'merge_words', 'default_cfgs']


@dataclasses.dataclass(frozen=True)
class OcrCfg(ExpertCfg):
    """OCR settings.

    Args:
        engine: ``easyocr`` or ``rapidocr``.
        languages: easyocr language codes.
        model_dir: easyocr's model directory ('' = the weights directory's easyocr/).
        download: let easyocr download missing models.
        min_conf: words recognised with less confidence are dropped.
        word_vectors: word2vec file (a path or file:NAME).
        detect_batch: easyocr: frames per CRAFT pass, taken across videos (frames of one size).
        recognize_batch: easyocr: word crops per recogniser pass, taken across frames and videos.
    """

    engine: str = 'easyocr'
    languages: tuple[str, ...] = ('en',)
    model_dir: str = ''
    download: bool = False
    min_conf: float = 0.3
    word_vectors: str = 'file:GoogleNews-vectors-negative300.bin'
    detect_batch: int = 16
    recognize_batch: int = 128

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.detect_batch < 1 or self.recognize_batch < 1:
            raise ValueError(f'detect_batch and recognize_batch must be >= 1, got {self.detect_batch}, '
                             f'{self.recognize_batch}')


def merge_words(frames: list[list[tuple[str, float]]], stamps: np.ndarray) -> list[dict[str, Any]]:
    """Per-frame (word, conf) lists -> tokens; a word on consecutive frames is one token whose span
    runs from its first frame's start to its last frame's end (confidence: the highest seen)."""
    tokens: list[dict[str, Any]] = []
    open_: dict[tuple[str, int], dict[str, Any]] = {}
    for k, (words, (start, end)) in enumerate(zip(frames, stamps)):
        seen: dict[str, int] = {}
        now: dict[tuple[str, int], dict[str, Any]] = {}
        for word, conf in words:
            key = normalise(word)
            if not key:
                continue
            occurrence = seen.get(key, 0)
            seen[key] = occurrence + 1
            tok = open_.get((key, occurrence))
            if tok is None:
                tok = {'word': word, 'start': float(start), 'end': float(end), 'conf': float(conf)}
                tokens.append(tok)
            else:
                tok['end'] = float(end)
                tok['conf'] = max(tok['conf'], float(conf))
            now[(key, occurrence)] = tok
        open_ = now
    return tokens


class OcrExpert(VideoExpert):
    has_tokens = True

    def build(self) -> nn.Module:
        return nn.Identity()  # the engines are not torch modules with loadable weights here

    def resolve(self) -> ResolvedWeights:
        if self.weights is None:
            self.wv = word_vectors_for(self.cfg.word_vectors)
            if self.wv.dim != self.cfg.feature_dim:
                self.cfg = dataclasses.replace(self.cfg, feature_dim=self.wv.dim)
            if self.cfg.engine == 'rapidocr':
                from importlib.metadata import version

                self.weights = ResolvedWeights(f'rapidocr-onnxruntime {version("rapidocr-onnxruntime")} (bundled models)')
            elif self.cfg.engine == 'easyocr' and self.cfg.weights == 'random':
                self.weights = ResolvedWeights('random')  # easyocr's own networks, randomly initialised
            elif self.cfg.engine == 'easyocr':
                directory = Path(self.cfg.model_dir) if self.cfg.model_dir else weights_dir() / 'easyocr'
                needed = ['craft_mlt_25k.pth'] + (['english_g2.pth'] if 'en' in self.cfg.languages else [])
                missing = [n for n in needed if not (directory / n).is_file()]
                if missing and not self.cfg.download:
                    raise WeightsError(f'easyocr models {", ".join(missing)} not found in {directory}: put them there '
                                       '(from https://www.jaided.ai/easyocr/modelhub/), set ocr.download=true, or use '
                                       'the RapidOCR engine (--expert ocr.rapidocr), whose models ship in its wheel')
                self.weights = ResolvedWeights(f'easyocr ({directory})', None, '')
            else:
                raise WeightsError(f'unknown OCR engine {self.cfg.engine!r} (easyocr or rapidocr)')
        return self.weights

    def load(self, device: Any) -> OcrExpert:
        super().load(device)
        if self.cfg.engine == 'rapidocr':
            from rapidocr_onnxruntime import RapidOCR

            self.engine = RapidOCR()
        elif self.resolve().random:
            from skimage import data

            from extract.experts._easyocr import random_reader

            page = np.repeat(data.text()[None, ..., None], 3, axis=-1)  # scanned text: calibrates the random CRAFT
            self.use_reader(random_reader(page))
        else:
            import easyocr

            directory = self.cfg.model_dir or str(weights_dir() / 'easyocr')
            self.engine = easyocr.Reader(list(self.cfg.languages), gpu=self.device.type == 'cuda',
                                         model_storage_directory=directory, download_enabled=self.cfg.download,
                                         verbose=False)
            self.use_reader(self.engine)
        return self

    def use_reader(self, reader: Any) -> None:
        """Run `reader`'s networks on this expert's device, called directly (`process_batch`).

        easyocr wraps them in DataParallel on CUDA, which would spread a batch over every visible
        GPU and insists on cuda:0; the bare modules run where the runner put this expert.
        """
        for name in ('detector', 'recognizer'):
            net = getattr(reader, name)
            setattr(reader, name, getattr(net, 'module', net).to(self.device).eval())
        reader.device = str(self.device)
        self.engine = reader

    def _read_rapid(self, frame: np.ndarray) -> list[tuple[str, float]]:
        from rapidocr_onnxruntime.utils.process_img import ResizeImgError

        try:
            result, _ = self.engine(np.ascontiguousarray(frame[..., ::-1]))  # RapidOCR takes BGR
        except ResizeImgError:  # a frame over ~60 times as wide as high (or high as wide) shrinks to 0 pixels
            return []  # in its detector: no line of text to read there
        return [(text, float(score)) for _, text, score in (result or [])]

    def process(self, inputs: VideoInput) -> VideoResult:
        return self.process_batch([inputs])[0]

    def process_batch(self, inputs: list[VideoInput]) -> list[VideoResult]:
        """Words of several videos, from their frames at native size (read at `resize`). easyocr: detection and recognition batched across frames and
        videos (`readtext_batched`), reading each frame as `readtext` does. RapidOCR (CPU) reads
        frame by frame: its recogniser pads each batch to its widest crop, so crops batched across
        frames would read differently from the same frame alone."""
        for x in inputs:
            assert x.frames is not None and x.timestamps is not None
        # shrunk here, on the expert's own worker thread, not on the thread that feeds every expert
        frames = [self.own_frames(x.frames) for x in inputs]
        if self.cfg.engine == 'easyocr':
            from extract.experts._easyocr import readtext_batched

            found = readtext_batched(self.engine, frames, self.device, self.cfg.detect_batch, self.cfg.recognize_batch)
        else:
            found = [[self._read_rapid(f) for f in video] for video in frames]
        out = []
        for x, video in zip(inputs, found):
            words = [[(w, conf) for text, conf in frame if conf >= self.cfg.min_conf for w in text.split()]
                     for frame in video]
            out.append(words_result(merge_words(words, x.timestamps), self.wv, self.cfg.max_rows))
        return out

_COMMON = dict(arch='ocr', feature_dim=300, fps=1.0, resize=(480,), input_size=0, max_rows=256)
default_cfgs = {
    'ocr': OcrCfg(weights='easyocr', engine='easyocr', license='apache-2.0 (easyocr)',
                  origin_url='https://github.com/JaidedAI/EasyOCR', **_COMMON),
    'ocr.rapidocr': OcrCfg(weights='bundled', engine='rapidocr', license='apache-2.0 (RapidOCR)',
                           origin_url='https://github.com/RapidAI/RapidOCR', **_COMMON),
}


@EXPERTS.register('ocr')
def easyocr_en(**overrides: Any) -> OcrExpert:
    """easyocr, English."""
    return build_expert(OcrExpert, default_cfgs, 'ocr', overrides)


@EXPERTS.register('ocr.rapidocr')
def rapidocr(**overrides: Any) -> OcrExpert:
    """RapidOCR (ONNX Runtime, models in the wheel)."""
    return build_expert(OcrExpert, default_cfgs, 'ocr.rapidocr', overrides)
