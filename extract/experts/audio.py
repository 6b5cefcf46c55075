"""Audio expert: VGGish (Hershey et al. 2017), 128-d embeddings of 0.96 s log-mel examples.

The front end follows the VGGish specification, computed in torch on the model's device:
16 kHz mono (the channel mean, resampled as `vggish_input` does, with resampy's `kaiser_best`:
`shared.resample`); STFT with a 25 ms (400-sample) periodic Hann window and a 10 ms (160-sample) hop,
FFT size 512, magnitude; 64 mel bands from 125 to 7500 Hz on the HTK mel scale (triangles in mel
space, DC bin unused); log(mel + 0.01); non-overlapping examples of 96 frames (0.96 s).

The head and post-processing are those that made CE's and MMT's VGGish features. CE's authors
extracted them with the TensorFlow AudioSet VGGish code (albanie/collaborative-experts issue #3,
2019-10-02: "we used the vggish model for audio (tensorflow)"); MMT computed its audio features
itself for ECCV 2020. Until tensorflow/models PR #9080 (2020-08-10, "VGGish embeddings are
pre-activation, not post-activation") that code's final 128-d layer had a ReLU, as torchvggish's
port still has: so `head='relu'` is the default, and `head='linear'` is today's TF VGGish (the
pre-activation form of AudioSet's released embeddings). `postprocess='pca'` applies the AudioSet /
YouTube-8M release format on top (PCA whitening with the published parameters, clip to [-2, 2],
8-bit quantisation to 0..255), as `vggish_postprocess.py` and torchvggish's `Postprocessor` do.
Neither paper says its features were post-processed, so the default is the raw embedding; a
release whose values are whole numbers in 0..255 was post-processed (`pipelines.compare_features`
says so when it sees one). Weights are a torchvggish state dict.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from extract.sampling import AUDIO_RATE, Sampling
from extract.experts import EXPERTS, build_expert
from extract.experts._base import ExpertCfg, VideoExpert, VideoInput
from extract.weights import ResolvedWeights, WeightsError, load_state_dict, resolve_weights
from shared.media import RESAMPLERS
from shared.store import DONE, VideoResult

__all__ = ['AudioExpert', 'AudioCfg', 'VGGish', 'log_mel_examples', 'mel_matrix', 'postprocess_pca', 'load_pca_params',
           'default_cfgs', 'WINDOW', 'HOP', 'N_FFT', 'N_MELS', 'EXAMPLE_FRAMES']

WINDOW, HOP, N_FFT = 400, 160, 512  # 25 ms, 10 ms, at 16 kHz
N_MELS, MEL_LOW, MEL_HIGH = 64, 125.0, 7500.0
EXAMPLE_FRAMES = 96  # 0.96 s
LOG_OFFSET = 0.01
HEADS = ('relu', 'linear')
POSTPROCESS = ('none', 'pca')
QUANTIZE_MIN, QUANTIZE_MAX = -2.0, 2.0  # vggish_params.QUANTIZE_MIN_VAL / MAX_VAL
VGGISH_FILE = 'vggish-10086976.pth'
PCA_FILE = 'vggish_pca_params-970ea276.pth'
PCA_URL = f'https://github.com/harritaylor/torchvggish/releases/download/v0.1/{PCA_FILE}'


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    return 1127.0 * np.log1p(np.asarray(hz, np.float64) / 700.0)  # HTK


def mel_matrix(n_bins: int = N_FFT // 2 + 1, n_mels: int = N_MELS, rate: int = AUDIO_RATE,
               low: float = MEL_LOW, high: float = MEL_HIGH) -> np.ndarray:
    """(n_bins, n_mels) weights: triangles spaced evenly on the HTK mel scale, evaluated at the
    mel value of each linear-frequency bin; the DC bin gets no weight."""
    bins_mel = _hz_to_mel(np.linspace(0.0, rate / 2, n_bins))
    edges = np.linspace(_hz_to_mel(low), _hz_to_mel(high), n_mels + 2)
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins_mel[:, None] - lower[None, :]) / (centre - lower)[None, :]
    falling = (upper[None, :] - bins_mel[:, None]) / (upper - centre)[None, :]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights[0, :] = 0.0
    return weights.astype(np.float32)


def example_count(samples: int) -> int:
    """Whole 0.96 s examples in a waveform of `samples` samples."""
    n_frames = 0 if samples < WINDOW else 1 + (samples - WINDOW) // HOP
    return n_frames // EXAMPLE_FRAMES


#: examples whose spectra are computed at once: the intermediates of a whole long file (its (F, 400)
#: windowed frames and (F, 257) spectra, 13x the waveform: 1 GB for 20 minutes) are never all held
EXAMPLE_BLOCK = 64


def log_mel_examples(audio: torch.Tensor, which: np.ndarray | None = None) -> torch.Tensor:
    """Mono 16 kHz waveform (N,) -> (K, 96, 64) log-mel examples; K = 0 below one example.

    Args:
        which: the examples to compute (indices below `example_count`); default all of them.
    """
    k = example_count(audio.shape[0])
    index = np.arange(k) if which is None else np.asarray(which, np.int64)
    if k == 0 or len(index) == 0:
        return audio.new_zeros((0, EXAMPLE_FRAMES, N_MELS))
    window = torch.hann_window(WINDOW, periodic=True, dtype=audio.dtype, device=audio.device)
    mel_w = torch.from_numpy(mel_matrix()).to(audio.device, audio.dtype)
    span = (EXAMPLE_FRAMES - 1) * HOP + WINDOW  # the samples of one example's 96 frames
    out = []
    for b in range(0, len(index), EXAMPLE_BLOCK):
        frames = torch.cat([audio[int(e) * EXAMPLE_FRAMES * HOP:][:span].unfold(0, WINDOW, HOP)
                            for e in index[b:b + EXAMPLE_BLOCK]])  # (B * 96, 400), no padding
        spec = torch.fft.rfft(frames * window, n=N_FFT).abs()  # (B * 96, 257)
        out.append(torch.log(spec @ mel_w + LOG_OFFSET).reshape(-1, EXAMPLE_FRAMES, N_MELS))
    return torch.cat(out)


class VGGish(nn.Module):
    """VGGish; parameter names follow torchvggish (features.*, embeddings.*).

    Args:
        head: ``relu`` (a ReLU after the last layer) or ``linear`` (none); see the module docstring.
    """

    def __init__(self, head: str = 'relu') -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 1
        for block in ((64,), (128,), (256, 256), (512, 512)):
            for width in block:
                layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
                channels = width
            layers.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*layers)
        check_choice('head', head, HEADS)
        last: list[nn.Module] = [nn.ReLU(inplace=True)] if head == 'relu' else []  # no parameters: keys unchanged
        self.embeddings = nn.Sequential(nn.Linear(512 * 4 * 6, 4096), nn.ReLU(inplace=True),
                                        nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Linear(4096, 128), *last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 96, 64) log-mel examples -> (B, 128)."""
        x = self.features(x.unsqueeze(1))
        x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)  # TF's NHWC flattening order
        return self.embeddings(x)


