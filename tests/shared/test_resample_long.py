"""`shared.resample` against resampy where its float output times leave the grid q*t/p: resampy
0.2's summed increments drift over minutes, resampy 0.3's products fall a hair short of whole
numbers at some rates. Both must be followed, not only the first seconds."""
from __future__ import annotations

import numpy as np
import pytest

from shared.resample import _half_window, resample


def _resampy_0_2(x: np.ndarray, rate: int) -> np.ndarray:
    """resampy 0.2.2's `resample(x, rate, 16000)`: its loop is the installed resampy's
    `_resample_loop` run on its times, summed increment by increment (0.2's `time_register +=
    time_increment`), with its `kaiser_best` table (`_half_window`, equal to its packaged one to 2e-16)."""
    interpn = pytest.importorskip('resampy.interpn')
    wing, table = _half_window('kaiser_best')
    ratio = 16000 / rate
    wing = np.array(wing) * min(1.0, ratio)
    delta = np.append(np.diff(wing), 0.0)
    n_out = int(len(x) * ratio)
    steps = np.full(n_out, 1.0 / ratio)
    steps[0] = 0.0
    y = np.zeros(n_out)
    interpn._resample_loop_s(x.astype(np.float64), np.cumsum(steps), wing, delta, table, min(1.0, ratio), y)
    return y


def test_kaiser_best_follows_resampy_0_2_for_minutes() -> None:
    """5 minutes at 11025 Hz: the grid's outputs were 6e-4 off resampy 0.2's (0.2% of the noise's
    amplitude) by the end; 1e-5 now (the table's second differences across cells left out)."""
    x = (np.random.default_rng(0).normal(size=11025 * 300) * 0.3).astype(np.float32)
    want = _resampy_0_2(x, 11025)
    got = resample(x, 11025, 16000, 'kaiser_best')
    assert len(got) == len(want)
    assert np.abs(got - want).max() <= 2e-5


def test_kaiser_best_v0_3_follows_resampy_at_whole_times() -> None:
    """At 47999 Hz resampy 0.3's time t * (47999 / 16000) of some outputs falls a hair short of the
    whole number it is: it takes them from the sample before (4e-5 off the grid's, 20 s in)."""
    resampy = pytest.importorskip('resampy')
    if resampy.__version__.startswith(('0.1', '0.2')):
        pytest.skip('resampy 0.2 installed: kaiser_best_v0.3 is not its filter')
    x = np.random.default_rng(1).normal(size=47999 * 20 + 17) * 0.3
    want = resampy.resample(x, 47999, 16000, filter='kaiser_best')
    got = resample(x.astype(np.float32), 47999, 16000, 'kaiser_best_v0.3')
    assert len(got) == len(want)
    assert np.abs(got - want).max() <= 1e-6
