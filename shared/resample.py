"""resampy's band-limited sinc resampling (its `kaiser_best` filter) in numpy, without numba.

VGGish's reference input (`vggish_input.waveform_to_examples`) resamples with
`resampy.resample(data, rate, 16000)`. resampy evaluates, for each output sample at input time
t / ratio, a Kaiser-windowed sinc stored as a table of its right wing (`precision` entries per
input sample), linearly interpolated between entries and, when downsampling, stretched by the
ratio (`index_step = int(ratio * precision)` entries per input sample, the table scaled by the
ratio). Samples outside the signal count as zeros. With the rates in lowest terms, sr_new/sr_orig =
p/q, output t lies at input q*t/p, and the weight of x[n] depends only on q*t - p*n: the whole
resampling is one FIR filter on the signal upsampled by p, kept every q-th sample, which
`scipy.signal.upfirdn` computes polyphase, in C.

`kaiser_best` here is the filter of resampy up to 0.2.2 (2016-2022: 64 zero crossings, 2**9 entries
each, Kaiser beta 14.7697, roll-off 0.9476), the one installed with VGGish's reference code when
CE (2019) and MMT (2020) extracted their features; resampy 0.3 (July 2022) replaced it with a
longer one (50 crossings, 2**13 entries, beta 12.9846, roll-off 0.9173; `kaiser_best_v0.3` here).
"""
from __future__ import annotations

import functools
import math

import numpy as np
from scipy.signal import upfirdn

__all__ = ['FILTERS', 'resample', 'resampled_length']

#: name -> (zero crossings, log2 table entries per crossing, Kaiser beta, roll-off, whether output times
#: are summed increments (resampy 0.2) rather than products (0.3 on)): float times as each version has them
FILTERS = {
    'kaiser_best': (64, 9, 14.769656459379492, 0.9475937167399596, True),  # resampy <= 0.2.2
    'kaiser_best_v0.3': (50, 13, 12.9846, 0.9173473712608761, False),  # resampy >= 0.3 (its beta as published)
}

#: output samples resampled at once (the input they read is converted to float64 a block at a time)
_BLOCK = 1 << 20


@functools.cache
def _half_window(name: str) -> tuple[np.ndarray, int]:
    """(right wing of the windowed sinc, table entries per input sample); as resampy's
    `sinc_window`, from which its packaged tables were made (equal to 2e-16 for `kaiser_best`)."""
    zeros, bits, beta, rolloff, _ = FILTERS[name]
    n = zeros << bits
    wing = rolloff * np.sinc(rolloff * np.linspace(0.0, zeros, n + 1)) * np.kaiser(2 * n + 1, beta)[n:]
    wing.flags.writeable = False
    return wing, 1 << bits


def resampled_length(n: int, sr_orig: int, sr_new: int) -> int:
    """resampy's output length: int(n * ratio), the ratio as a float (as resampy 0.2 computes it)."""
    return int(n * (float(sr_new) / sr_orig))


