"""The model registry: `create_model(cfg)` builds any retrieval model from its typed config."""
from __future__ import annotations

from typing import Callable

from shared.registry import Registry
from train.models.base import RetrievalModel
from train.models.config import ExpertSpec, ModelCfg

__all__ = ['MODELS', 'create_model', 'count_parameters', 'ModelCfg', 'ExpertSpec', 'RetrievalModel']

#: name -> factory(cfg) -> model
MODELS: Registry[Callable[[ModelCfg], RetrievalModel]] = Registry('model')


@MODELS.register('mee')
def mee(cfg: ModelCfg) -> RetrievalModel:
    """Mixture of Embedding Experts (= CE's MoEE ablation)."""
    from train.models.mee import MEE

    return MEE(cfg)


@MODELS.register('ce')
def ce(cfg: ModelCfg) -> RetrievalModel:
    """Collaborative Experts, with its Table 6 ablations as config switches."""
    from train.models.ce import CE

    return CE(cfg)


def create_model(cfg: ModelCfg) -> RetrievalModel:
    return MODELS.get(cfg.model)(cfg)


def count_parameters(model: RetrievalModel) -> dict[str, int]:
    """Trainable parameters in total and per top-level module."""
    out = {'total': sum(p.numel() for p in model.parameters() if p.requires_grad)}
    for name, child in model.named_children():
        out[name] = sum(p.numel() for p in child.parameters() if p.requires_grad)
    return out
