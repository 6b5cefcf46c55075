"""Typed model configs (loaded from the YAML files under pipelines/configs/train/)."""
from __future__ import annotations

import dataclasses

__all__ = ['ExpertSpec', 'ModelCfg']


@dataclasses.dataclass(frozen=True)
class ExpertSpec:
    """One video expert as a model sees it.

    Args:
        name: the store name (``object``, ``audio``, ``ocr.rapidocr`` ...).
        dim: its feature dimension D.
        aggregation: ``mean``, ``max`` or ``vlad`` (NetVLAD over up to `max_tokens` rows).
        clusters, ghost_clusters: NetVLAD clusters.
        max_tokens: padding length of the rows given to NetVLAD (or to MMT).
    """

    name: str
    dim: int
    aggregation: str = 'mean'
    clusters: int = 0
    ghost_clusters: int = 0
    max_tokens: int = 0

    def __post_init__(self) -> None:
        if self.aggregation not in ('mean', 'max', 'vlad', 'tokens'):
            raise ValueError(f'{self.name}: aggregation must be mean, max, vlad or tokens')
        if self.aggregation == 'vlad' and (self.clusters < 1 or self.max_tokens < 1):
            raise ValueError(f'{self.name}: vlad needs clusters >= 1 and max_tokens >= 1')


@dataclasses.dataclass(frozen=True)
class ModelCfg:
    """A retrieval model.

    Args:
        model: registry name (``mee``, ``ce``).
        experts: the video experts.
        embed_dim: size of each expert's shared embedding.
        text_dim: word-vector size.
        text_clusters, text_ghost_clusters: NetVLAD over the caption's words.
        max_words: caption padding length.
        projection: project every expert to `embed_dim` first (CE's ReduceDim) instead of a GEM
            straight from the expert's features (MEE).
        gating: ``collaborative`` (CE) or ``context`` (a GEM's context gating).
        mixture_weights: text-dependent expert weights (else uniform).
        fusion: ``experts`` (one embedding per expert) or ``concat`` (one joint embedding).
    """

    model: str
    experts: tuple[ExpertSpec, ...]
    embed_dim: int = 768
    text_dim: int = 300
    text_clusters: int = 20
    text_ghost_clusters: int = 1
    max_words: int = 30
    projection: bool = False
    gating: str = 'context'
    mixture_weights: bool = True
    fusion: str = 'experts'

    def __post_init__(self) -> None:
        if not self.experts:
            raise ValueError('a model needs at least one expert')
        if self.gating not in ('collaborative', 'context'):
            raise ValueError('gating must be collaborative or context')
        if self.fusion not in ('experts', 'concat'):
            raise ValueError('fusion must be experts or concat')