@dataclasses.dataclass(frozen=True)
class AudioCfg(ExpertCfg):
    """VGGish settings; the front end is fixed by the specification.

    Args:
        downmix: how several audio channels become one: ``mean`` (gain 1, as VGGish's reference
            and whisper's `load_audio`), the only choice. Stores made before it existed had
            FFmpeg's ``-ac 1`` (3 dB louder on stereo) and are refused rather than extended.
        head: ``relu`` (the TF VGGish that CE and MMT used, and torchvggish) or ``linear`` (TF
            VGGish since August 2020). Stores made before this setting had ``linear``.
        postprocess: ``none`` (the raw 128-d embedding) or ``pca`` (AudioSet's release format:
            PCA whitening, clip to [-2, 2], quantised to whole numbers 0..255).
        pca_params: weight spec of the PCA parameters for ``postprocess=pca``: torchvggish's
            ``vggish_pca_params-970ea276.pth`` or TF's ``vggish_pca_params.npz`` (keys
            ``pca_eigen_vectors`` (128, 128) and ``pca_means`` (128,)).
        resampler: how audio not at 16 kHz gets there. ``kaiser_best``: `vggish_input`'s
            `resampy.resample` with the `kaiser_best` filter of resampy up to 0.2.2, the one CE's
            and MMT's features were made with; ``kaiser_best_v0.3``: that of resampy 0.3 on (what
            torchvggish installs today); ``ffmpeg``: FFmpeg's resampler (the speech expert's, as
            whisper's), which stores made before this setting had, and are refused rather than
            extended: a random VGGish's embeddings of it were 0.05-0.9% off the reference's at 44.1
            and 48 kHz, 1-3% at 8 kHz (relative error).
    """

    downmix: str = 'mean'
    head: str = 'relu'
    postprocess: str = 'none'
    pca_params: str = f'file:{PCA_FILE}'
    resampler: str = 'kaiser_best'

    def __post_init__(self) -> None:
        check_choice('resampler', self.resampler, RESAMPLERS)  # before the base checks the sampling with it
        super().__post_init__()
        check_downmix(self.downmix)
        check_choice('head', self.head, HEADS)
        check_choice('postprocess', self.postprocess, POSTPROCESS)

    def sampling_spec(self) -> Sampling:
        return dataclasses.replace(super().sampling_spec(), resampler=self.resampler)


def check_downmix(downmix: str) -> None:
    if downmix != 'mean':
        raise ValueError(f"downmix must be 'mean' (the channel mean), got {downmix!r}")


def check_choice(setting: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f'{setting} must be one of {", ".join(map(repr, choices))}, got {value!r}')


