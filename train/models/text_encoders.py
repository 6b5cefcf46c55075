"""Transformer caption encoders: BERT (MMT), T5 (support-set) and OpenAI-GPT (CE's contextual word
features), pretrained from a Hugging Face name or local directory, or built from the architecture
in the config (offline tests, the demo, ``--count-params``)."""
from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from torch import nn

from shared.config import offline
from train.models.config import TextCfg

__all__ = ['build_bert', 'build_t5', 'build_gpt', 'hub_source', 'text_positions']

#: seconds to wait for the Hugging Face hub to answer before a model missing from the cache fails
HUB_PROBE_TIMEOUT = 3.0


def _hub_unreachable() -> str:
    """Why the hub cannot be reached now ('' when it can): one TCP connection, where transformers
    would retry for tens of seconds before its own error."""
    url = urlparse(os.environ.get('HF_ENDPOINT', 'https://huggingface.co'))
    try:
        socket.create_connection((url.hostname or '', url.port or (443 if url.scheme == 'https' else 80)),
                                 timeout=HUB_PROBE_TIMEOUT).close()
    except OSError as err:
        return f'{url.hostname} cannot be reached ({err.strerror or type(err).__name__})'
    return ''


def hub_source(name: str, what: str = 'text model') -> dict[str, Any]:
    """`from_pretrained` options for a Hugging Face name or local directory: a local directory as it
    is; a name in the cache from the cache alone (no network, no retries); a name missing from the
    cache is downloaded, unless offline or the hub does not answer: then a FileNotFoundError at once
    saying what to download."""
    if Path(name).is_dir():
        return {}
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.constants import HF_HUB_CACHE

    if isinstance(try_to_load_from_cache(name, 'config.json'), str):
        return {'local_files_only': True}
    why = 'offline mode ($HF_HUB_OFFLINE or $VIDEOEXPERTS_OFFLINE)' if offline() else _hub_unreachable()
    if why:
        raise FileNotFoundError(
            f'{what} {name!r} is not in the Hugging Face cache ({HF_HUB_CACHE}) and {why}: download it on a machine '
            f'with internet (huggingface-cli download {name}) and copy the cache here (HF_HOME), give a local '
            'directory as model.text.name, or set model.text.weights=random to train from scratch')
    return {}


def _pretrained(cls, cfg: TextCfg, **kwargs) -> nn.Module:
    source = hub_source(cfg.name)
    try:
        return cls.from_pretrained(cfg.name, **source, **kwargs)
    except OSError as err:
        raise FileNotFoundError(
            f'text model {cfg.name!r} not found: put it in the Hugging Face cache (HF_HOME) or give a local '
            f'directory as model.text.name, or set model.text.weights=random to train from scratch ({err})') from None


def _check_arch(cfg: TextCfg) -> None:
    missing = [k for k in ('vocab_size', 'hidden', 'layers', 'heads', 'ffn') if getattr(cfg, k) <= 0]
    if missing:
        raise ValueError(f'model.text with random weights needs its architecture: {", ".join(missing)}')


def build_bert(cfg: TextCfg) -> nn.Module:
    """A BertModel (with its pooler, as the checkpoints and MMT's parameter count have it)."""
    from transformers import BertConfig, BertModel

    drop = {'hidden_dropout_prob': cfg.dropout, 'attention_probs_dropout_prob': cfg.dropout}
    if cfg.weights == 'pretrained':
        return _pretrained(BertModel, cfg, **drop)
    _check_arch(cfg)
    return BertModel(BertConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden, num_hidden_layers=cfg.layers,
                                num_attention_heads=cfg.heads, intermediate_size=cfg.ffn,
                                max_position_embeddings=cfg.max_positions, pad_token_id=0, **drop))


def build_t5(cfg: TextCfg) -> nn.Module:
    """A T5ForConditionalGeneration: its encoder encodes captions, its decoder captions videos."""
    from transformers import T5Config, T5ForConditionalGeneration

    if cfg.weights == 'pretrained':
        return _pretrained(T5ForConditionalGeneration, cfg, dropout_rate=cfg.dropout)
    _check_arch(cfg)
    return T5ForConditionalGeneration(T5Config(
        vocab_size=cfg.vocab_size, d_model=cfg.hidden, d_kv=cfg.hidden // cfg.heads, d_ff=cfg.ffn,
        num_layers=cfg.layers, num_decoder_layers=cfg.layers, num_heads=cfg.heads, dropout_rate=cfg.dropout,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))


def build_gpt(cfg: TextCfg) -> nn.Module:
    """An OpenAIGPTModel (Radford et al. 2018), whose last hidden states are CE's word features."""
    from transformers import OpenAIGPTConfig, OpenAIGPTModel

    drop = {'resid_pdrop': cfg.dropout, 'attn_pdrop': cfg.dropout, 'embd_pdrop': cfg.dropout}
    if cfg.weights == 'pretrained':
        return _pretrained(OpenAIGPTModel, cfg, **drop)
    _check_arch(cfg)
    if cfg.ffn != 4 * cfg.hidden:
        raise ValueError(f'GPT\'s feed-forward width is 4 x hidden ({4 * cfg.hidden}), not {cfg.ffn}')
    return OpenAIGPTModel(OpenAIGPTConfig(vocab_size=cfg.vocab_size, n_positions=cfg.max_positions, n_embd=cfg.hidden,
                                          n_layer=cfg.layers, n_head=cfg.heads, **drop))


def text_positions(model: nn.Module | None) -> int | None:
    """The positions a built BERT or GPT has (a pretrained one's from its checkpoint's config); None
    for T5, whose positions are relative, and for no text model."""
    config = getattr(model, 'config', None)
    return getattr(config, 'max_position_embeddings', None) or getattr(config, 'n_positions', None)
