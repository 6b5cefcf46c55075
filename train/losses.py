"""Training losses: registered `nn.Module`s on a model's `Embeddings` (open_clip's `ClipLoss` design).

A loss gathers the batch's embeddings from every rank (with their gradients: `gather`) and scores
all pairs of the global batch, so that N processes at batch B/N optimise the objective of one
process at batch B: the same negatives for max-margin and InfoNCE. In one process the gather is
the identity. The criteria are pure functions of a [texts x videos] score matrix whose diagonal
holds the positives; a model's own extra terms (the support-set model's cross-captioning) are
added by its `extra_loss`.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from shared.registry import Registry
from train.models.base import Embeddings, RetrievalModel, TextEmbedding, VideoEmbedding

__all__ = ['max_margin_ranking', 'hard_negative_triplet', 'hard_negative_triplet_sum', 'info_nce', 'LOSSES', 'ContrastiveLoss', 'build_loss',
           'gather', 'gather_embeddings']


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


def hard_negative_triplet_sum(sims: torch.Tensor, margin: float) -> torch.Tensor:
    """`hard_negative_triplet` summed over the batch's queries, as Faghri et al.'s code reduces it."""
    return hard_negative_triplet(sims, margin) * sims.shape[0]


def info_nce(sims: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE: cross-entropy over rows and columns of sims / temperature."""
    logits = sims / temperature
    target = torch.arange(sims.shape[0], device=sims.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


class _Gather(torch.autograd.Function):
    """All-gather along the first axis whose backward gives each rank the sum over the ranks of
    the gradient of its own part (every rank computes the loss of the whole batch).

    `torch.distributed.nn.all_gather` is not used: under gloo its backward (all-to-all emulated by
    scatters) gave wrong gradients once a loss gathers several tensors (torch 2.14; the one-step
    test of `tests/train/test_distributed.py` catches it)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x)
        ctx.rows = x.shape[0]
        return torch.cat(parts, 0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        if dist.get_backend() == 'nccl':  # the reduction of each rank's part only
            out = grad.new_empty((ctx.rows, *grad.shape[1:]))
            dist.reduce_scatter_tensor(out, grad)
            return out
        grad = grad.clone()  # gloo has no reduce-scatter: the whole sum, then this rank's rows
        dist.all_reduce(grad)
        first = dist.get_rank() * ctx.rows
        return grad[first:first + ctx.rows]


def gather(x: torch.Tensor) -> torch.Tensor:
    """`x` of every rank (each with as many rows), concatenated in rank order along the first
    axis, with gradients flowing back to each rank's own part (summed over the ranks, which
    DistributedDataParallel then averages); `x` itself in one process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return _Gather.apply(x.contiguous())


def gather_embeddings(out: Embeddings) -> Embeddings:
    """The global batch's embeddings (every field gathered; `extra` as well)."""
    return Embeddings(TextEmbedding(gather(out.text.emb), gather(out.text.weights)),
                      VideoEmbedding(gather(out.video.emb), gather(out.video.available)),
                      {k: gather(v) for k, v in out.extra.items()})


class ContrastiveLoss(nn.Module):
    """`criterion` on the global batch's [texts x videos] scores (in float32), plus the model's
    own extra terms."""

    def __init__(self, criterion: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.criterion = criterion

    def forward(self, model: RetrievalModel, out: Embeddings) -> torch.Tensor:
        every = gather_embeddings(out)
        sims = model.similarity(every.text, every.video).float()
        loss = self.criterion(sims)
        extra = model.extra_loss(out, every, sims)
        return loss if extra is None else loss + extra


@dataclasses.dataclass(frozen=True)
class _Criterion:
    """A pure criterion with its setting bound (a picklable, printable stand-in for a lambda)."""

    fn: Callable[..., torch.Tensor]
    value: float

    def __call__(self, sims: torch.Tensor) -> torch.Tensor:
        return self.fn(sims, self.value)


#: name -> factory(margin, temperature) -> loss module
LOSSES: Registry[Callable[[float, float], nn.Module]] = Registry('loss')


@LOSSES.register('max_margin')
def max_margin(margin: float, temperature: float) -> nn.Module:
    """CE's and MMT's bidirectional max-margin ranking loss, with `margin`."""
    return ContrastiveLoss(_Criterion(max_margin_ranking, margin))


@LOSSES.register('hard_negative')
def hard_negative(margin: float, temperature: float) -> nn.Module:
    """VSE++'s hardest-negative triplet loss, with `margin` (the support-set model's eq. 1)."""
    return ContrastiveLoss(_Criterion(hard_negative_triplet, margin))


@LOSSES.register('hard_negative_sum')
def hard_negative_sum(margin: float, temperature: float) -> nn.Module:
    """`hard_negative` summed over the global batch instead of averaged, as the code of Faghri et al.
    reduces it (VSE++: ``cost_s.sum() + cost_im.sum()``), whose loss the support-set paper's eq. 1
    follows. A departure from eq. 1 as printed (a mean), for the paper's own remark that lambda 10
    gives "similar magnitudes for both losses" (sec. 3.1.2): only the batch's sum (about 0.7 x 64 at
    the start) is of the size of 10 x T5's mean caption-token loss; with the mean (0.7) cross-
    captioning's gradient through the support-set attention overrides the ranking (README, `make
    demo-pretrain`). The balance of the two terms then follows the batch size: halving
    `train.batch_size` doubles the captioning's relative weight, as it would in the authors' setup."""
    return ContrastiveLoss(_Criterion(hard_negative_triplet_sum, margin))


@LOSSES.register('info_nce')
def info_nce_loss(margin: float, temperature: float) -> nn.Module:
    """Symmetric InfoNCE, with `temperature`."""
    return ContrastiveLoss(_Criterion(info_nce, temperature))


def build_loss(name: str, margin: float, temperature: float) -> nn.Module:
    """The registered loss `name` (KeyError, with the known names, for another)."""
    return LOSSES.get(name)(margin, temperature)