def resample(x: np.ndarray, sr_orig: int, sr_new: int, filter: str = 'kaiser_best') -> np.ndarray:
    """`resampy.resample(x, sr_orig, sr_new, filter=filter)` of a 1-D signal, as float32 (sums in
    float64, as resampy's on float64 input); `x` as it is (as float32) when the rates are equal.

    Raises:
        ValueError: a rate that is not a positive whole number, an unknown filter, or a signal too
            short to give one output sample.
    """
    if filter not in FILTERS:
        raise ValueError(f'filter must be one of {", ".join(map(repr, FILTERS))}, got {filter!r}')
    for name, rate in (('sr_orig', sr_orig), ('sr_new', sr_new)):
        if int(rate) != rate or rate <= 0:
            raise ValueError(f'{name} must be a positive whole number of Hz, got {rate}')
    x = np.asarray(x)
    if x.ndim != 1:
        raise ValueError(f'resample takes a 1-D signal, got shape {x.shape}')
    if sr_orig == sr_new:
        return np.asarray(x, np.float32)
    n_out = resampled_length(len(x), sr_orig, sr_new)
    if n_out < 1:
        raise ValueError(f'a signal of {len(x)} samples is too short to resample from {sr_orig} to {sr_new} Hz')
    ratio = float(sr_new) / sr_orig
    g = math.gcd(int(sr_orig), int(sr_new))
    p, q = int(sr_new) // g, int(sr_orig) // g  # output t = p*m + j lies at input q*m + j*q/p
    wing, table = _half_window(filter)
    scale = min(1.0, ratio)
    if ratio < 1:  # downsampling: the sinc is stretched to the output's band, its gain scaled
        wing = wing * scale
    delta = np.append(np.diff(wing), 0.0)
    step = int(scale * table)
    time_increment = 1.0 / ratio
    accumulate = FILTERS[filter][4]

    def taps(frac: float) -> np.ndarray:
        """One wing's weights, nearest sample first, for an output `frac` (scaled) past a sample."""
        index = frac * table
        offset = int(index)
        at = offset + step * np.arange((len(wing) - offset) // step)
        return wing[at] + (index - offset) * delta[at]

    def slopes(frac: float) -> np.ndarray:
        """The table's differences at `taps(frac)`'s entries: its weights' change per unit of eta."""
        offset = int(frac * table)
        return delta[offset + step * np.arange((len(wing) - offset) // step)]

    def kernel(t: float) -> tuple[int, np.ndarray]:
        """(first input sample it reads, weights) of the output at input time `t`, as resampy sums."""
        n = int(t)
        frac = scale * (t - n)
        left = taps(frac)
        return n - len(left) + 1, np.concatenate([left[::-1], taps(scale - frac)])

    # the FIR: h[back + d] weighs x[n] for the output t where d = q*t - p*n (left wing d >= 0, x[n] at
    # or before the output's time; right wing d < 0); an output r/p past a sample has left weights
    # taps(scale*r/p) at d = r, r + p, ... and right ones taps(scale*(p-r)/p) at d = r - p, r - 2p, ...
    wings = [(taps(scale * r / p), taps(scale * (p - r) / p)) for r in range(p)]
    ahead = max(p * len(right) - r for r, (_, right) in enumerate(wings))  # the most negative d
    back = q * -(-ahead // q)  # h's delay: a whole number of outputs (q | back), so y[t] = full[t + back // q]
    h = np.zeros(back + max(p * len(left) for left, _ in wings))
    # hd: the table's differences at h's taps, the right wing's negated: resampy's output at a time
    # a hair past the grid's, in the same table cells, is upfirdn(h) + (its eta - the grid's) * upfirdn(hd)
    hd = np.zeros_like(h)
    for r, (left, right) in enumerate(wings):
        h[back + r + p * np.arange(len(left))] = left
        h[back + r - p * (1 + np.arange(len(right)))] = right
        hd[back + r + p * np.arange(len(left))] = slopes(scale * r / p)[:len(left)]
        hd[back + r - p * (1 + np.arange(len(right)))] = -slopes(scale * (p - r) / p)[:len(right)]
    reach = (len(h) - back) // p + 1  # input samples before an output's time that h reaches
    lead = q * -(-reach // q)  # input before a block's first output, a multiple of q (whole outputs)
    block = p * max(1, _BLOCK // p)
    y = np.empty(n_out, np.float32)
    carry = 0.0
    for t0 in range(0, n_out, block):
        t1 = min(t0 + block, n_out)
        s0 = q * t0 // p - lead  # the block's input from x[s0] (zeros before x[0])
        seg = np.zeros(q * (t1 - t0) // p + lead + -(-back // p) + 2, np.float64)
        a, b = max(s0, 0), min(s0 + len(seg), len(x))
        if b > a:
            seg[a - s0:b - s0] = x[a:b]  # float64 a block at a time: no copy of a long file
        first = t0 - p * s0 // q + back // q  # output t0 in upfirdn's output of seg
        y[t0:t1] = upfirdn(h, seg, p, q)[first:first + t1 - t0]
        # resampy takes output t at its float time: 0.2 sums the time increments output by output,
        # and the sum drifts off the grid (by 1e-3 of a sample 10 minutes into 44.1 kHz audio: 0.2%
        # of the waveform off, the grid's output taken); 0.3 on multiplies, which can fall a hair
        # short of a whole number. Each output is moved to resampy's time: its weights are linear in
        # eta (the table interpolated linearly), so hd moves it (across a table cell too, where the
        # table's second differences, 1e-5 of the waveform at 10 minutes, are left out); one whose
        # time crossed a sample (the grid's a whole number, resampy's a hair below it: the two
        # wings' weights swapped, which differ as the table step is rounded down) is summed as
        # resampy sums it
        t = np.arange(t0, t1, dtype=np.int64)
        if accumulate:
            steps = np.full(t1 - t0, time_increment)
            steps[0] = carry
            times = np.cumsum(steps)
            carry = times[-1] + time_increment
        else:
            times = t * time_increment
        r = q * t % p
        grid = scale * r / p
        n_d = times.astype(np.int64)
        frac = scale * (times - n_d)
        same = n_d == q * t // p
        eta = (frac - grid) * table
        if np.any(eta[same] != 0):
            y[t0:t1] += np.where(same, eta, 0.0) * upfirdn(hd, seg, p, q)[first:first + t1 - t0]
        for i in np.flatnonzero(~same):
            start, w = kernel(times[i])
            lo, hi = max(start, 0), min(start + len(w), len(x))
            y[t0 + i] = np.dot(np.asarray(x[lo:hi], np.float64), w[lo - start:hi - start])
    return y
