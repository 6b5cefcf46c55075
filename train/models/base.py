"""The retrieval-model contract: video and text are encoded separately into per-expert embeddings;
their similarity mixes the experts per (text, video) pair (MEE eq. 5, CE sec. 3.2.1).

s(t, v) = sum_m w_m(t) a_m(v) <t_m, v_m> / sum_m w_m(t) a_m(v)

where w(t) are the text's mixture weights and a(v) the video's expert availability: a missing
expert only changes the scores of pairs that contain its video, and a text embedding never
depends on any video (the "missing experts" bug of CE appendix A.1 cannot occur).
"""
from __future__ import annotations

import dataclasses
import torch
from torch import nn

__all__ = ['ExpertInput', 'TextInput', 'VideoEmbedding', 'TextEmbedding', 'Embeddings', 'RetrievalModel',
           'mixture_similarity']


@dataclasses.dataclass
class ExpertInput:
    """One expert for a batch of videos: aggregated (B, D) or tokens (B, L, D) + mask (B, L)."""

    x: torch.Tensor
    available: torch.Tensor  # (B,) bool
    mask: torch.Tensor | None = None
    times: torch.Tensor | None = None  # (B, L, 2) seconds, for models that use time

    def to(self, device: torch.device | str) -> ExpertInput:
        return ExpertInput(*(None if (t := getattr(self, f.name)) is None else t.to(device)
                             for f in dataclasses.fields(self)))


@dataclasses.dataclass
class TextInput:
    """Captions: word vectors (T, L, D) + mask, or sub-word ids (T, L) + mask."""

    x: torch.Tensor
    mask: torch.Tensor

    def to(self, device: torch.device | str) -> TextInput:
        return TextInput(self.x.to(device), self.mask.to(device))


@dataclasses.dataclass
class VideoEmbedding:
    emb: torch.Tensor  # (V, M, d), L2-normalised per expert
    # (V, M) bool: the experts that enter the video's scores: those it has (MEE, CE), or every one
    # (MMT, whose eq. 6 mixes a missing expert's agg output with its own weight)
    available: torch.Tensor


@dataclasses.dataclass
class TextEmbedding:
    emb: torch.Tensor  # (T, M, d)
    weights: torch.Tensor  # (T, M), sum to one


@dataclasses.dataclass
class Embeddings:
    """A model's output for a batch of matching (video i, text i) pairs: both sides' embeddings,
    and whatever else its own loss terms need (`extra`, gathered across ranks with them: the
    support-set model's per-second video features)."""

    text: TextEmbedding
    video: VideoEmbedding
    extra: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)


def mixture_similarity(text: TextEmbedding, video: VideoEmbedding) -> torch.Tensor:
    """(T, V) scores with the mixture weights renormalised over each video's available experts."""
    per_expert = torch.einsum('tmd,vmd->tvm', text.emb, video.emb)
    w = text.weights[:, None, :] * video.available[None, :, :].to(text.weights.dtype)  # (T, V, M)
    return (w * per_expert).sum(-1) / w.sum(-1).clamp(min=1e-8)


class RetrievalModel(nn.Module):
    """Base class: subclasses implement `encode_video` and `encode_text`."""

    experts: list[str]

    def encode_video(self, video: dict[str, ExpertInput]) -> VideoEmbedding:
        raise NotImplementedError

    def parameter_groups(self) -> dict[str, list[nn.Module]]:
        """Named groups for `--count-params` (default: the top-level modules)."""
        return {name: [child] for name, child in self.named_children()}

    def feature_extractors(self) -> list[nn.Module]:
        """Frozen pretrained modules inside the model (CE's GPT): not counted as its parameters."""
        return []

    def encode_text(self, text: TextInput) -> TextEmbedding:
        raise NotImplementedError

    def similarity(self, text: TextEmbedding, video: VideoEmbedding) -> torch.Tensor:
        return mixture_similarity(text, video)

    def forward(self, video: dict[str, ExpertInput], text: TextInput) -> Embeddings:
        """Both sides of a training batch; the loss (`train.losses`) scores them."""
        return Embeddings(self.encode_text(text), self.encode_video(video))

    def scores(self, video: dict[str, ExpertInput], text: TextInput) -> torch.Tensor:
        """The (texts x videos) similarity of a batch."""
        return self.similarity(self.encode_text(text), self.encode_video(video))

    def extra_loss(self, out: Embeddings, every: Embeddings, sims: torch.Tensor) -> torch.Tensor | None:
        """A model's own training terms beside the contrastive loss (None: none).

        Args:
            out: this rank's `forward` output.
            every: the same, gathered from every rank (the global batch; `out` in one process).
            sims: the global batch's (texts x videos) scores.
        """
        return None
