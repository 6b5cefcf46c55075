"""Makes vggish_resampled.npz: VGGish's reference 16 kHz waveforms of three 1-s test signals (44.1 kHz
stereo, 48 kHz stereo, 8 kHz mono, 16-bit), as `vggish_input.wavfile_to_examples` makes them with
resampy 0.2.2 (the `kaiser_best` filter of 2016-2022 installs, the one CE's and MMT's features had):
int16 / 32768.0, the channel mean, `resampy.resample(data, rate, 16000)`, in float64 (kept as float32).

Run with resampy 0.2.2 (it needs numba), outside the project's environment:
    python3 -m venv --system-site-packages /tmp/resampy022 && /tmp/resampy022/bin/pip install resampy==0.2.2
    /tmp/resampy022/bin/python tests/extract/data/make_vggish_resampled.py
Only numpy and resampy are imported: `signals` is also what the test writes to WAV files.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

RATES = (44100, 48000, 8000)


def signals(rate: int) -> np.ndarray:
    """(N, channels) int16 samples of 1 s at `rate`: at 44.1 and 48 kHz a tone and a linear chirp up to
    0.45 of the rate (content past 8 kHz, which the resampler must keep out) left, noise right; at
    8 kHz one channel of a 150 Hz buzz with moving formants, plus noise."""
    t = np.arange(rate) / rate
    noise = np.random.default_rng(rate).normal(size=rate) * 0.05
    if rate == 8000:
        buzz = sum(a * np.sin(2 * np.pi * f * t) * (1 + np.sin(2 * np.pi * m * t))
                   for a, f, m in ((0.3, 150, 3), (0.2, 450, 4), (0.15, 1200, 5), (0.1, 2550, 7), (0.05, 3900, 2)))
        x = (buzz + noise)[:, None]
    else:
        top = 0.45 * rate
        chirp = 0.3 * np.sin(2 * np.pi * (50 * t + (top - 50) / 2 * t * t))
        x = np.stack([0.3 * np.sin(2 * np.pi * 440 * t) + chirp, noise * 4], axis=1)
    return np.round(np.clip(x, -1, 1) * 32767).astype(np.int16)


def digest(samples: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(samples).tobytes()).hexdigest()


if __name__ == '__main__':
    import resampy

    assert resampy.__version__ == '0.2.2', resampy.__version__
    out = {}
    for rate in RATES:
        x = signals(rate)
        data = np.mean(x / 32768.0, axis=1)
        out[f'wave_{rate}'] = resampy.resample(data, rate, 16000).astype(np.float32)
        out[f'sha256_{rate}'] = np.array(digest(x))
    np.savez(Path(__file__).with_name('vggish_resampled.npz'), **out)
