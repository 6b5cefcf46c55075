"""Mixture of Embedding Experts (Miech et al. 2018, sec. 3): per-expert gated embeddings on both
sides, NetVLAD over the caption's word features, text-dependent mixture weights.

The word features are word2vec vectors given with the captions, or contextual features of a
frozen OpenAI-GPT run inside the model (CE sec. 4.1), which like the video experts is a feature
extractor: it is not trained, and not counted among the model's parameters."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from train.models.base import ExpertInput, RetrievalModel, TextEmbedding, TextInput, VideoEmbedding
from train.models.config import ExpertSpec, MEECfg
from train.models.layers import GEM, PerExpertRows, NetVLAD, expert_key, masked_max, masked_mean

__all__ = ['MEE', 'aggregate']


def aggregate(spec: ExpertSpec, inp: ExpertInput, vlad: nn.Module | None) -> torch.Tensor:
    """An expert's temporal aggregation h_i: mean, max or NetVLAD (the data may pre-aggregate)."""
    x = inp.x
    if spec.aggregation == 'vlad':
        assert vlad is not None and inp.mask is not None
        return vlad(x, inp.mask)
    if x.ndim == 2:
        return x
    mask = inp.mask if inp.mask is not None else torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    return masked_max(x, mask) if spec.aggregation == 'max' else masked_mean(x, mask)


def _agg_dim(spec: ExpertSpec) -> int:
    return spec.dim * spec.clusters if spec.aggregation == 'vlad' else spec.dim


class MEE(RetrievalModel):
    """s(X, Y) = sum_i w_i(X) <f_i(h(X)), g_i(h_i(I_i))>, weights renormalised over available experts."""

    def __init__(self, cfg: MEECfg) -> None:
        super().__init__()
        self.cfg = cfg
        self.experts = [e.name for e in cfg.experts]
        self.video_vlad = nn.ModuleDict({expert_key(e.name): NetVLAD(e.dim, e.clusters, e.ghost_clusters)
                                         for e in cfg.experts if e.aggregation == 'vlad'})
        self.text_vlad = NetVLAD(cfg.text_dim, cfg.text_clusters, cfg.text_ghost_clusters)
        # one text embedding per video embedding, keyed as the video side's modules
        outputs = self.embedding_keys()
        self.text_gem = nn.ModuleDict({k: GEM(self.text_vlad.out_dim, cfg.embed_dim) for k in outputs})
        self.mixture = (PerExpertRows(outputs, self.text_vlad.out_dim) if cfg.mixture_weights and len(outputs) > 1
                        else None)
        self.text_model = None
        if cfg.text.encoder == 'gpt':
            from train.models.text_encoders import build_gpt

            self.text_model = build_gpt(cfg.text)
            self.text_model.requires_grad_(cfg.text.finetune)
        elif cfg.text.encoder != 'word2vec':
            raise ValueError(f'{cfg.model} reads word features: text.encoder must be word2vec or gpt')
        self.build_video()

    def train(self, mode: bool = True) -> MEE:
        super().train(mode)
        if self.text_model is not None and not self.cfg.text.finetune:
            self.text_model.eval()  # a frozen feature extractor: no dropout
        return self

    def feature_extractors(self) -> list[nn.Module]:
        return [self.text_model] if self.text_model is not None and not self.cfg.text.finetune else []

    def word_features(self, text: TextInput) -> torch.Tensor:
        """(B, L, text_dim): the given word vectors, or GPT's last hidden states for the token ids."""
        if self.text_model is None:
            return text.x
        with torch.set_grad_enabled(self.cfg.text.finetune and torch.is_grad_enabled()):
            return self.text_model(input_ids=text.x, attention_mask=text.mask.long()).last_hidden_state

    def embedding_keys(self) -> list[str]:
        """The keys of the joint-space embeddings: one per expert."""
        return [expert_key(e.name) for e in self.cfg.experts]

    def build_video(self) -> None:
        self.video_gem = nn.ModuleDict({expert_key(e.name): GEM(_agg_dim(e), self.cfg.embed_dim)
                                        for e in self.cfg.experts})

    def aggregated(self, video: dict[str, ExpertInput]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Per-expert aggregated features (zero where missing) and availability (V, M)."""
        feats, avail = [], []
        for e in self.cfg.experts:
            inp = video[e.name]
            x = aggregate(e, inp, self.video_vlad[expert_key(e.name)] if e.aggregation == 'vlad' else None)
            feats.append(x * inp.available[:, None].to(x.dtype))
            avail.append(inp.available)
        return feats, torch.stack(avail, 1)

    def encode_video(self, video: dict[str, ExpertInput]) -> VideoEmbedding:
        feats, avail = self.aggregated(video)
        emb = torch.stack([gem(x) for gem, x in zip(self.video_gem.values(), feats)], 1)
        return VideoEmbedding(emb, avail)

    def encode_text(self, text: TextInput) -> TextEmbedding:
        h = self.text_vlad(self.word_features(text), text.mask)
        emb = torch.stack([gem(h) for gem in self.text_gem.values()], 1)
        if self.mixture is not None:
            weights = F.softmax(self.mixture(h), dim=-1)
        else:
            weights = torch.full(emb.shape[:2], 1.0 / emb.shape[1], device=emb.device, dtype=emb.dtype)
        return TextEmbedding(emb, weights)
