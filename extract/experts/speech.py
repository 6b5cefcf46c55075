"""Speech expert: openai-whisper transcripts with word timestamps -> word2vec rows.

CE and MMT used the Google Cloud Speech API; whisper is the open model that runs offline. The
weights are ``whisper:NAME`` (looked for as NAME.pt in `download_root`, the weights directory's
whisper/ by default, downloaded there unless offline), a local checkpoint path, or ``random``
(a one-layer whisper, for tests and the demo). Videos are transcribed together, many windows a
batch (`extract.experts._whisper`), with the words and times `whisper.transcribe` gives each
video alone; windows that silero-vad finds without speech are not decoded at all.
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
from extract.experts._whisper import BatchOptions, transcribe_batch
from extract.experts.audio import check_downmix
from extract.experts._words import word_vectors_for, words_result
from extract.weights import (ResolvedWeights, WeightsError, offline, resolve_weights, sha256_file, torch_file,
                             weights_dir)
from shared.store import VideoResult

__all__ = ['SpeechExpert', 'SpeechCfg', 'default_cfgs', 'TINY_DIMS', 'random_whisper']

#: the smallest whisper shape (one layer, width 64), used for `weights: random`: random weights
#: give noise words whatever the size, and this one transcribes a clip in about a second on a CPU
#: whisper's own shapes (whisper paper, Table 1), for random weights of a released model's size:
#: speed measurements, where a one-layer model would flatter the expert
RANDOM_SHAPES = {'base': dict(n_audio_state=512, n_audio_head=8, n_audio_layer=6),
                 'small': dict(n_audio_state=768, n_audio_head=12, n_audio_layer=12)}
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
        vad: find the windows without speech with silero-vad (its model ships in its wheel) and
            decode none of them; whisper invents words on silence and music.
        vad_threshold: silero-vad's speech probability above which a 32-ms chunk is speech.
        min_speech: seconds of speech a 30-s window needs to be decoded.
        downmix: how several audio channels become one: ``mean`` (gain 1, as VGGish's reference
            and whisper's `load_audio`), the only choice. Stores made before it existed had
            FFmpeg's ``-ac 1`` (3 dB louder on stereo) and are refused rather than extended.
        random_shape: the model that `weights: random` builds: ``one-layer`` (width 64: tests and
            the demo) or a released model's shape (``base``, ``small``) for benchmarks.
    """

    download_root: str = ''
    language: str = 'en'
    temperatures: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    max_tokens: int = 0
    word_vectors: str = 'file:GoogleNews-vectors-negative300.bin'
    vad: bool = True
    vad_threshold: float = 0.5
    min_speech: float = 0.25
    random_shape: str = 'one-layer'
    downmix: str = 'mean'

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.vad_threshold < 1.0:
            raise ValueError(f'vad_threshold must be between 0 and 1, got {self.vad_threshold}')
        if not self.min_speech >= 0.0:
            raise ValueError(f'min_speech must be >= 0 seconds, got {self.min_speech}')
        if self.random_shape not in ('one-layer', *RANDOM_SHAPES):
            raise ValueError(f'random_shape must be one-layer or one of {", ".join(RANDOM_SHAPES)}, '
                             f'got {self.random_shape!r}')
        check_downmix(self.downmix)
        if not self.temperatures:
            raise ValueError('temperatures must list at least one temperature')


def load_vad(device: torch.device) -> Any:
    """silero-vad's TorchScript model, from its wheel (nothing is downloaded), on `device`."""
    import warnings

    threads = torch.get_num_threads()
    from silero_vad import load_silero_vad  # its import sets torch's CPU threads to 1: restored below

    torch.set_num_threads(threads)
    with warnings.catch_warnings():  # importlib's and torch.jit's deprecation notices, about the library
        warnings.simplefilter('ignore', DeprecationWarning)
        warnings.simplefilter('ignore', FutureWarning)
        model = load_silero_vad()
    try:
        return model.to(device)
    except RuntimeError:  # a device the scripted model cannot run on: its CPU copy is fast enough
        return model


def _half_but_layer_norms(model: nn.Module) -> None:
    """Every weight in float16 except the LayerNorms', which whisper runs in float32."""
    for m in model.modules():
        if not isinstance(m, nn.LayerNorm):
            for p in m.parameters(recurse=False):
                p.data = p.data.half()


