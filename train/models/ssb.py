"""Support-set bottlenecks for video-text representation learning (Patrick et al. 2021).

Video: e_v = the concatenation of two (or more) experts' features, one step per second (sec. 3.2;
rows of an expert falling in the same second are averaged), through a transformer pooling head
c_v = Psi''(e_v). Text: a T5 encoder, then a pooling head with a bidirectional-GRU pre-encoder.
Each pooling layer is psi(e) = BN(FFN(e_attn) + e_attn), e_attn = BN(MHA(f(e)) + f(e)) (eq. 4),
two layers ("a shallow two-layer transformer architecture with additional pre-encoders", sec. 3.2),
each with its own pre-encoder f; the first output token is the embedding. Retrieval scores are
cosine similarities; the contrastive loss is the trainer's (hinge with the hardest negative, margin
0.2: eq. 1).
Cross-captioning (eq. 3): the T5 decoder reconstructs caption i from
sum_{j in S_i} softmax_j(<c_t^i, c_v^j> / T) e_v^j, with S_i chosen by `support_set`.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from train.models.base import Embeddings, ExpertInput, RetrievalModel, TextEmbedding, TextInput, VideoEmbedding
from train.models.config import SSBCfg
from train.models.text_encoders import build_t5

__all__ = ['SupportSet', 'PoolingHead', 'support_weights', 'per_second']


def support_weights(sims: torch.Tensor, mode: str, temperature: float) -> torch.Tensor:
    """(B, B) attention of caption i over the batch's videos j (rows sum to one), eq. 3.

    identity: S_i = {i}; full: all j; hybrid: the mean of identity and full; cross: all j != i.
    """
    eye = torch.eye(sims.shape[0], dtype=torch.bool, device=sims.device)
    if mode == 'identity':
        return eye.to(sims.dtype)
    logits = sims / temperature
    if mode == 'cross':
        return F.softmax(logits.masked_fill(eye, float('-inf')), dim=1)
    full = F.softmax(logits, dim=1)
    return (full + eye.to(sims.dtype)) / 2 if mode == 'hybrid' else full


def per_second(video: dict[str, ExpertInput], experts: list[str], seconds: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Experts' rows averaged into one-second steps and concatenated: ((B, S, sum D), mask (B, S)).

    A video is truncated to `seconds`; its steps run to its last second with a row, and a second
    without a row of an expert (or a missing expert) is zero for that expert."""
    parts, last = [], None
    for name in experts:
        inp = video[name]
        x = inp.x if inp.x.ndim == 3 else inp.x[:, None]
        b, n, d = x.shape
        valid = (inp.mask.bool() if inp.mask is not None else torch.ones(b, n, dtype=torch.bool, device=x.device))
        if inp.times is not None:
            start = inp.times[..., 0]
            sec = torch.where(torch.isfinite(start), start, torch.zeros_like(start)).clamp(min=0).floor().long()
        else:
            sec = torch.zeros(b, n, dtype=torch.long, device=x.device)
        valid = valid & inp.available.bool()[:, None] & (sec < seconds)
        sec = sec.clamp(max=seconds - 1)
        w = valid.to(x.dtype)
        sums = x.new_zeros(b, seconds, d).scatter_add_(1, sec[..., None].expand(b, n, d), x * w[..., None])
        counts = x.new_zeros(b, seconds).scatter_add_(1, sec, w)
        parts.append(sums / counts.clamp(min=1)[..., None])
        top = torch.where(valid, sec, torch.zeros_like(sec)).amax(1)
        last = top if last is None else torch.maximum(last, top)
    mask = torch.arange(seconds, device=last.device)[None, :] <= last[:, None]
    return torch.cat(parts, -1), mask


