"""The model registry: `create_model(cfg)` builds any retrieval model from its typed config."""
from __future__ import annotations

import dataclasses
import os
from typing import Callable

import torch

from shared.config import ConfigError
from shared.registry import Registry
from train.models.base import RetrievalModel
from train.models.config import MODEL_CONFIGS, ExpertSpec, ModelCfg, model_cfg

__all__ = ['MODELS', 'MODEL_CONFIGS', 'create_model', 'structure_only', 'meta_model', 'check_fits', 'count_parameters',
           'ModelCfg', 'model_cfg',
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


def meta_model(cfg: ModelCfg) -> RetrievalModel:
    """The model's structure on the meta device: shapes and counts, no memory and no weights loaded."""
    with torch.device('meta'):
        return create_model(structure_only(cfg))


def _host_memory() -> int:
    try:
        return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
    except (ValueError, OSError, AttributeError):  # not POSIX: no check
        return 1 << 62


def check_fits(cfg: ModelCfg, device: torch.device) -> None:
    """Refuse a model whose weights alone exceed the memory that holds them (the host's, where it is
    built, and the GPU's), counted on the meta device before anything is allocated: a size such as
    model.embed_dim=1000000000 is one line here, not an allocator's traceback or the OOM killer."""
    t = cfg.text
    if t.encoder != 'word2vec' and min(t.vocab_size, t.hidden, t.layers, t.heads, t.ffn) <= 0:
        return  # a pretrained text model without its architecture in the config: its size is known once it loads
    model = meta_model(cfg)
    n = sum(t.numel() for t in model.parameters())
    nbytes = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    limits = [('host memory', _host_memory())]
    if device.type == 'cuda':
        limits.append((f'{device} memory', torch.cuda.get_device_properties(device).total_memory))
    for what, limit in limits:
        if nbytes > limit:
            raise ConfigError(f'the {cfg.model} model of these settings has {n:,} parameters ({nbytes / 1e9:,.1f} GB), '
                              f'more than the {limit / 1e9:,.1f} GB of {what}: lower model.embed_dim (now '
                              f'{cfg.embed_dim}) or the other sizes under model')


def count_parameters(model: RetrievalModel) -> dict[str, int]:
    """Parameters in total and per group of `model.parameter_groups()`, as the papers count them:
    a fine-tuned text model counts (MMT's BERT), a frozen feature extractor does not (CE's GPT,
    like the video experts)."""
    skip = {id(p) for m in model.feature_extractors() for p in m.parameters()}
    out = {'total': sum(p.numel() for p in model.parameters() if id(p) not in skip)}
    for name, modules in model.parameter_groups().items():
        out[name] = sum(p.numel() for m in modules for p in m.parameters() if id(p) not in skip)
    return out
