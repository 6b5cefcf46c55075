"""Typed model configs (loaded from the YAML files under pipelines/configs/train/)."""
from __future__ import annotations

import dataclasses
from typing import Any

from shared.config import ConfigError, UnknownKeys, at_least, brief_repr

__all__ = ['ExpertSpec', 'TextCfg', 'TransformerCfg', 'ModelCfg', 'MEECfg', 'CECfg', 'MMTCfg', 'SSBCfg',
           'MODEL_CONFIGS', 'model_cfg', 'upgrade_saved']


@dataclasses.dataclass(frozen=True)
class ExpertSpec:
    """One video expert as a model sees it.

    Args:
        name: the store name (``object``, ``audio``, ``ocr.rapidocr`` ...).
        dim: its feature dimension D.
        aggregation: ``mean``, ``max`` or ``vlad`` (NetVLAD over up to `max_tokens` rows).
        clusters, ghost_clusters: NetVLAD clusters.
        max_tokens: padding length of the rows given to NetVLAD (or to MMT).
        sample: for ``tokens``, which `max_tokens` rows a longer video gives: ``uniform`` (evenly
            spaced, in time order: MMT) or ``first`` (truncation: the support-set model).
    """

    name: str
    dim: int
    aggregation: str = 'mean'
    clusters: int = 0
    ghost_clusters: int = 0
    max_tokens: int = 0
    sample: str = 'uniform'

    def __post_init__(self) -> None:
        at_least(self, 1, 'dim', prefix=f'{self.name}: ')
        at_least(self, 0, 'clusters', 'ghost_clusters', 'max_tokens', prefix=f'{self.name}: ')
        if self.sample not in ('uniform', 'first'):
            raise ValueError(f'{self.name}: sample must be uniform or first')
        if self.aggregation not in ('mean', 'max', 'vlad', 'tokens'):
            raise ValueError(f'{self.name}: aggregation must be mean, max, vlad or tokens')
        if self.aggregation == 'vlad' and (self.clusters < 1 or self.max_tokens < 1):
            raise ValueError(f'{self.name}: vlad needs clusters >= 1 and max_tokens >= 1')


@dataclasses.dataclass(frozen=True)
class TextCfg:
    """The caption encoder.

    Args:
        encoder: ``word2vec`` (word vectors from `data.word_vectors`, MEE/CE), ``gpt`` (OpenAI-GPT
            contextual word features, CE; frozen unless `finetune`), ``bert`` (MMT) or ``t5``
            (support-set; encoder and decoder).
        name: Hugging Face name or local directory of the pretrained model and its tokenizer.
        weights: ``pretrained`` (load `name`) or ``random`` (build from the architecture below;
            what offline tests, the demo and ``--count-params`` use).
        tokenizer: ``pretrained`` (the tokenizer of `name`) or ``words`` (a word-level vocabulary of
            the `vocab_size` - 5 most frequent training-caption words; no download).
        vocab_size, hidden, layers, heads, ffn, max_positions: the architecture when built from
            config (bert-base-cased: 28996, 768, 12, 12, 3072, 512; openai-gpt: 40478, 768, 12,
            12, 3072, 512); for t5, `layers` is the depth of the encoder and of the decoder.
        dropout: dropout inside the text model (MMT fine-tunes BERT with 0.1).
        finetune: train the text model's weights (else frozen).
    """

    encoder: str = 'word2vec'
    name: str = ''
    weights: str = 'pretrained'
    tokenizer: str = 'pretrained'
    vocab_size: int = 0
    hidden: int = 0
    layers: int = 0
    heads: int = 0
    ffn: int = 0
    max_positions: int = 512
    dropout: float = 0.1
    finetune: bool = True

    def __post_init__(self) -> None:
        at_least(self, 0, 'vocab_size', 'hidden', 'layers', 'heads', 'ffn', prefix='text.')  # 0: the pretrained one's
        at_least(self, 1, 'max_positions', prefix='text.')
        if self.encoder not in ('word2vec', 'gpt', 'bert', 't5'):
            raise ValueError('text.encoder must be word2vec, gpt, bert or t5')
        if self.weights not in ('pretrained', 'random'):
            raise ValueError('text.weights must be pretrained or random')
        if self.tokenizer not in ('pretrained', 'words'):
            raise ValueError('text.tokenizer must be pretrained or words')
        if self.encoder != 'word2vec':
            if self.weights == 'pretrained' and not self.name:
                raise ValueError(f'text.encoder {self.encoder} with pretrained weights needs text.name '
                                 '(a Hugging Face name or a local directory)')
            if self.tokenizer == 'pretrained' and not self.name:
                raise ValueError('text.tokenizer pretrained needs text.name')


