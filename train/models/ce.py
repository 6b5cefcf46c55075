"""Collaborative Experts (Liu et al. 2019, sec. 3) and the ablations of its Table 6.

Video: aggregated experts -> ReduceDim to a common size -> collaborative gating (eq. 1-2), with
g = Linear(2d -> d) then 2 x [BN, Mish, Linear] shared over all ordered pairs (self included,
missing experts excluded), h the identity, and each expert gated as
x * sigmoid(BN(T) + BN(W x + b)), then L2-normalised (DESIGN.md). Text: as MEE.
Ablations (ModelCfg switches): concat (fusion=concat), CE - MW,PCG (no projection, no mixture
weights, context gating), MoEE (no projection, context gating), CE - CG (projection, context gating).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from train.models.base import ExpertInput, VideoEmbedding
from train.models.layers import GEM, ContextGating, ReduceDim, expert_key
from train.models.mee import MEE, _agg_dim

__all__ = ['CE', 'CollaborativeGating', 'JOINT']

JOINT = 'joint'  # the key of the one embedding of fusion: concat


class CollaborativeGating(nn.Module):
    """T_i from the pairs (i, j) of the video's experts, i itself included; then
    x_i <- normalise(x_i * sigmoid(BN_i(T_i) + BN'_i(W_i x_i + b_i))).

    `pairs` ``mean``: T_i = sum_j a_i a_j g([x_i, x_j]) / sum_j a_i a_j, as CE's released code computes
    it (configs/base_config.json: use_ce pairwise, include_self 1, num_g_layers 3, num_h_layers 0,
    use_bn_reason 1, use_mish 1); ``sum``: T_i = sum_j a_j g([x_i, x_j]), eq. 1's sum (there over
    j != i), which runs saved before this setting used. A mean keeps T_i's scale whatever the number
    of experts a video has; a sum grows with it."""

    def __init__(self, keys: list[str], dim: int, pairs: str = 'mean') -> None:
        super().__init__()
        self.pairs = pairs
        self.g = nn.Sequential(nn.Linear(2 * dim, dim),
                               nn.BatchNorm1d(dim), nn.Mish(), nn.Linear(dim, dim),
                               nn.BatchNorm1d(dim), nn.Mish(), nn.Linear(dim, dim))
        self.fc = nn.ModuleDict({k: nn.Linear(dim, dim) for k in keys})
        self.bn_t = nn.ModuleDict({k: nn.BatchNorm1d(dim) for k in keys})
        self.bn_x = nn.ModuleDict({k: nn.BatchNorm1d(dim) for k in keys})

    def forward(self, x: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
        b, m, d = x.shape
        pairs = torch.cat([x[:, :, None].expand(b, m, m, d), x[:, None, :].expand(b, m, m, d)], -1)
        rel = self.g(pairs.reshape(b * m * m, 2 * d)).reshape(b, m, m, d)
        if self.pairs == 'mean':
            both = (available[:, :, None] & available[:, None, :]).to(rel.dtype)  # (b, i, j)
            t = (rel * both[..., None]).sum(2) / (both.sum(2, keepdim=True) + 1e-11)
        else:
            t = (rel * available[:, None, :, None].to(rel.dtype)).sum(2)  # only the video's own experts
        out = [F.normalize(x[:, i] * torch.sigmoid(self.bn_t[k](t[:, i]) + self.bn_x[k](self.fc[k](x[:, i]))), dim=-1)
               for i, k in enumerate(self.fc)]
        return torch.stack(out, 1)


class CE(MEE):
    def embedding_keys(self) -> list[str]:
        return [JOINT] if self.cfg.fusion == 'concat' else super().embedding_keys()

    def build_video(self) -> None:
        cfg = self.cfg
        keys = [expert_key(e.name) for e in cfg.experts]
        if cfg.fusion == 'concat':
            self.video_gem = nn.ModuleDict({JOINT: GEM(sum(_agg_dim(e) for e in cfg.experts), cfg.embed_dim)})
        elif cfg.projection:
            self.reduce = nn.ModuleDict({k: ReduceDim(_agg_dim(e), cfg.embed_dim) for k, e in zip(keys, cfg.experts)})
            if cfg.gating == 'collaborative':
                self.cg = CollaborativeGating(keys, cfg.embed_dim, cfg.gating_pairs)
            else:
                self.context = nn.ModuleDict({k: ContextGating(cfg.embed_dim) for k in keys})
        else:
            super().build_video()

    def encode_video(self, video: dict[str, ExpertInput]) -> VideoEmbedding:
        cfg = self.cfg
        if cfg.fusion == 'concat':
            feats, avail = self.aggregated(video)
            return VideoEmbedding(self.video_gem[JOINT](torch.cat(feats, -1))[:, None], avail.any(1, keepdim=True))
        if not cfg.projection:
            return super().encode_video(video)
        feats, avail = self.aggregated(video)
        x = torch.stack([r(f) for r, f in zip(self.reduce.values(), feats)], 1)
        if cfg.gating == 'collaborative':
            x = self.cg(x, avail)
        else:
            x = torch.stack([F.normalize(cg(x[:, i]), dim=-1) for i, cg in enumerate(self.context.values())], 1)
        return VideoEmbedding(x, avail)