class SpeechExpert(VideoExpert):
    modality = 'audio'
    legacy_defaults = (('downmix', 'ffmpeg -ac 1'),)
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

    @property
    def batch_size(self) -> int:
        """30-s windows decoded together (0: 64 on CUDA, 8 on the CPU)."""
        return self.cfg.batch_size or (64 if self.device.type == 'cuda' else 8)

    @property
    def videos_per_batch(self) -> int:
        return self.batch_size  # a clip of up to 30 s is one window

    def load(self, device: Any) -> SpeechExpert:
        import whisper
        from whisper.model import ModelDimensions, Whisper

        weights = self.resolve()
        self.device = torch.device(device)
        self.dtype = torch.float32
        if weights.random:
            shape = RANDOM_SHAPES.get(self.cfg.random_shape, {})
            layers = {k.replace('audio', 'text'): v for k, v in shape.items()}  # decoder as deep as the encoder
            model = random_whisper({**TINY_DIMS, **shape, **layers}, seed=0)
        else:
            assert weights.path is not None
            ckpt = torch_file(weights.path)
            try:
                model = Whisper(ModelDimensions(**ckpt['dims']))
                model.load_state_dict(ckpt['model_state_dict'])
            except (KeyError, TypeError, RuntimeError) as err:
                raise WeightsError(f'{weights.path} is not a whisper checkpoint ({err})') from None
            name = self.cfg.weights[len('whisper:'):] if self.cfg.weights.startswith('whisper:') else ''
            if name in whisper._ALIGNMENT_HEADS:  # the heads that time words best, per released model
                model.set_alignment_heads(whisper._ALIGNMENT_HEADS[name])
        fp16 = self.device.type == 'cuda'
        if fp16:  # half weights: whisper casts fp32 weights to the input's dtype at every call otherwise
            _half_but_layer_norms(model)  # its LayerNorms compute in fp32 and need fp32 weights
        self.model = model.eval().to(self.device)
        self.vad = load_vad(self.device) if self.cfg.vad else None
        self.options = BatchOptions(language=self.cfg.language, temperatures=tuple(self.cfg.temperatures),
                                    sample_len=self.cfg.max_tokens, fp16=fp16, batch_size=self.batch_size,
                                    min_speech=self.cfg.min_speech if self.cfg.vad else 0.0)
        self.windows = {'decoded': 0, 'no speech': 0}  # counted over the run, for the bench and tests
        return self

    def process(self, inputs: VideoInput) -> VideoResult:
        return self.process_batch([inputs])[0]

    def process_batch(self, inputs: list[VideoInput]) -> list[VideoResult]:
        assert self.model is not None and all(x.audio is not None for x in inputs)
        audios = [np.ascontiguousarray(x.audio, np.float32) for x in inputs]
        transcripts = transcribe_batch(self.model, audios, self.options, self.vad, self.cfg.vad_threshold)
        out = []
        for audio, tr in zip(audios, transcripts):
            self.windows['decoded'] += tr.decoded
            self.windows['no speech'] += tr.silent
            duration = len(audio) / 16000
            tokens = []
            for segment in tr.segments:
                for w in segment['words']:
                    word = w['word'].strip()
                    if word:  # whisper's word times can overshoot the clip by a frame: keep them inside it
                        start = float(min(max(w['start'], 0.0), duration))
                        tokens.append({'word': word, 'start': start, 'end': float(min(max(w['end'], start), duration)),
                                       'conf': float(w.get('probability', 0.0))})
            out.append(words_result(tokens, self.wv, self.cfg.max_rows))
        return out


default_cfgs = {
    'speech': SpeechCfg(arch='whisper', weights='whisper:small', feature_dim=300, sampling='audio', max_rows=512,
                        resize=(1,), input_size=0, license='mit (openai-whisper)',
                        origin_url='https://github.com/openai/whisper'),
}


@EXPERTS.register('speech')
def whisper_small(**overrides: Any) -> SpeechExpert:
    """openai-whisper (small), English, word timestamps."""
    return build_expert(SpeechExpert, default_cfgs, 'speech', overrides)