@dataclasses.dataclass(frozen=True)
class TransformerCfg:
    """A video transformer: MMT's encoder (defaults: MMT sec. 4.1) or the support-set pooling head.

    Args:
        layers, heads, hidden, ffn, dropout: its size (MMT: 4, 4, 512, 3072, 0.1).
        max_positions: temporal embeddings (MMT: agg, unknown and one per second; 512 in all).
    """

    layers: int = 4
    heads: int = 4
    hidden: int = 512
    ffn: int = 3072
    dropout: float = 0.1
    max_positions: int = 512

    def __post_init__(self) -> None:
        at_least(self, 1, 'layers', 'heads', 'hidden', 'ffn', 'max_positions', prefix='transformer.')
        if self.hidden % self.heads:  # else torch's AssertionError as the model is built
            raise ValueError(f'transformer.hidden ({self.hidden}) must be a multiple of transformer.heads ({self.heads})')


@dataclasses.dataclass(frozen=True)
class ModelCfg:
    """What every retrieval model's config has; each model has its own subclass (`MODEL_CONFIGS`),
    so that a setting of another model is an error, not silently ignored.

    Args:
        model: registry name (``mee``, ``ce``, ``mmt``, ``ssb``).
        experts: the video experts.
        text: the caption encoder (word2vec for MEE/CE, BERT for MMT, T5 for the support-set model).
    """

    model: str
    experts: tuple[ExpertSpec, ...]
    text: TextCfg = dataclasses.field(default_factory=TextCfg)

    def __post_init__(self) -> None:
        if not self.experts:
            raise ValueError('a model needs at least one expert')
        keys = [e.name.replace('.', '_') for e in self.experts]  # the module keys (layers.expert_key)
        if len(set(keys)) < len(keys):
            raise ValueError(f'experts must differ in name (dots count as underscores): {[e.name for e in self.experts]}')

    @classmethod
    def resolve(cls, data: dict[str, Any], where: str) -> type[ModelCfg]:
        """The config class of ``data['model']`` (`shared.config.from_dict` asks, so that YAML's
        ``model:`` section becomes the model's own config); another key of it is then an error."""
        name = data.get('model')
        if not isinstance(name, str) or name not in MODEL_CONFIGS:  # a list is unhashable: no `in` for it
            raise ConfigError(f'{where}.model: unknown model {brief_repr(name)} (known: {", ".join(sorted(MODEL_CONFIGS))})')
        own = MODEL_CONFIGS[name]
        foreign = sorted(k for k in data if k not in {f.name for f in dataclasses.fields(own)})
        if foreign:
            other = sorted({m for k in foreign for m, c in MODEL_CONFIGS.items()
                            if k in {f.name for f in dataclasses.fields(c)}})
            if not other:  # a typo: the close names of this model's settings
                raise UnknownKeys(where, foreign, [f.name for f in dataclasses.fields(own)])
            raise ConfigError(f'{where}: {", ".join(foreign)} {"is not a setting" if len(foreign) == 1 else "are not settings"}'
                              f' of {name}' + (f' (but of {", ".join(other)})' if other else '')
                              + f'; its settings: {", ".join(f.name for f in dataclasses.fields(own))}')
        return own


@dataclasses.dataclass(frozen=True)
class MEECfg(ModelCfg):
    """Mixture of Embedding Experts.

    Args:
        embed_dim: size of each expert's shared embedding.
        text_dim: size of the caption's word features (word2vec 300, GPT 768).
        text_clusters, text_ghost_clusters: NetVLAD over the caption's words.
        mixture_weights: text-dependent expert weights (else uniform).
    """

    embed_dim: int = 768
    text_dim: int = 300
    text_clusters: int = 20
    text_ghost_clusters: int = 1
    mixture_weights: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least(self, 1, 'embed_dim', 'text_dim', 'text_clusters')
        at_least(self, 0, 'text_ghost_clusters')
        if self.text.encoder == 'gpt' and self.text.hidden and self.text.hidden != self.text_dim:
            raise ValueError(f'text_dim ({self.text_dim}) must be the GPT width text.hidden ({self.text.hidden})')


