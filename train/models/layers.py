"""Layers shared by the retrieval models: GEM and context gating (MEE sec. 3.4), NetVLAD with
ghost clusters and a real padding mask, ReduceDim."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ['ContextGating', 'GEM', 'NetVLAD', 'ReduceDim', 'PerExpertRows', 'expert_key', 'masked_mean', 'masked_max']


def expert_key(name: str) -> str:
    """The module key of an expert's store name (``ocr.rapidocr`` -> ``ocr_rapidocr``): module
    names cannot hold dots."""
    return name.replace('.', '_')


class PerExpertRows(nn.Module):
    """A matrix with one row per expert (a Linear's output rows, an embedding table), each row a
    parameter of its own keyed by expert name, so that weights move by name between runs with
    other sets of experts. Initialised as the one `nn.Linear(in_dim, len(keys))` (or
    `nn.Embedding(len(keys), in_dim)`) it replaces, from the same random numbers, and computed
    from the stacked rows as one matrix."""

    def __init__(self, keys: list[str], in_dim: int, kind: str = 'linear') -> None:
        super().__init__()
        if kind == 'linear':
            joint = nn.Linear(in_dim, len(keys))
            rows, bias = joint.weight, joint.bias
        else:
            rows, bias = nn.Embedding(len(keys), in_dim).weight, None
        # pairs, not a dict: ParameterDict sorts a dict's keys, and the rows keep the experts' order
        self.weight = nn.ParameterDict([(k, nn.Parameter(rows.data[i].clone())) for i, k in enumerate(keys)])
        self.bias = None if bias is None else nn.ParameterDict(
            [(k, nn.Parameter(bias.data[i:i + 1].clone())) for i, k in enumerate(keys)])

    def matrix(self) -> torch.Tensor:
        """(M, in_dim): the rows in the experts' order."""
        return torch.stack(list(self.weight.values()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """As a Linear: (..., in_dim) -> (..., M)."""
        assert self.bias is not None
        return F.linear(x, self.matrix(), torch.cat(list(self.bias.values())))


class ContextGating(nn.Module):
    """Z * sigmoid(W Z + b) (MEE eq. 2)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.fc(x))


class GEM(nn.Module):
    """Gated embedding module: Linear -> context gating -> L2 normalisation (MEE eqs. 1-3)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_dim, out_dim)
        self.cg = ContextGating(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.cg(self.fc(x)), dim=-1)


class ReduceDim(nn.Module):
    """Linear projection to the common dimension, L2-normalised over the feature axis (CE sec. 3.1)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.fc(x), dim=-1)


class NetVLAD(nn.Module):
    """NetVLAD (Arandjelovic et al.) with ghost clusters (GhostVLAD): soft-assign every valid token
    to K + G clusters, keep the residuals of the K real ones, intra- and L2-normalise.

    Padding tokens (mask False) get no assignment at all, so the output of a padded sequence
    equals that of the unpadded one (the reference code ignored its mask).
    """

    def __init__(self, dim: int, clusters: int, ghost_clusters: int = 0) -> None:
        super().__init__()
        self.dim, self.clusters, self.ghosts = dim, clusters, ghost_clusters
        init = 1.0 / math.sqrt(dim)
        self.assign = nn.Linear(dim, clusters + ghost_clusters, bias=False)
        self.bn = nn.BatchNorm1d(clusters + ghost_clusters)
        self.centroids = nn.Parameter(init * torch.randn(clusters, dim))

    @property
    def out_dim(self) -> int:
        return self.dim * self.clusters

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, L, D), mask (B, L) bool -> (B, K * D)."""
        b, n, d = x.shape
        if mask is None:
            mask = torch.ones(b, n, dtype=torch.bool, device=x.device)
        logits = self.assign(x)  # (B, L, K+G)
        flat = logits.reshape(b * n, -1)
        if self.training:  # batch statistics from real tokens only: padding must not shift them
            idx = torch.nonzero(mask.reshape(-1))[:, 0]
            real = flat[idx]
            normed = flat.new_zeros(flat.shape).index_put((idx,), self._train_bn(real))
        else:
            normed = self.bn(flat)
        soft = F.softmax(normed.reshape(b, n, -1), dim=-1)[..., : self.clusters]
        soft = soft * mask[..., None].to(soft.dtype)
        vlad = torch.einsum('blk,bld->bkd', soft, x) - soft.sum(1)[..., None] * self.centroids[None]
        vlad = F.normalize(vlad, dim=-1)
        return F.normalize(vlad.reshape(b, -1), dim=-1)

    def _train_bn(self, real: torch.Tensor) -> torch.Tensor:
        """Batch norm of a training batch's real tokens; with one or none (an expert missing from
        the batch) they pass as they are. Under DistributedDataParallel the batch norm's
        parameters then still get a (zero) gradient, since every rank must reduce every
        parameter's gradient each step (so weight decay, which one process never applies to
        them, still does); SyncBatchNorm (CUDA ranks) counts the tokens of the whole global
        batch first, so that every rank takes the same branch (its collective, or none) and its
        running variance never divides 0 by 0. It normalises in float32: under bf16 autocast a
        rank without a token would send its statistics as bf16 zeros while the others send
        float32 (torch sizes an empty input's buffer by the input's dtype, a full one's by its
        statistics'), and the ranks' gathers would not match."""
        if isinstance(self.bn, nn.SyncBatchNorm):
            count = torch.tensor([len(real)], device=real.device)
            torch.distributed.all_reduce(count, group=self.bn.process_group)
            if int(count.item()) > 1:
                return self.bn(real.float()).to(real.dtype)
        elif len(real) > 1:
            return self.bn(real)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return real + 0.0 * (self.bn.weight.sum() + self.bn.bias.sum())
        return real  # one process: no gradient at all, so that the optimiser leaves them as they are


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over valid rows: x (B, L, D), mask (B, L) -> (B, D); zero where nothing is valid."""
    m = mask[..., None].to(x.dtype)
    return (x * m).sum(1) / m.sum(1).clamp(min=1.0)


def masked_max(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Max over valid rows; zero where nothing is valid."""
    filled = x.masked_fill(~mask[..., None], float('-inf')).amax(1)
    return torch.where(mask.any(1, keepdim=True), filled, torch.zeros_like(filled))
