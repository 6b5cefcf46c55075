"""Which decoder a run uses: decord worker processes on the CPU, or NVDEC on the GPU, and the
rule that keeps decord and PyNvVideoCodec (each bundles its own FFmpeg) out of one process."""
from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

__all__ = ['DECODERS', 'NVDEC_MIN_PIXELS', 'FFMPEG_BUNDLERS', 'refuse_ffmpeg_clash', 'nvdec_available',
           'choose_decoder', 'spread']

DECODERS = ('auto', 'decord', 'nvdec')

#: libraries that bundle FFmpeg builds of their own, which crash when both are loaded into one process
FFMPEG_BUNDLERS = ('decord', 'PyNvVideoCodec')


def refuse_ffmpeg_clash(wanted: str) -> None:
    """Raise instead of loading `wanted` (one of `FFMPEG_BUNDLERS`) beside the other one.

    With both in one process, the process dies in native code: on an H100, PyNvVideoCodec 2.2.4
    segfaulted creating its decoder once decord 0.6.0 had read a file in that process, though the
    same calls passed in a fresh one. A clear error is better than a dead run.

    Raises:
        RuntimeError: the other library is loaded in this process.
    """
    other = next(m for m in FFMPEG_BUNDLERS if m != wanted)
    if other in sys.modules:
        raise RuntimeError(f'{other} is loaded in this process, and {wanted} crashes beside it (each bundles its '
                           f'own FFmpeg): use {wanted} in a process of its own')


def nvdec_available() -> str:
    """'' when NVDEC can be used here, else why not."""
    from importlib.util import find_spec

    if find_spec('PyNvVideoCodec') is None:
        return "PyNvVideoCodec is not installed (pip install -e '.[nvdec]', or pip install pynvvideocodec)"
    import torch

    if not torch.cuda.is_available():
        return 'no CUDA device'
    return ''


def spread(items: Sequence[Any], k: int = 5) -> list[Any]:
    """Up to `k` items spread evenly from the first to the last (the videos `auto` probes)."""
    if len(items) <= k:
        return list(items)
    return [items[round(i * (len(items) - 1) / (k - 1))] for i in range(k)]


#: frame area from which `auto` takes NVDEC for 1-fps frame sampling. Decode-only on an H100 host
#: (BENCHMARKS.md, 15 s H.264 clips at 30 fps), 15 decord processes against 4 NVDEC threads, in
#: videos/s: 320x240 76.0 / 35.1, 640x360 41.2 / 28.3, 1280x720 10.8 / 13.4, 1920x1080 6.2 / 6.7.
NVDEC_MIN_PIXELS = 1280 * 720


def choose_decoder(requested: str, device: str, sample: str | Sequence[str] | None = None,
                   clips: bool = False) -> tuple[str, str]:
    """The decoder to use and why.

    `auto` takes NVDEC on a CUDA device where PyNvVideoCodec works when an expert samples clips
    (many frames per row: NVDEC decoded 4.1x as many videos/s as 15 decord processes at 320x240),
    or when the videos have `NVDEC_MIN_PIXELS` or more; otherwise decord worker processes. The
    videos are judged by `sample`: a few of the run's videos (the median of those that can be
    probed), so that one odd first video does not decide for a collection of mixed sizes. Still
    images are decoded on the CPU whatever the decoder: a sample of images only takes decord.

    Raises:
        ValueError: an unknown decoder, or nvdec asked for where it cannot run.
    """
    if requested not in DECODERS:
        raise ValueError(f'unknown decoder {requested!r} (one of {", ".join(DECODERS)})')
    if requested == 'nvdec':
        if not device.startswith('cuda'):
            raise ValueError(f'--decoder nvdec decodes on the GPU, but the device is {device}')
        reason = nvdec_available()
        if reason:
            raise ValueError(f'--decoder nvdec: {reason}')
        return 'nvdec', 'asked for'
    if requested == 'decord':
        return 'decord', 'asked for'
    if not device.startswith('cuda'):
        return 'decord', 'no GPU in use'
    reason = nvdec_available()
    if reason:
        return 'decord', f'no NVDEC: {reason}'
    from shared.media import MediaError, is_image, probe

    paths = [sample] if isinstance(sample, str) else list(sample or [])
    videos = [p for p in paths if not is_image(p)]
    if paths and not videos:
        return 'decord', 'still images (decoded by Pillow in CPU processes)'
    if clips:
        return 'nvdec', 'clip sampling decodes many frames per row: NVDEC is faster'
    sizes = []
    for path in videos:
        try:
            info = probe(path)
        except (MediaError, OSError):
            continue
        if info.width:
            sizes.append((info.width * info.height, f'{info.width}x{info.height}'))
    if not sizes:
        return 'decord', 'no sampled video could be probed'
    pixels, size = sorted(sizes)[len(sizes) // 2]
    what = f'{size} videos' if len(sizes) == 1 else f'{size} videos (median of {len(sizes)} probed)'
    if pixels >= NVDEC_MIN_PIXELS:
        return 'nvdec', f'{what}: NVDEC from {NVDEC_MIN_PIXELS} pixels'
    return 'decord', f'{what}: decord processes are faster below {NVDEC_MIN_PIXELS} pixels'
