"""Transformer caption encoders: BERT (MMT), T5 (support-set) and OpenAI-GPT (CE's contextual word
features), pretrained from a Hugging Face name or local directory, or built from the architecture
in the config (offline tests, the demo, ``--count-params``)."""
from __future__ import annotations

from torch import nn

from train.models.config import TextCfg

__all__ = ['build_bert', 'build_t5', 'build_gpt']


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
