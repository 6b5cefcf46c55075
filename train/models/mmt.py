"""Multi-modal Transformer (Gabeur et al. 2020, sec. 3 and 4.1).

Video: every expert's rows are projected to d_model (Linear + L2 over the feature axis) and
summed with an expert embedding E and a temporal embedding T (eq. 1): T_agg, T_unk, and one per
second, a row starting in [t, t+1) getting T_{t+1}. Each expert contributes [F_agg, F_1 .. F_K]
(eq. 2) with F_agg initialised by the max-pool of its rows (zero for a missing expert, sec. 4.1).
A BERT-style encoder (post-LN, GELU) contextualises the whole sequence with padding rows and
missing experts' rows masked as keys; the video embedding is the agg outputs (eq. 5).
Text: BERT's [CLS] output -> one gated embedding module per expert and softmax mixture weights
(eqs. 6-7). The similarity is s(v, c) = sum_i w_i(c) <phi^i, psi^i_agg> over every expert (eq. 6):
a missing expert still has its agg output (from its zero F_agg) and its weight is not moved to the
others, so the video embedding marks every expert as entering the score and `base.mixture_similarity`
renormalises nothing. The re-weighting of MEE is what MMT's ablations give the variants without MMT
only (sec. 4.3), and the authors' configs set keep_missing_modalities: true.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from train.models.base import ExpertInput, RetrievalModel, TextEmbedding, TextInput, VideoEmbedding
from train.models.config import MMTCfg
from train.models.layers import GEM, PerExpertRows, ReduceDim, expert_key, masked_max
from train.models.text_encoders import build_bert

__all__ = ['MMT', 'temporal_ids', 'AGG', 'UNKNOWN']

AGG, UNKNOWN = 0, 1  # temporal embedding ids; second t (0-based) is id t + 2


def temporal_ids(times: torch.Tensor, max_positions: int) -> torch.Tensor:
    """(..., 2) start/end seconds -> ids: 2 + floor(start), clamped to the last embedding; a time
    that is not known (NaN, or the store's UNKNOWN_TIME = -1 of imported features) -> unknown."""
    start = times[..., 0]
    known = torch.isfinite(start) & (start >= 0)
    sec = torch.where(known, start, torch.zeros_like(start)).clamp(min=0).floor().long() + 2
    return torch.where(known, sec.clamp(max=max_positions - 1), torch.full_like(sec, UNKNOWN))


class MMT(RetrievalModel):
    def __init__(self, cfg: MMTCfg) -> None:
        super().__init__()
        bad = [e.name for e in cfg.experts if e.aggregation != 'tokens' or e.max_tokens < 1]
        if bad:
            raise ValueError(f'MMT reads time-stamped rows: set aggregation: tokens and max_tokens for {bad}')
        if cfg.text.encoder != 'bert':
            raise ValueError('MMT encodes captions with BERT: set model.text.encoder: bert')
        self.cfg = cfg
        self.experts = [e.name for e in cfg.experts]
        t = cfg.transformer
        d = t.hidden
        keys = [expert_key(e.name) for e in cfg.experts]
        self.project = nn.ModuleDict({k: ReduceDim(e.dim, d) for k, e in zip(keys, cfg.experts)})
        self.expert_embed = PerExpertRows(keys, d, kind='embedding')
        self.temporal_embed = nn.Embedding(t.max_positions, d)
        self.embed_norm = nn.LayerNorm(d)
        self.embed_drop = nn.Dropout(t.dropout)
        layer = nn.TransformerEncoderLayer(d, t.heads, t.ffn, t.dropout, activation='gelu', batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, t.layers, enable_nested_tensor=False)
        self.text_model = build_bert(cfg.text)
        self.text_model.requires_grad_(cfg.text.finetune)
        # the caption is the [CLS] state, not the pooler's output: no loss reaches the pooler, and
        # DistributedDataParallel needs every trained parameter to get a gradient each step
        self.text_model.pooler.requires_grad_(False)
        h = self.text_model.config.hidden_size
        self.text_gem = nn.ModuleDict({k: GEM(h, d) for k in keys})
        self.mixture = PerExpertRows(keys, h)

    def parameter_groups(self) -> dict[str, list[nn.Module]]:
        video = [self.project, self.expert_embed, self.temporal_embed, self.embed_norm, self.encoder]
        return {'caption encoder': [self.text_model, self.text_gem, self.mixture], 'video encoder': video,
                'video encoder: projections': video[:1], 'video encoder: transformer': video[1:]}

    def video_inputs(self, video: dict[str, ExpertInput]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                    torch.Tensor, list[int]]:
        """The transformer's input sequence: (features (B, S, d), expert ids (B, S), temporal ids
        (B, S), key mask (B, S), the agg positions)."""
        feats, experts, times, keys, agg_pos = [], [], [], [], []
        pos = 0
        for m, (spec, proj) in enumerate(zip(self.cfg.experts, self.project.values())):
            inp = video[spec.name]
            b, n = inp.x.shape[:2]
            avail = inp.available.bool()
            valid = inp.mask.bool() & avail[:, None]
            agg = proj(masked_max(inp.x, valid)) * avail[:, None].to(inp.x.dtype)
            feats += [agg[:, None], proj(inp.x)]
            experts.append(torch.full((b, n + 1), m, dtype=torch.long, device=inp.x.device))
            tid = temporal_ids(inp.times, self.temporal_embed.num_embeddings) if inp.times is not None \
                else torch.full((b, n), UNKNOWN, dtype=torch.long, device=inp.x.device)
            times += [torch.full((b, 1), AGG, dtype=torch.long, device=inp.x.device), tid]
            keys += [torch.ones(b, 1, dtype=torch.bool, device=inp.x.device), valid]
            agg_pos.append(pos)
            pos += n + 1
        return torch.cat(feats, 1), torch.cat(experts, 1), torch.cat(times, 1), torch.cat(keys, 1), agg_pos

    def encode_video(self, video: dict[str, ExpertInput]) -> VideoEmbedding:
        x, experts, times, keys, agg_pos = self.video_inputs(video)
        x = self.embed_drop(self.embed_norm(x + F.embedding(experts, self.expert_embed.matrix()) + self.temporal_embed(times)))
        out = self.encoder(x, src_key_padding_mask=~keys)
        # one basic index per agg token: a list index would be copied to the device, a host wait
        emb = F.normalize(torch.stack([out[:, p] for p in agg_pos], 1), dim=-1)
        # every expert's agg output enters s(v, c) = sum_i w_i(c) <phi^i, psi^i_agg> (eq. 6), a missing
        # one's as well: "we set the aggregated feature F_agg to a zero vector" (sec. 4.1), not its weight
        every = torch.ones(emb.shape[:2], dtype=torch.bool, device=emb.device)
        return VideoEmbedding(emb, every)

    def encode_text(self, text: TextInput) -> TextEmbedding:
        mask = text.mask.long()
        if self.text_model.config._attn_implementation == 'sdpa':
            # the 4-D boolean mask transformers builds for SDPA, built here: from a 2-D mask it first
            # checks for padding (`mask.all()`), a host wait on every step
            mask = text.mask.bool()[:, None, None, :]
        h = self.text_model(input_ids=text.x, attention_mask=mask).last_hidden_state[:, 0]  # [CLS]
        emb = torch.stack([gem(h) for gem in self.text_gem.values()], 1)
        return TextEmbedding(emb, F.softmax(self.mixture(h), dim=-1))
