"""A training run's config: what to train on (`DataCfg`), the model (`train.models.config`), how
(`TrainCfg`), loaded from YAML; and the rules for resuming a run saved with a config."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import yaml

from shared.config import ConfigError, at_least, from_dict, load_yaml, read_yaml, to_dict
from shared.resources import parse_bytes
from train.losses import LOSSES
from train.metrics import DEFAULT_SEED_STD, SEED_STD
from train.models import ModelCfg
from train.models.config import upgrade_saved

#: `DataCfg.sample`'s values (`train.sampling`)
SAMPLES = ('video', 'window', 'segment')
#: the largest `train.lr`: Ranger's first step, lr / (1 - 0.95), fits in float32 (Adam's, lr / 0.1, too)
MAX_LR = 1e36

__all__ = ['DataCfg', 'ExtraCfg', 'SAMPLES', 'TrainCfg', 'RunCfg', 'load_run_cfg', 'read_saved', 'saved_run_cfg', 'check_resumable',
           'settings_changed', 'RESUME_MAY_CHANGE', 'flat_settings']


@dataclasses.dataclass(frozen=True)
class ExtraCfg:
    """One more training source mixed into a run's training batches (MEE sec. 4.2: COCO images
    with MSR-VTT or MPII videos).

    Args:
        dataset, split: a registered dataset and its split; its training part gives the samples,
            its test part is evaluated beside the run's own test part.
        rate: MEE's alpha: each epoch draws round(rate x the run's training videos) items of it
            at random (a function of the seed and the epoch), mixed with the run's videos.
    """

    dataset: str = ''
    split: str = ''
    rate: float = 0.5

    def __post_init__(self) -> None:
        if not self.dataset or not self.split:
            raise ValueError(f'data.extra: each source needs a dataset and a split, got {self.dataset!r}/{self.split!r}')
        if isinstance(self.rate, bool) or not math.isfinite(self.rate) or self.rate <= 0:
            raise ValueError(f'data.extra {self.dataset}/{self.split}: rate must be a positive number (MEE\'s alpha, '
                             f'e.g. 0.5), got {self.rate!r}')
        if not self.dataset.startswith('folder:'):
            from shared.datasets import require_registered

            require_registered(self.dataset, f' (data.extra {self.dataset}/{self.split})')

    @property
    def name(self) -> str:
        """How reports name the source: ``dataset/split``."""
        return f'{self.dataset}/{self.split}'


@dataclasses.dataclass(frozen=True)
class DataCfg:
    """What to train on.

    Args:
        dataset, split: a registered dataset and one of its splits.
        word_vectors: word2vec file for captions (models with ``text.encoder: word2vec``): a path,
            ``{data_root}/...``, or a file name in the weights directory.
        max_words: caption length in words (word2vec) or in tokens, specials included (BERT, T5).
        dataset_options: the dataset adapter's options, e.g. ``{captions: raw_caption.json}`` for
            howto100m (`shared.datasets.load_manifest`).
        stop_words: ``keep``, or ``remove`` HowTo100M's stop words (`shared.text.stop_words`) from
            every caption, in training and in evaluation (MMT Table 1).
        sample: what a training sample is (`train.sampling`): ``video`` (a video's features whole
            and one of its captions), ``window`` (`window_words` consecutive words of its timed
            captions and the `window_seconds` of features closest in time to them: MMT sec. 4.2)
            or ``segment`` (one timed caption and the features of its own seconds: support-set
            appendix 6.3). The last two need a dataset with timed captions (howto100m).
        window_words, window_seconds: the window of ``sample: window``.
        extra: more training sources (`ExtraCfg`), e.g. ``[{dataset: coco, split: mee-1k, rate:
            0.5}]``: their items join the training batches (an expert a source lacks is unavailable
            for its items), model selection and the test protocol stay on `dataset`, and each
            source's test part is evaluated and reported too (`train.extra`).
    """

    dataset: str = 'demo'
    split: str = 'official'
    word_vectors: str = 'GoogleNews-vectors-negative300.bin'
    max_words: int = 30
    dataset_options: dict[str, str] = dataclasses.field(default_factory=dict)
    stop_words: str = 'keep'
    sample: str = 'video'
    window_words: int = 100
    window_seconds: float = 100.0
    extra: tuple[ExtraCfg, ...] = ()

    def __post_init__(self) -> None:
        names = [e.name for e in self.extra]
        twice = sorted({n for n in names if names.count(n) > 1} | ({f'{self.dataset}/{self.split}'} & set(names)))
        if twice:
            raise ValueError(f'data.extra names {", ".join(twice)} twice (or the run\'s own dataset): give each '
                             'source once')
        if self.extra and self.sample != 'video':
            raise ValueError(f'data.extra mixes whole videos and images: it needs data.sample video, not {self.sample}')
        if self.stop_words not in ('keep', 'remove'):
            raise ValueError(f'data.stop_words must be keep or remove, got {self.stop_words!r}')
        if self.sample not in SAMPLES:
            raise ValueError(f'data.sample must be {", ".join(SAMPLES[:-1])} or {SAMPLES[-1]}, got {self.sample!r}')
        at_least(self, 1, 'max_words', 'window_words', prefix='data.')
        if not math.isfinite(self.window_seconds) or self.window_seconds <= 0:
            raise ValueError(f'data.window_seconds must be a positive number of seconds, got {self.window_seconds}')


@dataclasses.dataclass(frozen=True)
class TrainCfg:
    """Optimisation.

    Args:
        optimizer: ``adam``, ``adamw`` or ``ranger`` (RAdam + Lookahead, k=6, alpha=0.5, as CE: Ranger
            9.3.19's betas 0.95/0.999, eps 1e-5 and decoupled weight decay; `train.optim`).
        lr, weight_decay, epochs, batch_size: as usual.
        steps: train for this many optimisation steps in all, in place of `epochs` (MMT counts
            steps: 2M pretraining on HowTo100M, 50k fine-tuning; sec. 4.2); the last epoch stops
            part way, and a resumed run continues it from the step it stopped at; 0: `epochs`.
        epoch_unit: what `epochs` counts. ``videos``: an epoch takes every training video once,
            with one of its captions at random (CE's and MEE's epochs). ``pairs``: passes over
            every (video, caption) pair, as the support-set paper counts them ("180K video-text
            pairs for 20 epochs", appendix 6.1): the run trains ceil(epochs x pairs / batch_size)
            steps (as `steps` does), in epochs of one caption a video each; the pairs are the run's
            own training captions (not ``data.extra``'s items); ``data.sample: video`` only.
        loss: ``max_margin``, ``hard_negative`` (its mean over the batch) or ``hard_negative_sum`` (its
            sum, the support-set paper's: `train.losses.hard_negative_sum`), or ``info_nce``; margin /
            temperature for them.
        lr_step, lr_gamma: multiply the learning rate by gamma every lr_step epochs, or every lr_step
            optimisation steps with ``lr_step_unit: step`` (MMT: 0.95 every 1,000 steps); 0: constant.
        grad_clip: max gradient norm (0: none).
        selection: ``geometric_mean`` of val R1/R5/R10 (CE), or ``last`` (a fixed epoch count, for
            protocols without a validation set such as 1k-A).
        seed_std: the standard deviation over seeds in the results table, as the paper reproduced
            prints it (`train.metrics.SEED_STD`): ``sample`` (CE's released code and tables) or
            ``population`` (MMT's tables).
        compile: capture the training step with torch.compile (`train.step.TrainStep`; on CUDA its
            fixed-shape graphs replayed as CUDA graphs, `train.step.compile_options`); ``null``: on
            CUDA devices only (on a CPU, inductor's compile costs more than it saves on the small
            models trained there). A compile failure warns once and the run continues eager. Same
            results within float noise; dropout draws other random numbers.
        log_every: read the running loss (a wait for the device) every this many steps, for the
            progress bar; the loss is otherwise summed on the device and read at the epoch's end.
        checkpoint_every: write last.pt every this many epochs and after the last one; a killed
            run resumes from the last one written (losing at most this many epochs less one).
            More than 1 where epochs are a step or two each, as in pretraining on a small set,
            where writing and syncing a checkpoint after every step takes longer than the step.
        checkpoint_steps: also write last.pt every this many optimisation steps, part way through
            an epoch (0: at epochs' ends only), from which a rerun continues the epoch at the next
            batch with the weights of an uninterrupted run: where an epoch is long (HowTo100M's,
            thousands of steps), a killed or preempted job loses at most this many steps.
        device_data: the training split moves to the GPU once when it takes at most this fraction
            of the device's free memory (0: never); otherwise each batch is copied from pinned host
            memory without waiting.
        init_from: start from another run's weights (``--init-from``; `train.init`): its run
            directory or a checkpoint file, saved in config.yaml as the checkpoint file it names;
            empty: a fresh initialisation.
        memory_budget: host memory a split part's aggregated features may take in memory, in bytes
            or e.g. ``2GB``; ``null``: a quarter of what the job may use (`shared.resources`).
        streaming: ``auto`` streams a part from the stores when its features exceed the budget
            (`train.stream`), ``on`` always, ``off`` never.
        shuffle_buffer: videos in the streaming shuffle buffer (with a permutation of the store
            chunks each epoch); part of the data order, so a resumed run keeps it.
        data_workers: DataLoader processes reading store chunks while streaming; ``null``: the
            job's CPUs less one (at most 4), and none on two CPUs or fewer, where the main
            process reads between steps. While they run, the training step takes the CPUs they
            leave (`train.stream.step_threads`).
        stream_cache: a streamed training or validation part writes its aggregated features to
            a file on local disk as its first epoch reads them, and later epochs read that file
            instead of the stores (`train.stream_cache`); the file is removed when the run ends.
            Only where the inputs repeat every epoch (not with ``data.sample`` window or segment),
            and only where the disk has room.
        stream_cache_dir: the folder of that file; empty: the run directory.
    """

    optimizer: str = 'ranger'
    lr: float = 0.01
    weight_decay: float = 1e-3
    epochs: int = 20
    steps: int = 0
    epoch_unit: str = 'videos'
    batch_size: int = 64
    loss: str = 'max_margin'
    margin: float = 0.09
    temperature: float = 0.05
    lr_step: int = 0
    lr_gamma: float = 0.95
    lr_step_unit: str = 'epoch'
    grad_clip: float = 0.0
    selection: str = 'geometric_mean'
    seed_std: str = DEFAULT_SEED_STD
    compile: bool | None = None
    log_every: int = 50
    checkpoint_every: int = 1
    checkpoint_steps: int = 0
    device_data: float = 0.5
    init_from: str = ''
    memory_budget: int | str | None = None
    streaming: str | bool = 'auto'
    shuffle_buffer: int = 1024
    data_workers: int | None = None
    stream_cache: bool = True
    stream_cache_dir: str = ''

    def __post_init__(self) -> None:
        for name in ('epochs', 'batch_size', 'log_every', 'checkpoint_every'):
            if getattr(self, name) < 1:
                raise ValueError(f'train.{name} must be at least 1, got {getattr(self, name)}')
        for name in ('lr_step', 'steps', 'checkpoint_steps'):
            if getattr(self, name) < 0:
                raise ValueError(f'train.{name} must be 0 or more, got {getattr(self, name)}')
        if self.loss not in LOSSES:
            raise ValueError(f'unknown train.loss {self.loss!r} (known: {", ".join(LOSSES.names())})')
        # a NaN or infinite setting makes every loss non-finite: refused here, not found after training
        for name in ('lr', 'weight_decay', 'margin', 'temperature', 'lr_gamma', 'grad_clip'):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f'train.{name} must be a finite number, got {value!r}')
        if self.lr <= 0:
            raise ValueError(f'train.lr must be positive, got {self.lr}')
        if self.lr > MAX_LR:  # the first step of Adam is lr / (1 - beta1): past float32's range, torch's traceback
            raise ValueError(f'train.lr must be at most {MAX_LR:g}, got {self.lr:g}: the optimiser\'s first step '
                             '(lr / (1 - beta1)) would overflow float32 (learning rates are well below 1)')
        if self.temperature <= 0:
            raise ValueError(f'train.temperature must be positive, got {self.temperature}')
        if not 0.0 <= self.device_data <= 1.0:
            raise ValueError('train.device_data must be in [0, 1]')
        if self.lr_step_unit not in ('epoch', 'step'):
            raise ValueError('train.lr_step_unit must be epoch or step')
        if self.selection not in ('geometric_mean', 'last'):
            raise ValueError('train.selection must be geometric_mean or last')
        if self.seed_std not in SEED_STD:
            raise ValueError(f'train.seed_std must be {" or ".join(SEED_STD)}, got {self.seed_std!r}')
        if self.epoch_unit not in ('videos', 'pairs'):
            raise ValueError(f'train.epoch_unit must be videos or pairs, got {self.epoch_unit!r}')
        if self.epoch_unit == 'pairs' and self.steps:
            raise ValueError('train.epoch_unit pairs counts the steps from train.epochs: leave train.steps at 0')
        _check_streaming(self)

    def run_steps(self, pairs: int) -> int:
        """Optimisation steps of the whole run over a training part of `pairs` (video, caption)
        pairs: `steps`, or with ``epoch_unit: pairs`` ceil(epochs x pairs / batch_size); 0 where
        the run counts epochs."""
        if self.epoch_unit == 'pairs':
            return -(-self.epochs * pairs // self.batch_size)
        return self.steps


def _check_streaming(cfg: TrainCfg) -> None:
    """The streaming settings' ranges (`train.stream`)."""
    if isinstance(cfg.streaming, bool):  # YAML 1.1 reads a bare on/off as true/false
        object.__setattr__(cfg, 'streaming', 'on' if cfg.streaming else 'off')
    if cfg.streaming not in ('auto', 'on', 'off'):
        raise ValueError(f'train.streaming must be auto, on or off, got {cfg.streaming!r}')
    if cfg.memory_budget is not None and parse_bytes(cfg.memory_budget) < 1:
        raise ValueError(f'train.memory_budget must be positive, got {cfg.memory_budget!r}')
    if cfg.shuffle_buffer < 0 or (cfg.data_workers is not None and cfg.data_workers < 0):
        raise ValueError('train.shuffle_buffer and train.data_workers must be 0 or more')


@dataclasses.dataclass(frozen=True)
class RunCfg:
    data: DataCfg
    model: ModelCfg
    train: TrainCfg

    def __post_init__(self) -> None:
        text = self.model.text
        specials = {'bert': 2, 't5': 1}.get(text.encoder, 0)  # BERT's [CLS] and [SEP], T5's EOS
        if self.data.max_words <= specials:
            raise ValueError(f'data.max_words {self.data.max_words} leaves no word of a caption: '
                             f'{text.encoder} takes {specials} of its tokens for its own; give {specials + 1} or more')
        if text.encoder in ('bert', 'gpt') and text.weights == 'random' and self.data.max_words > text.max_positions:
            raise ValueError(f'data.max_words {self.data.max_words} is more than text.max_positions '
                             f'{text.max_positions}, the positions the {text.encoder} built here has')
        if self.train.epoch_unit == 'pairs' and self.data.sample != 'video':
            raise ValueError(f'train.epoch_unit pairs counts the captions of whole videos; data.sample '
                             f'{self.data.sample} draws windows or segments: use train.epoch_unit videos '
                             '(or train.steps)')


def load_run_cfg(path: str | Path, overrides: dict[str, Any] | None = None) -> RunCfg:
    """A run config from YAML (`yaml.safe_load`), with dotted-key overrides."""
    return load_yaml(RunCfg, path, overrides)


def read_saved(path: Path) -> dict[str, Any]:
    """A run directory's config.yaml as plain data, as today's configs write it (`upgrade_saved`)."""
    saved = read_yaml(path) or {}
    if not isinstance(saved, dict):
        raise ConfigError(f'{path}: not a run config (expected a mapping)')
    if isinstance(saved.get('model'), dict):
        saved['model'] = upgrade_saved(saved['model'])
    return saved


def saved_run_cfg(run_dir: Path) -> RunCfg:
    """The config a run directory was trained with (its config.yaml; the seed left out)."""
    raw = read_saved(run_dir / 'config.yaml')
    raw.pop('seed', None)
    return from_dict(RunCfg, raw, where=str(run_dir / 'config.yaml'))


#: settings a resumed run may change: more epochs (or steps) continue the same run; how the step runs, how
#: often the loss is read and how many processes read the stores (or a cache) leave the results as
#: they were, up to the float sums of the step's threads (`train.stream.step_threads`);
#: a memory budget that moves the training part between memory and streaming changes the data
#: order (the run's first lines say which path it took); the std over seeds is how results are printed
RESUME_MAY_CHANGE = ('train.epochs', 'train.steps', 'train.compile', 'train.log_every', 'train.checkpoint_every',
                     'train.checkpoint_steps', 'train.seed_std', 'train.device_data', 'train.memory_budget',
                     'train.data_workers', 'train.stream_cache', 'train.stream_cache_dir')


def settings_changed(run_dir: Path, settings: dict[str, Any], may_change: tuple[str, ...] = RESUME_MAY_CHANGE
                     ) -> list[str]:
    """The settings of a run with a checkpoint that `settings` would change, other than
    `may_change` (by default those a resumed run may change), each as 'key: then there, now now';
    none for a run with no checkpoint."""
    saved = run_dir / 'config.yaml'
    if not (saved.is_file() and (run_dir / 'checkpoints' / 'last.pt').is_file()):
        return []
    before, now = flat_settings(_with_defaults(read_saved(saved))), flat_settings(settings)
    return [f'{k}: {before.get(k)!r} there, {now.get(k)!r} now' for k in sorted(set(before) | set(now))
            if k not in may_change and before.get(k) != now.get(k)]


def check_resumable(run_dir: Path, settings: dict[str, Any]) -> None:
    """A run with a checkpoint is resumed only with the settings it was trained with, so that one
    run never mixes two configs (its config.yaml and results would name only the second)."""
    diff = settings_changed(run_dir, settings)
    if diff:
        raise ConfigError(f'{run_dir} holds a run trained with other settings ({"; ".join(diff[:5])}'
                          f'{f"; and {len(diff) - 5} more" if len(diff) > 5 else ""}): rerun with its config to '
                          'resume it, or pass another --run-dir to start a new run')


def _with_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved run config with the settings added to RunCfg since then at their defaults (which
    keep the earlier behaviour), so that those runs still resume; as saved if it no longer loads."""
    rest = {k: v for k, v in saved.items() if k != 'seed'}
    try:
        full = yaml.safe_load(yaml.safe_dump(to_dict(from_dict(RunCfg, rest)), sort_keys=False))
    except (ValueError, TypeError):  # ConfigError included: a setting since removed or renamed
        return saved
    return {**full, **({'seed': saved['seed']} if 'seed' in saved else {})}


def flat_settings(d: dict[str, Any], prefix: str = '') -> dict[str, Any]:
    """Nested settings as one level of dotted keys: ``{'train': {'lr': 1}}`` -> ``{'train.lr': 1}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat_settings(v, f'{prefix}{k}.'))
        else:
            out[f'{prefix}{k}'] = v
    return out