class MaskedBatchNorm(nn.Module):
    """BatchNorm1d over the valid positions of (B, L, D) only (padding would skew the statistics)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(x)
        out[mask] = self.bn(x[mask])
        return out


class ConvPre(nn.Module):
    """1-D CNN pre-encoder: one convolution per kernel size, d / len(kernels) channels each, same length."""

    def __init__(self, in_dim: int, dim: int, kernels: tuple[int, ...], dropout: float) -> None:
        super().__init__()
        if dim % len(kernels):
            raise ValueError(f'hidden {dim} must divide by the {len(kernels)} kernels')
        self.kernels = kernels
        self.convs = nn.ModuleList(nn.Conv1d(in_dim, dim // len(kernels), k) for k in kernels)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = (x * mask[..., None].to(x.dtype)).transpose(1, 2)
        outs = [conv(F.pad(x, ((k - 1) // 2, k // 2))) for k, conv in zip(self.kernels, self.convs)]
        return self.drop(F.relu(torch.cat(outs, 1).transpose(1, 2)))


class MLPPre(nn.Module):
    """One-layer MLP pre-encoder."""

    def __init__(self, in_dim: int, dim: int, dropout: float) -> None:
        super().__init__()
        self.fc, self.drop = nn.Linear(in_dim, dim), nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.drop(F.relu(self.fc(x)))


class GRUPre(nn.Module):
    """Bidirectional GRU pre-encoder (dim / 2 per direction), run over each sequence's valid length."""

    def __init__(self, in_dim: int, dim: int, dropout: float) -> None:
        super().__init__()
        self.gru, self.drop = nn.GRU(in_dim, dim // 2, batch_first=True, bidirectional=True), nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        lengths = mask.sum(1).clamp(min=1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.gru(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return self.drop(out)


class PoolingLayer(nn.Module):
    """psi(e) = BN(FFN(e_attn) + e_attn), e_attn = BN(MHA(f(e)) + f(e)) (eq. 4)."""

    def __init__(self, pre: nn.Module, dim: int, heads: int, ffn: int, dropout: float) -> None:
        super().__init__()
        self.pre = pre
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.bn1, self.bn2 = MaskedBatchNorm(dim), MaskedBatchNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ffn, dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        f = self.pre(x, mask)
        a, _ = self.attn(f, f, f, key_padding_mask=~mask, need_weights=False)
        e = self.bn1(a + f, mask)
        return self.bn2(self.ffn(e) + e, mask)


class PoolingHead(nn.Module):
    """Stacked pooling layers; the first output token, L2-normalised, is the embedding."""

    def __init__(self, pre: Callable[[int], nn.Module], in_dim: int, dim: int, layers: int, heads: int, ffn: int,
                 dropout: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(PoolingLayer(pre(in_dim if i == 0 else dim), dim, heads, ffn, dropout)
                                    for i in range(layers))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, mask)
        return F.normalize(x[:, 0], dim=-1)


class SupportSet(RetrievalModel):
    def __init__(self, cfg: SSBCfg) -> None:
        super().__init__()
        if cfg.text.encoder != 't5':
            raise ValueError('the support-set model encodes and decodes captions with T5: set model.text.encoder: t5')
        bad = [e.name for e in cfg.experts if e.aggregation != 'tokens']
        if bad:
            raise ValueError(f'the support-set model reads per-second rows: set aggregation: tokens for {bad}')
        self.cfg = cfg
        self.experts = [e.name for e in cfg.experts]
        t = cfg.transformer
        in_dim = sum(e.dim for e in cfg.experts)
        if cfg.pre_encoder == 'cnn':
            video_pre = lambda i: ConvPre(i, t.hidden, cfg.kernels, t.dropout)  # noqa: E731
        else:
            video_pre = lambda i: MLPPre(i, t.hidden, t.dropout)  # noqa: E731
        self.video_head = PoolingHead(video_pre, in_dim, t.hidden, t.layers, t.heads, t.ffn, t.dropout)
        self.t5 = build_t5(cfg.text)
        self.t5.requires_grad_(cfg.text.finetune)
        self.text_head = PoolingHead(lambda i: GRUPre(i, t.hidden, t.dropout), self.t5.config.d_model, t.hidden,
                                     t.layers, t.heads, t.ffn, t.dropout)
        from transformers.models.t5.modeling_t5 import T5LayerNorm

        # e_v batch-normalised per feature before the support set mixes it: fixed features share a
        # large common part (the demo's random-weight object features: mean pairwise cosine 0.97),
        # which the video head's batch norms remove and the decoder's input did not; its differences
        # are what tells one video's caption from another's. On the demo (identity support, 80
        # epochs) greedy BLEU-4 65.8 with, 46.4 without; with hybrid support 12 distinct test
        # captions that name their photo with, 5 blends of the caption templates without
        self.caption_bn = MaskedBatchNorm(in_dim)
        # e_v -> the decoder's width, then RMS-normalised as T5's encoder (its final layer norm) leaves
        # the states its decoder attends to. Without it a small decoder trained from scratch barely
        # used the video: greedy BLEU-4 on the test fixture's demo videos 50.5 without, 60.1 with
        # (the best constant caption 49.9)
        self.caption_in = nn.Linear(in_dim, self.t5.config.d_model)
        self.caption_norm = T5LayerNorm(self.t5.config.d_model, eps=self.t5.config.layer_norm_epsilon)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # a run saved before the decoder's batch norm: its decoder read the raw features, which the
        # norm passes through as it starts (mean 0, variance 1, scale 1, shift 0), so the run loads
        # and captions as it did (a strict load would fail on the missing keys)
        fresh = MaskedBatchNorm(self.caption_bn.bn.num_features).state_dict(prefix=prefix + 'caption_bn.')
        if not any(k in state_dict for k in fresh):
            state_dict.update(fresh)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _decoder_features(self, e: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per-second video features e (B, S, D) as the support set mixes them for the decoder."""
        return self.caption_bn(e, mask)

    def _decoder_states(self, e: torch.Tensor) -> torch.Tensor:
        """The decoder's encoder states of (mixed) `_decoder_features` e (B, S, D)."""
        return self.caption_norm(self.caption_in(e))

    def video_features(self, video: dict[str, ExpertInput]) -> tuple[torch.Tensor, torch.Tensor]:
        """e_v = Psi'(v): the fixed per-second features (B, S, D) and their mask."""
        return per_second(video, self.experts, self.cfg.max_seconds)

    def encode_video(self, video: dict[str, ExpertInput]) -> VideoEmbedding:
        e, mask = self.video_features(video)
        c = self.video_head(e, mask)
        return VideoEmbedding(c[:, None], torch.ones(c.shape[0], 1, dtype=torch.bool, device=c.device))

    def encode_text(self, text: TextInput) -> TextEmbedding:
        e = self.t5.encoder(input_ids=text.x, attention_mask=text.mask.long()).last_hidden_state
        c = self.text_head(e, text.mask.bool())
        return TextEmbedding(c[:, None], torch.ones(c.shape[0], 1, dtype=c.dtype, device=c.device))

    def forward(self, video: dict[str, ExpertInput], text: TextInput) -> Embeddings:
        """Both embeddings, and what cross-captioning needs: the decoder's features of e_v, their
        mask, the caption's tokens."""
        e, e_mask = self.video_features(video)
        c = self.video_head(e, e_mask)
        labels = text.x.masked_fill(~text.mask.bool(), -100)
        return Embeddings(self.encode_text(text),
                          VideoEmbedding(c[:, None], torch.ones(c.shape[0], 1, dtype=torch.bool, device=c.device)),
                          {'features': self._decoder_features(e, e_mask), 'mask': e_mask, 'labels': labels})

    @torch.no_grad()
    def caption(self, video: dict[str, ExpertInput], beam: int = 1, max_tokens: int = 20) -> torch.Tensor:
        """Captions of videos as token ids (B, L), decoded from each video's own e_v: the identity
        support of eq. 2, the captioner of appendix 6.4. Greedy when `beam` is 1, else beam search
        with `beam` hypotheses; each row starts with the decoder's start token and is padded after
        its end token."""
        from transformers.modeling_outputs import BaseModelOutput

        e, mask = self.video_features(video)
        encoded = BaseModelOutput(last_hidden_state=self._decoder_states(self._decoder_features(e, mask)))
        return self.t5.generate(encoder_outputs=encoded, attention_mask=mask.long(), num_beams=beam, do_sample=False,
                                max_new_tokens=max_tokens)

    def extra_loss(self, out: Embeddings, every: Embeddings, sims: torch.Tensor) -> torch.Tensor:
        """lambda L_cross-captioning (sec. 3.1.2): each of this rank's captions reconstructed from
        its support set, over the global batch's videos (or this rank's: `SSBCfg.support_scope`)."""
        from transformers.modeling_outputs import BaseModelOutput

        labels = out.extra['labels']
        n = labels.shape[0]
        many = dist.is_available() and dist.is_initialized()
        first, world = (dist.get_rank() * n, dist.get_world_size()) if many else (0, 1)
        if self.cfg.support_scope == 'local':
            sims, videos = sims[first:first + n, first:first + n], out.extra
            first = 0
        else:
            videos = every.extra
        weights = support_weights(sims, self.cfg.support_set, self.cfg.support_temperature)[first:first + n]
        mixed = torch.einsum('ij,jsd->isd', weights.to(videos['features'].dtype), videos['features'])
        mixed_mask = (weights @ videos['mask'].to(weights.dtype)) > 0
        dec = self.t5(encoder_outputs=BaseModelOutput(last_hidden_state=self._decoder_states(mixed)),
                      attention_mask=mixed_mask.long(), labels=labels)
        # dec.loss is the mean over this rank's caption tokens; rescaled to its share of the mean
        # over every rank's tokens (DistributedDataParallel averages the ranks' gradients), so that
        # N ranks optimise the loss of one process at their global batch. One process: x 1, exactly.
        tokens = (labels != -100).sum()
        total = tokens.clone()
        if many:
            dist.all_reduce(total)
        return self.cfg.caption_weight * dec.loss * (tokens * world / total.clamp(min=1))