def postprocess_pca(emb: torch.Tensor, eigen_vectors: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """AudioSet's release format of (B, 128) embeddings: PCA (with whitening) by the published
    parameters, clipped to [-2, 2] and quantised to 8 bits, as whole numbers 0..255 in float32."""
    pca = (emb - means.view(1, -1)) @ eigen_vectors.T
    clipped = pca.clamp(QUANTIZE_MIN, QUANTIZE_MAX)
    return torch.round((clipped - QUANTIZE_MIN) * (255.0 / (QUANTIZE_MAX - QUANTIZE_MIN)))


def load_pca_params(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(eigen_vectors (128, 128), means (128,)) from torchvggish's .pth or TF's .npz (no pickle)."""
    if path.suffix == '.npz':
        with np.load(path, allow_pickle=False) as z:
            params = {k: torch.from_numpy(np.asarray(z[k], np.float32)) for k in z.files}
    else:
        params = load_state_dict(path)
    try:
        vectors = torch.as_tensor(params['pca_eigen_vectors'], dtype=torch.float32)
        means = torch.as_tensor(params['pca_means'], dtype=torch.float32).reshape(-1)
    except KeyError as err:
        raise WeightsError(f'{path} has no {err} (VGGish PCA parameters: pca_eigen_vectors, pca_means)') from None
    if vectors.shape != (128, 128) or means.shape != (128,):
        raise WeightsError(f'{path}: PCA parameters of shape {tuple(vectors.shape)} and {tuple(means.shape)}, '
                           'expected (128, 128) and (128,)')
    return vectors, means


class AudioExpert(VideoExpert):
    modality = 'audio'
    legacy_defaults = (('downmix', 'ffmpeg -ac 1'), ('head', 'linear'), ('resampler', 'ffmpeg'))
    head_keys = ()
    _pca: tuple[torch.Tensor, torch.Tensor] | None = None

    def build(self) -> nn.Module:
        return VGGish(self.cfg.head)

    def load(self, device: torch.device | str) -> AudioExpert:
        super().load(device)
        if self.cfg.postprocess == 'pca':
            params = self._pca_weights()
            assert params.path is not None
            self._pca = tuple(t.to(self.device) for t in load_pca_params(params.path))  # type: ignore[assignment]
        return self

    def _pca_weights(self) -> ResolvedWeights:
        return resolve_weights(self.cfg.pca_params, PCA_URL)

    def store_info(self) -> dict[str, Any]:
        info = super().store_info()
        if self.cfg.postprocess == 'pca':  # the parameters change every row: record which file
            info['pca_params_sha256'] = self._pca_weights().sha256
        return info

    def convert_state_dict(self, sd: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in sd.items() if not k.startswith('pproc')}  # torchvggish's PCA buffers

    @torch.inference_mode()
    def process(self, inputs: VideoInput) -> VideoResult:
        assert inputs.audio is not None
        wave = torch.from_numpy(np.ascontiguousarray(inputs.audio, np.float32)).to(self.device)
        n = example_count(len(wave))
        if n == 0:  # shorter than one 0.96 s example: nothing to embed
            return VideoResult(np.zeros((0, 128), np.float32), np.zeros((0, 2), np.float32), DONE, available=False)
        # a longer file than T examples keeps T spread evenly over it, as the frame experts' rows are
        # (`extract.sampling.plan_rows`): the example at the centre of each of T equal parts
        pick = np.arange(n) if n <= self.cfg.max_rows else (
            (np.arange(self.cfg.max_rows) + 0.5) * n / self.cfg.max_rows).astype(np.int64)
        # a batch at a time: the log-mel examples of a long file are not all held at once either
        feats = torch.cat([self.forward(log_mel_examples(wave, pick[i:i + self.batch_size]))
                           for i in range(0, len(pick), self.batch_size)]).cpu().numpy()
        start = pick.astype(np.float32) * np.float32(EXAMPLE_FRAMES * HOP / AUDIO_RATE)
        return VideoResult(feats, np.stack([start, start + EXAMPLE_FRAMES * HOP / AUDIO_RATE], axis=1), DONE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert self.model is not None
        with torch.inference_mode():
            emb = self.model(x.to(self.dtype)).float()
            return emb if self._pca is None else postprocess_pca(emb, *self._pca)


default_cfgs = {
    'audio': AudioCfg(arch='vggish', weights=f'file:{VGGISH_FILE}', feature_dim=128, sampling='audio', fps=1 / 0.96,
                      max_rows=1024, batch_size=64, resize=(96,), input_size=0, license='apache-2.0',
                      origin_url=f'https://github.com/harritaylor/torchvggish/releases/download/v0.1/{VGGISH_FILE}'),
}


@EXPERTS.register('audio')
def vggish(**overrides: Any) -> AudioExpert:
    """VGGish (AudioSet / YouTube-8M), CE's and MMT's audio expert."""
    return build_expert(AudioExpert, default_cfgs, 'audio', overrides)


assert math.isclose(EXAMPLE_FRAMES * HOP / AUDIO_RATE, 0.96)
