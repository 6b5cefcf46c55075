"""Frames of many videos in batches of one size, for detectors that take a stack of equal-size
images (MTCNN, CRAFT): the face and OCR experts' `process_batch`."""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

__all__ = ['frame_batches']


def frame_batches(frames: Sequence[np.ndarray], limit: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Batches of at most `limit` frames of one (H, W), taken across videos.

    Args:
        frames: each video's (L, H, W, 3) frames; videos may differ in size and length.
        limit: most frames per batch.

    Returns:
        (frames, video, row) per batch: the (B, H, W, 3) stack, and for each of its frames the
        video's index in `frames` and the row in that video. Within a size, batches follow video
        order, then row order, so a caller that appends per video keeps each video's row order.
    """
    if limit < 1:
        raise ValueError(f'limit must be >= 1, got {limit}')
    by_size: dict[tuple[int, ...], list[int]] = {}
    for v, f in enumerate(frames):
        if len(f):
            by_size.setdefault(tuple(f.shape[1:]), []).append(v)
    for videos in by_size.values():
        pieces: list[tuple[int, int, int]] = []  # (video, first row, rows)
        n = 0
        for v in videos:
            start, total = 0, len(frames[v])
            while start < total:
                take = min(limit - n, total - start)
                pieces.append((v, start, take))
                n, start = n + take, start + take
                if n == limit:
                    yield _stack(frames, pieces)
                    pieces, n = [], 0
        if pieces:
            yield _stack(frames, pieces)


def _stack(frames: Sequence[np.ndarray], pieces: list[tuple[int, int, int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    batch = np.concatenate([frames[v][s:s + k] for v, s, k in pieces])
    video = np.concatenate([np.full(k, v, np.int64) for v, _, k in pieces])
    row = np.concatenate([np.arange(s, s + k) for _, s, k in pieces])
    return batch, video, row
