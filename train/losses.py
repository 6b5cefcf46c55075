"""Contrastive losses on a [texts x videos] similarity matrix whose diagonal holds the positives."""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ['max_margin_ranking', 'hard_negative_triplet', 'info_nce', 'LOSSES']


def max_margin_ranking(sims: torch.Tensor, margin: float) -> torch.Tensor:
    """Bidirectional max-margin ranking (CE eq. 3): mean over the batch of
    sum_{j != i} [m + s_ij - s_ii]_+ + [m + s_ji - s_ii]_+."""
    n = sims.shape[0]
    pos = sims.diagonal()
    # the diagonal is zeroed, not dropped: a boolean selection has a data-dependent size, which
    # makes the host wait for the device every step (and breaks CUDA-graph capture)
    eye = torch.eye(n, dtype=torch.bool, device=sims.device)
    t2v = F.relu(margin + sims - pos[:, None]).masked_fill(eye, 0.0)
    v2t = F.relu(margin + sims - pos[None, :]).masked_fill(eye, 0.0)
    return (t2v.sum() + v2t.sum()) / n


def hard_negative_triplet(sims: torch.Tensor, margin: float) -> torch.Tensor:
    """VSE++ (Faghri et al.): the hardest negative in each direction only."""
    n = sims.shape[0]
    pos = sims.diagonal()
    eye = torch.eye(n, dtype=torch.bool, device=sims.device)
    neg = sims.masked_fill(eye, float('-inf'))
    return (F.relu(margin + neg.amax(1) - pos) + F.relu(margin + neg.amax(0) - pos)).mean()


def info_nce(sims: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE: cross-entropy over rows and columns of sims / temperature."""
    logits = sims / temperature
    target = torch.arange(sims.shape[0], device=sims.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


LOSSES = {'max_margin': max_margin_ranking, 'hard_negative': hard_negative_triplet, 'info_nce': info_nce}
