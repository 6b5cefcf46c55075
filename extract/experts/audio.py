"""Audio expert: VGGish (Hershey et al. 2017), 128-d embeddings of 0.96 s log-mel examples.

The front end follows the VGGish specification, computed in torch on the model's device:
16 kHz mono; STFT with a 25 ms (400-sample) periodic Hann window and a 10 ms (160-sample) hop,
FFT size 512, magnitude; 64 mel bands from 125 to 7500 Hz on the HTK mel scale (triangles in mel
space, DC bin unused); log(mel + 0.01); non-overlapping examples of 96 frames (0.96 s). The
network is VGGish with no ReLU after its final 128-d layer; weights are a torchvggish state dict.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from extract.decode import AUDIO_RATE
from extract.experts import EXPERTS, build_expert
from extract.experts._base import ExpertCfg, VideoExpert, VideoInput
from shared.store import DONE, VideoResult

__all__ = ['AudioExpert', 'VGGish', 'log_mel_examples', 'mel_matrix', 'default_cfgs', 'WINDOW', 'HOP', 'N_FFT',
           'N_MELS', 'EXAMPLE_FRAMES']

WINDOW, HOP, N_FFT = 400, 160, 512  # 25 ms, 10 ms, at 16 kHz
N_MELS, MEL_LOW, MEL_HIGH = 64, 125.0, 7500.0
EXAMPLE_FRAMES = 96  # 0.96 s
LOG_OFFSET = 0.01


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


def log_mel_examples(audio: torch.Tensor) -> torch.Tensor:
    """Mono 16 kHz waveform (N,) -> (K, 96, 64) log-mel examples; K = 0 below one example."""
    n = audio.shape[0]
    n_frames = 0 if n < WINDOW else 1 + (n - WINDOW) // HOP
    k = n_frames // EXAMPLE_FRAMES
    if k == 0:
        return audio.new_zeros((0, EXAMPLE_FRAMES, N_MELS))
    frames = audio[: (n_frames - 1) * HOP + WINDOW].unfold(0, WINDOW, HOP)  # (F, 400), no padding
    window = torch.hann_window(WINDOW, periodic=True, dtype=audio.dtype, device=audio.device)
    spec = torch.fft.rfft(frames * window, n=N_FFT).abs()  # (F, 257)
    mel = spec @ torch.from_numpy(mel_matrix()).to(audio.device, audio.dtype)
    logmel = torch.log(mel + LOG_OFFSET)
    return logmel[: k * EXAMPLE_FRAMES].reshape(k, EXAMPLE_FRAMES, N_MELS)


class VGGish(nn.Module):
    """VGGish; parameter names follow torchvggish (features.*, embeddings.*)."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 1
        for block in ((64,), (128,), (256, 256), (512, 512)):
            for width in block:
                layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
                channels = width
            layers.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*layers)
        # no ReLU after the last layer: the embedding is its linear output
        self.embeddings = nn.Sequential(nn.Linear(512 * 4 * 6, 4096), nn.ReLU(inplace=True),
                                        nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Linear(4096, 128))

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
    """

    downmix: str = 'mean'

    def __post_init__(self) -> None:
        super().__post_init__()
        check_downmix(self.downmix)


def check_downmix(downmix: str) -> None:
    if downmix != 'mean':
        raise ValueError(f"downmix must be 'mean' (the channel mean), got {downmix!r}")


class AudioExpert(VideoExpert):
    modality = 'audio'
    legacy_defaults = (('downmix', 'ffmpeg -ac 1'),)
    head_keys = ()

    def build(self) -> nn.Module:
        return VGGish()

    def convert_state_dict(self, sd: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in sd.items() if not k.startswith('pproc')}  # torchvggish's PCA buffers

    @torch.inference_mode()
    def process(self, inputs: VideoInput) -> VideoResult:
        assert inputs.audio is not None
        wave = torch.from_numpy(np.ascontiguousarray(inputs.audio, np.float32)).to(self.device)
        examples = log_mel_examples(wave)
        k = min(len(examples), self.cfg.max_rows)
        if k == 0:  # shorter than one 0.96 s example: nothing to embed
            return VideoResult(np.zeros((0, 128), np.float32), np.zeros((0, 2), np.float32), DONE, available=False)
        feats = torch.cat([self.forward(examples[i:i + self.batch_size])
                           for i in range(0, k, self.batch_size)]).cpu().numpy()
        start = np.arange(k, dtype=np.float32) * (EXAMPLE_FRAMES * HOP / AUDIO_RATE)
        return VideoResult(feats, np.stack([start, start + EXAMPLE_FRAMES * HOP / AUDIO_RATE], axis=1), DONE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert self.model is not None
        with torch.inference_mode():
            return self.model(x.to(self.dtype)).float()


VGGISH_FILE = 'vggish-10086976.pth'
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
