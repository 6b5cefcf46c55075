"""Transformer caption encoders: BERT (MMT) and T5 (support-set), pretrained from a Hugging Face
name or local directory, or built from the architecture in the config (offline tests, the demo,
``--count-params``)."""
from __future__ import annotations

from torch import nn

from train.models.config import TextCfg

__all__ = ['build_bert', 'build_t5']


def _pretrained(cls, cfg: TextCfg, **kwargs) -> nn.Module:
    try:
        return cls.from_pretrained(cfg.name, **kwargs)
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