@dataclasses.dataclass(frozen=True)
class CECfg(MEECfg):
    """Collaborative Experts, with its Table 6 ablations as switches.

    Args:
        projection: project every expert to `embed_dim` first (CE's ReduceDim) instead of a GEM
            straight from the expert's features (MEE).
        gating: ``collaborative`` (CE) or ``context`` (a GEM's context gating).
        fusion: ``experts`` (one embedding per expert) or ``concat`` (one joint embedding).
        gating_pairs: how collaborative gating combines an expert's pairwise relations: ``mean``
            over the pairs of experts the video has (CE's released code) or ``sum`` (eq. 1's sum;
            runs saved before this setting existed are read with it).
    """

    projection: bool = False
    gating: str = 'context'
    fusion: str = 'experts'
    gating_pairs: str = 'mean'

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.gating not in ('collaborative', 'context'):
            raise ValueError('gating must be collaborative or context')
        if self.fusion not in ('experts', 'concat'):
            raise ValueError('fusion must be experts or concat')
        if self.gating_pairs not in ('mean', 'sum'):
            raise ValueError('gating_pairs must be mean or sum')


@dataclasses.dataclass(frozen=True)
class MMTCfg(ModelCfg):
    """Multi-modal Transformer.

    Args:
        transformer: the video transformer (MMT sec. 4.1).
    """

    transformer: TransformerCfg = dataclasses.field(default_factory=TransformerCfg)


@dataclasses.dataclass(frozen=True)
class SSBCfg(ModelCfg):
    """Support-set bottlenecks.

    Args:
        transformer: the size of the video and text pooling heads.
        pre_encoder: video pre-encoder, ``cnn`` (1-D convolutions with `kernels`) or ``mlp``.
        max_seconds: video length in one-second steps (MSR-VTT 32, VATEX 64, ActivityNet 512).
        support_set: cross-captioning support set: ``identity``, ``full``, ``hybrid`` or ``cross``.
        support_temperature: T of the support-set attention softmax.
        support_scope: which videos a caption's support set ranges over when training on many
            processes: ``global`` (the whole batch, every rank's videos: what one process at that
            batch does) or ``local`` (this rank's own videos).
        caption_weight: lambda, the weight of the captioning loss.
    """

    transformer: TransformerCfg = dataclasses.field(default_factory=TransformerCfg)
    pre_encoder: str = 'cnn'
    kernels: tuple[int, ...] = (2, 3, 4, 6)
    max_seconds: int = 32
    support_set: str = 'cross'
    support_temperature: float = 0.1
    support_scope: str = 'global'
    caption_weight: float = 10.0

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least(self, 1, 'max_seconds')
        if not self.kernels or min(self.kernels) < 1:
            raise ValueError(f'kernels must be one or more sizes of at least 1, got {list(self.kernels)}')
        if self.support_set not in ('identity', 'full', 'hybrid', 'cross'):
            raise ValueError('support_set must be identity, full, hybrid or cross')
        if self.support_scope not in ('global', 'local'):
            raise ValueError('support_scope must be global or local')
        if self.pre_encoder not in ('cnn', 'mlp'):
            raise ValueError('pre_encoder must be cnn or mlp')


#: model name -> its config class
MODEL_CONFIGS: dict[str, type[ModelCfg]] = {'mee': MEECfg, 'ce': CECfg, 'mmt': MMTCfg, 'ssb': SSBCfg}

#: the settings of the one config all four models shared before each had its own, at their defaults:
#: a run's config.yaml saved then holds them all (`upgrade_saved`)
_SHARED_BEFORE = dict(embed_dim=768, text_dim=300, text_clusters=20, text_ghost_clusters=1, max_words=30,
                      projection=False, gating='context', mixture_weights=True, fusion='experts',
                      transformer=dataclasses.asdict(TransformerCfg()), pre_encoder='cnn', kernels=[2, 3, 4, 6],
                      max_seconds=32, support_set='cross', support_temperature=0.1, caption_weight=10.0)


def model_cfg(model: str, experts: tuple[ExpertSpec, ...], **settings: Any) -> ModelCfg:
    """The config of model `model` (its own class) from keyword settings."""
    return MODEL_CONFIGS[model](model=model, experts=experts, **settings)


def upgrade_saved(data: dict[str, Any]) -> dict[str, Any]:
    """A ``model:`` section as a run's config.yaml saved it before each model had its own config:
    the other models' settings, at the defaults they then had, dropped (a value that differs from
    the default stays, and fails as it should); a CE run saved before `gating_pairs` keeps ``sum``."""
    name = data.get('model')
    own = MODEL_CONFIGS.get(name) if isinstance(name, str) else None  # a list is unhashable: `resolve` says what
    if own is None:
        return data
    names = {f.name for f in dataclasses.fields(own)}
    upgraded = {k: v for k, v in data.items() if k in names or k not in _SHARED_BEFORE or _SHARED_BEFORE[k] != v}
    if own is CECfg and upgraded.get('gating') == 'collaborative' and 'gating_pairs' not in upgraded:
        # trained before the mean: its weights were fitted to the sum
        upgraded['gating_pairs'] = 'sum'
    return upgraded
