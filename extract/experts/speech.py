"""Speech expert: openai-whisper transcripts with word timestamps -> word2vec rows.

CE and MMT used the Google Cloud Speech API; whisper is the open model that runs offline. The
weights are ``whisper:NAME`` (looked for as NAME.pt in `download_root`, the weights directory's
whisper/ by default, downloaded there unless offline), a local checkpoint path, or ``random``
(a one-layer whisper, for tests and the demo). Videos are transcribed one at a time: whisper's
transcribe has no batch interface.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from extract.experts import EXPERTS, build_expert
from extract.experts._base import ExpertCfg, VideoExpert, VideoInput
from extract.experts._words import word_vectors_for, words_result
from extract.weights import ResolvedWeights, WeightsError, offline, resolve_weights, sha256_file, weights_dir
from shared.store import VideoResult

__all__ = ['SpeechExpert', 'SpeechCfg', 'default_cfgs', 'TINY_DIMS', 'random_whisper']

#: the smallest whisper shape (one layer, width 64), used for `weights: random`: random weights
#: give noise words whatever the size, and this one transcribes a clip in about a second on a CPU
TINY_DIMS = dict(n_mels=80, n_audio_ctx=1500, n_audio_state=64, n_audio_head=2, n_audio_layer=1, n_vocab=51865,
                 n_text_ctx=448, n_text_state=64, n_text_head=2, n_text_layer=1)


def random_whisper(dims: dict[str, int], seed: int) -> nn.Module:
    """A randomly initialised whisper, reproducibly. openai-whisper leaves the text decoder's
    positional embedding as `torch.empty` (a checkpoint always fills it): uninitialised memory
    that made random models emit NaNs now and then, differently in every process."""
    from whisper.model import ModelDimensions, Whisper

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Whisper(ModelDimensions(**dims))
        with torch.no_grad():
            model.decoder.positional_embedding.normal_(0.0, 0.01)
    return model


@dataclasses.dataclass(frozen=True)
class SpeechCfg(ExpertCfg):
    """Speech settings.

    Args:
        download_root: where whisper:NAME checkpoints live ('' = the weights directory's whisper/).
        language: spoken language code, or '' to let whisper detect it.
        temperatures: whisper's decoding temperature fallbacks.
        max_tokens: tokens decoded per 30 s window (0: whisper's default, half its text context);
            bounds the time random-weight models spend producing noise.
        word_vectors: word2vec file (a path or file:NAME).
    """

    download_root: str = ''
    language: str = 'en'
    temperatures: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    max_tokens: int = 0
    word_vectors: str = 'file:GoogleNews-vectors-negative300.bin'


class SpeechExpert(VideoExpert):
    modality = 'audio'
    has_tokens = True

    def resolve(self) -> ResolvedWeights:
        if self.weights is None:
            self.wv = word_vectors_for(self.cfg.word_vectors)
            if self.wv.dim != self.cfg.feature_dim:
                self.cfg = dataclasses.replace(self.cfg, feature_dim=self.wv.dim)
            spec = self.cfg.weights
            if spec.startswith('whisper:'):
                import whisper

                name = spec[len('whisper:'):]
                if name not in whisper._MODELS:
                    raise WeightsError(f'unknown whisper model {name!r} (one of {", ".join(whisper.available_models())})')
                root = Path(self.cfg.download_root) if self.cfg.download_root else weights_dir() / 'whisper'
                path = root / os.path.basename(whisper._MODELS[name])
                if not path.is_file():
                    if offline():
                        raise WeightsError(f'whisper model {path.name} not found in {root}: put it there (from '
                                           f'{whisper._MODELS[name]}) or pass --set speech.weights=PATH')
                    try:
                        whisper._download(whisper._MODELS[name], str(root), False)
                    except Exception as err:  # noqa: BLE001
                        raise WeightsError(f'whisper model {path.name} not found in {root} and its download failed '
                                           f'({type(err).__name__}): put it there (from {whisper._MODELS[name]})') from None
                self.weights = ResolvedWeights(spec, path, sha256_file(path))
            else:
                self.weights = resolve_weights(spec)
        return self.weights

    def build(self) -> nn.Module:
        return nn.Identity()  # whisper models are built from their checkpoint's dims in load()

    def load(self, device: Any) -> SpeechExpert:
        import whisper
        from whisper.model import ModelDimensions, Whisper

        weights = self.resolve()
        self.device = torch.device(device)
        self.dtype = torch.float32
        if weights.random:
            model = random_whisper(TINY_DIMS, seed=0)
        else:
            assert weights.path is not None
            ckpt = torch.load(str(weights.path), map_location='cpu', weights_only=True)
            try:
                model = Whisper(ModelDimensions(**ckpt['dims']))
                model.load_state_dict(ckpt['model_state_dict'])
            except (KeyError, TypeError, RuntimeError) as err:
                raise WeightsError(f'{weights.path} is not a whisper checkpoint ({err})') from None
            name = self.cfg.weights[len('whisper:'):] if self.cfg.weights.startswith('whisper:') else ''
            if name in whisper._ALIGNMENT_HEADS:  # the heads that time words best, per released model
                model.set_alignment_heads(whisper._ALIGNMENT_HEADS[name])
        self.model = model.eval().to(self.device)
        return self

    def process(self, inputs: VideoInput) -> VideoResult:
        import whisper

        assert inputs.audio is not None and self.model is not None
        audio = np.ascontiguousarray(inputs.audio, np.float32)
        duration = len(audio) / 16000
        result = whisper.transcribe(self.model, audio, language=self.cfg.language or None, word_timestamps=True,
                                    temperature=self.cfg.temperatures, fp16=self.device.type == 'cuda',
                                    condition_on_previous_text=False, verbose=None,
                                    **({'sample_len': self.cfg.max_tokens} if self.cfg.max_tokens else {}))
        tokens = []
        for segment in result.get('segments', []):
            for w in segment.get('words', []) or []:
                word = w['word'].strip()
                if word:  # whisper's word times can overshoot the clip by a frame: keep them inside it
                    start = float(min(max(w['start'], 0.0), duration))
                    tokens.append({'word': word, 'start': start, 'end': float(min(max(w['end'], start), duration)),
                                   'conf': float(w.get('probability', 0.0))})
        return words_result(tokens, self.wv, self.cfg.max_rows)


default_cfgs = {
    'speech': SpeechCfg(arch='whisper', weights='whisper:small', feature_dim=300, sampling='audio', max_rows=512,
                        resize=(1,), input_size=0, license='mit (openai-whisper)',
                        origin_url='https://github.com/openai/whisper'),
}


@EXPERTS.register('speech')
def whisper_small(**overrides: Any) -> SpeechExpert:
    """openai-whisper (small), English, word timestamps."""
    return build_expert(SpeechExpert, default_cfgs, 'speech', overrides)
