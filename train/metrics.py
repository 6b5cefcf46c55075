"""Retrieval metrics with the CE/MMT evaluation protocol (DESIGN.md, "Evaluation protocol").

Ranks are 0-based and ties are broken by averaging the tied positions: a query's rank is the
number of items scored strictly higher than its ground truth plus half the number of *other*
items scored exactly the same (a tie at the top gives 0.5). R@1 counts rank == 0 only, R@K
counts rank < K, MdR = median + 1, MnR = mean + 1. Text-to-video: every caption is a query over
all videos. Video-to-text: every video is a query over all captions and takes the best rank of
its own captions. Captions missing from a video are simply not queries (they are absent from
`query_video`); a video with no caption is not a v2t query.

`sims` is anything with `.shape` whose row slices give score blocks (a numpy array, a torch
tensor, a memmap, or a lazy matrix that scores a block of texts against all videos), so a
100,000 x 100,000 problem is evaluated a block of rows at a time in bounded memory.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = ['retrieval_metrics', 'ranks_t2v_v2t', 'ranks_to_metrics', 'mean_std', 'format_results', 'geometric_mean',
           'SEED_STD', 'DEFAULT_SEED_STD']

KS = (1, 5, 10, 50)

#: the standard deviation over seeds that a paper prints, by name -> numpy's ddof. CE's released
#: log parser (logger/log_parser.py) takes ``np.std(values, ddof=1)``, and its Table 1 agrees
#: (1k-B v2t MdR 6.5 ± 0.5 is the sample std of 6, 6.5, 7; no three half-integer medians have a
#: population std of 0.5); MMT's tables print population stds (3.7 ± 0.5 from 3, 4, 4).
SEED_STD = {'population': 0, 'sample': 1}
DEFAULT_SEED_STD = 'population'


def _block(sims: Any, q0: int, q1: int, device: torch.device) -> torch.Tensor:
    block = sims[q0:q1]
    t = block if isinstance(block, torch.Tensor) else torch.as_tensor(np.asarray(block))
    return t.to(device=device, dtype=torch.float64)


def ranks_t2v_v2t(sims: Any, query_video: Sequence[int] | np.ndarray, chunk_size: int = 2048,
                  device: str | torch.device | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """0-based tie-averaged ranks.

    Args:
        sims: [queries, videos] scores (higher is better), sliceable by rows.
        query_video: the video of each query (caption).
        chunk_size: query rows scored at once; memory is O(chunk_size x (videos + queries)).
        device: where to count (defaults to the device of a torch `sims`, else CPU).

    Returns:
        (t2v ranks per query, v2t ranks per video that has a query, those videos' indices).
    """
    n_queries, n_videos = int(sims.shape[0]), int(sims.shape[1])
    qv = torch.as_tensor(np.asarray(query_video, dtype=np.int64))
    if qv.shape != (n_queries,):
        raise ValueError(f'query_video has shape {tuple(qv.shape)}, expected ({n_queries},)')
    if n_queries and (int(qv.min()) < 0 or int(qv.max()) >= n_videos):
        raise ValueError('query_video holds a video index outside [0, videos)')
    dev = torch.device(device) if device is not None else (sims.device if isinstance(sims, torch.Tensor)
                                                            else torch.device('cpu'))
    qv = qv.to(dev)
    gt = torch.empty(n_queries, dtype=torch.float64, device=dev)
    t2v = torch.empty(n_queries, dtype=torch.float64, device=dev)
    for q0 in range(0, n_queries, chunk_size):  # pass 1: each caption against all videos
        s = _block(sims, q0, min(q0 + chunk_size, n_queries), dev)
        g = s.gather(1, qv[q0:q0 + len(s), None])
        gt[q0:q0 + len(s)] = g[:, 0]
        t2v[q0:q0 + len(s)] = (s > g).sum(1) + ((s == g).sum(1) - 1) / 2.0
    if not torch.isfinite(gt).all():
        raise ValueError('NaN or inf in the ground-truth scores')
    # pass 2: for video v, each of its captions q is ranked among all captions in column v;
    # a block of rows adds its captions that beat (or tie) q's score s[q, v] = gt[q]
    greater = torch.zeros(n_queries, dtype=torch.float64, device=dev)
    equal = torch.zeros(n_queries, dtype=torch.float64, device=dev)
    col_chunk = max(1, (chunk_size * max(n_videos, 1)) // max(n_queries, 1))
    for q0 in range(0, n_queries, chunk_size):
        s = _block(sims, q0, min(q0 + chunk_size, n_queries), dev)
        for c0 in range(0, n_queries, col_chunk):  # bounded: block x col_chunk comparisons at once
            cols = qv[c0:c0 + col_chunk]
            column = s[:, cols]  # [block, captions c0..]: the block's scores for those captions' videos
            target = gt[c0:c0 + col_chunk]
            greater[c0:c0 + col_chunk] += (column > target).sum(0)
            equal[c0:c0 + col_chunk] += (column == target).sum(0)
    caption_rank = greater + (equal - 1) / 2.0
    best = torch.full((n_videos,), math.inf, dtype=torch.float64, device=dev)
    best = best.scatter_reduce(0, qv, caption_rank, reduce='amin')
    has = torch.zeros(n_videos, dtype=torch.bool, device=dev)
    has[qv] = True
    videos = torch.nonzero(has)[:, 0]
    return t2v.cpu().numpy(), best[videos].cpu().numpy(), videos.cpu().numpy()


def ranks_to_metrics(ranks: np.ndarray) -> dict[str, float]:
    """R@1/5/10/50 (percent), MdR, MnR from 0-based ranks."""
    ranks = np.asarray(ranks, np.float64)
    n = len(ranks)
    if n == 0:
        raise ValueError('no queries')
    out = {'R1': 100.0 * float(np.sum(ranks == 0)) / n}
    for k in KS[1:]:
        out[f'R{k}'] = 100.0 * float(np.sum(ranks < k)) / n
    out['MdR'] = float(np.median(ranks)) + 1.0
    out['MnR'] = float(np.mean(ranks)) + 1.0
    out['geometric_mean_R1-R5-R10'] = geometric_mean([out['R1'], out['R5'], out['R10']])
    return out


def geometric_mean(values: Sequence[float]) -> float:
    """Geometric mean (0 when any value is 0), CE's model-selection criterion on R1, R5, R10."""
    v = np.asarray(values, np.float64)
    return 0.0 if (v <= 0).any() else float(np.exp(np.log(v).mean()))


def retrieval_metrics(sims: Any, query_video: Sequence[int] | np.ndarray, chunk_size: int = 2048,
                      device: str | torch.device | None = None) -> dict[str, dict[str, float]]:
    """t2v and v2t metrics: ``{'t2v': {'R1': ..., 'MdR': ...}, 'v2t': {...}}``."""
    t2v, v2t, _ = ranks_t2v_v2t(sims, query_video, chunk_size=chunk_size, device=device)
    return {'t2v': ranks_to_metrics(t2v), 'v2t': ranks_to_metrics(v2t)}


def mean_std(runs: Sequence[Mapping[str, Mapping[str, float]]], std: str = DEFAULT_SEED_STD
             ) -> dict[str, dict[str, tuple[float, float]]]:
    """Per-metric mean and standard deviation over seeds (`std`: a `SEED_STD` name; one run: 0)."""
    ddof = SEED_STD[std]
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for direction in runs[0]:
        out[direction] = {}
        for key in runs[0][direction]:
            vals = np.asarray([r[direction][key] for r in runs], np.float64)
            out[direction][key] = (float(vals.mean()), float(vals.std(ddof=ddof)) if len(vals) > ddof else 0.0)
    return out


def format_results(rows: Mapping[str, Sequence[Mapping[str, Mapping[str, float]]]],
                   keys: Sequence[str] = ('R1', 'R5', 'R10', 'MdR', 'MnR'), std: str = DEFAULT_SEED_STD) -> str:
    """A Markdown table in the papers' layout: one row per model, t2v then v2t, mean +- std
    (`std`: as `mean_std`)."""
    head = ['model'] + [f't2v {k}' for k in keys] + [f'v2t {k}' for k in keys]
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for name, runs in rows.items():
        stats = mean_std(runs, std)
        cells = [name]
        for direction in ('t2v', 'v2t'):
            for k in keys:
                m, s = stats[direction][k]
                cells.append(f'{m:.1f} ± {s:.1f}' if len(runs) > 1 else f'{m:.1f}')
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)
