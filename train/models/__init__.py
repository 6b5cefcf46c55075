"""The model registry: `create_model(cfg)` builds any retrieval model from its typed config."""
from __future__ import annotations

import dataclasses
from typing import Callable

from shared.registry import Registry
from train.models.base import RetrievalModel
from train.models.config import MODEL_CONFIGS, ExpertSpec, ModelCfg, model_cfg

__all__ = ['MODELS', 'MODEL_CONFIGS', 'create_model', 'structure_only', 'count_parameters', 'ModelCfg', 'model_cfg',
           'ExpertSpec', 'RetrievalModel']

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


@MODELS.register('mmt')
def mmt(cfg: ModelCfg) -> RetrievalModel:
    """Multi-modal Transformer (Gabeur et al. 2020) with a BERT caption encoder."""
    from train.models.mmt import MMT

    return MMT(cfg)


@MODELS.register('ssb')
def ssb(cfg: ModelCfg) -> RetrievalModel:
    """Support-set bottlenecks (Patrick et al. 2021): transformer pooling heads, T5 text, cross-captioning."""
    from train.models.ssb import SupportSet

    return SupportSet(cfg)


def create_model(cfg: ModelCfg) -> RetrievalModel:
    return MODELS.get(cfg.model)(cfg)


def structure_only(cfg: ModelCfg) -> ModelCfg:
    """The same model without loading pretrained text weights (for counting parameters offline,
    or before loading a checkpoint that holds every weight)."""
    return dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, weights='random'))


def count_parameters(model: RetrievalModel) -> dict[str, int]:
    """Parameters in total and per group of `model.parameter_groups()`, as the papers count them:
    a fine-tuned text model counts (MMT's BERT), a frozen feature extractor does not (CE's GPT,
    like the video experts)."""
    skip = {id(p) for m in model.feature_extractors() for p in m.parameters()}
    out = {'total': sum(p.numel() for p in model.parameters() if id(p) not in skip)}
    for name, modules in model.parameter_groups().items():
        out[name] = sum(p.numel() for m in modules for p in m.parameters() if id(p) not in skip)
    return out
