"""Starting a run from another run's weights (`--init-from`, `train.init_from`): pretrain, then
fine-tune (MMT sec. 4.2 pretrains on HowTo100M with motion + audio and fine-tunes with 7 experts).

Parameters match by name and shape. Per-expert modules are keyed by expert name, so an expert of
both runs gets its trained weights wherever it sits in either run's expert list, and an expert the
source lacks keeps its fresh initialisation. A source saved with positional per-expert keys is
renamed by its own config's expert order (`train.checkpoints.by_expert_name`), never the new run's.
The optimiser state is not carried over. The run prints which weights were loaded, which kept their
fresh initialisation and which of the source's were dropped, and records them in init_from.json;
config.yaml records the source as the checkpoint file it resolved to.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import logging
import shutil
import zipfile
from pathlib import Path

import torch

from shared.config import ConfigError
from shared.files import atomic_write_text
from train.checkpoints import by_expert_name, load_checkpoint
from train.config import RunCfg, saved_run_cfg
from train.models import RetrievalModel, meta_model
from train.runs import run_seeds, tested_checkpoint

__all__ = ['InitReport', 'init_source', 'resolve_init', 'init_weights', 'REPORT']

_logger = logging.getLogger(__name__)

#: the record of what a run took from its source, in its run directory
REPORT = 'init_from.json'


#: what to do about a source that cannot be read: not the run's own file, whose deletion (the advice
#: for a run's last.pt) would lose the pretrained weights
_SOURCE_ADVICE = 'Give --init-from a run directory or a checkpoint this project wrote'


def init_source(spec: str) -> Path:
    """The checkpoint file that ``--init-from SPEC`` names: a checkpoint file itself, or the one a
    finished run directory was tested with (a run of several seeds: name one).

    Raises:
        ConfigError: `spec` holds no run or checkpoint; one line that says what to give.
    """
    path = Path(spec).expanduser()
    if path.is_file():
        if not zipfile.is_zipfile(path):  # torch.save's format: refused here, before the data loads
            raise ConfigError(f'--init-from {spec}: not a checkpoint (.pt); give a run directory or one of its '
                              'checkpoints/*.pt')
        return path.resolve()
    if not path.is_dir():
        what = 'not a regular file' if path.exists() else 'no such file or directory'  # /dev/zero, a FIFO
        raise ConfigError(f'--init-from {spec}: {what}; give a run directory or a checkpoint file')
    try:
        seeds = run_seeds(path)
    except ConfigError:
        raise ConfigError(f'--init-from {spec} holds no run (no config.yaml, no seedN/config.yaml); give a run '
                          'directory or a checkpoint file') from None
    if len(seeds) > 1:
        raise ConfigError(f'--init-from {spec} holds {len(seeds)} seeds ({", ".join(s.name for s in seeds)}): '
                          f'name one, e.g. --init-from {seeds[0]}')
    try:
        return tested_checkpoint(seeds[0]).resolve()
    except ConfigError as err:
        raise ConfigError(f'--init-from {spec}: {err}; give one of its checkpoints, e.g. '
                          f'{seeds[0] / "checkpoints" / "last.pt"}') from None


def resolve_init(cfg: RunCfg, run_dir: Path, write: bool = True) -> RunCfg:
    """`cfg` with ``train.init_from`` made the checkpoint file it names (what config.yaml records,
    so that a rerun naming the same source as a directory resumes). On a fresh start of a model
    with a ``words`` tokenizer, the source run's tokenizer.json is copied into `run_dir`: the text
    model's token embeddings are rows of that vocabulary (`write`: this process writes run files;
    under torchrun, rank 0 alone)."""
    if not cfg.train.init_from:
        return cfg
    source = init_source(cfg.train.init_from)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, init_from=str(source)))
    fresh = not (run_dir / 'checkpoints' / 'last.pt').is_file()
    if fresh:  # a source that cannot be read is refused now, not once every split has loaded
        load_checkpoint(source, advice=_SOURCE_ADVICE, mmap=True)
    text = cfg.model.text
    if write and text.encoder != 'word2vec' and text.tokenizer == 'words' and fresh:
        src_run = _source_run(source)
        vocab = src_run / 'tokenizer.json' if src_run is not None else None
        if vocab is not None and vocab.is_file():
            shutil.copyfile(vocab, run_dir / 'tokenizer.json')
        else:
            _logger.warning('%s has no tokenizer.json beside its run: this run fits its own word vocabulary, and '
                            'the source\'s token embeddings stand for other words', source)
    return cfg


def _source_run(checkpoint: Path) -> Path | None:
    """The run directory of RUN/checkpoints/NAME.pt, when it is one."""
    run = checkpoint.parent.parent
    return run if checkpoint.parent.name == 'checkpoints' and (run / 'config.yaml').is_file() else None


@dataclasses.dataclass
class InitReport:
    """What a run took from its source (state-dict keys).

    Attributes:
        source: the checkpoint file.
        loaded: the model's weights set from the source.
        fresh: the model's weights that kept their fresh initialisation (not in the source).
        dropped: the source's weights not used, with why (not in this model, or another shape).
    """

    source: Path
    loaded: list[str]
    fresh: list[str]
    dropped: dict[str, str]

    def lines(self, keys: list[str]) -> list[str]:
        """A printable summary: every module named once, where all its weights share a fate."""
        out = [f'initialised from {self.source}: {len(self.loaded)} of {len(keys)} weights loaded; '
               'optimiser state not carried over']
        if self.fresh:
            out.append('  kept their fresh initialisation: ' + ', '.join(_modules(self.fresh, keys)))
        if self.dropped:
            reasons = collections.defaultdict(list)
            for key, why in self.dropped.items():
                reasons[why].append(key)
            out += [f'  dropped ({why}): ' + ', '.join(_modules(k, self.loaded + list(self.dropped))) for why, k in reasons.items()]
        return out


def _modules(chosen: list[str], keys: list[str]) -> list[str]:
    """`chosen` keys named by their shortest dotted prefix under which every key of `keys` is chosen:
    ``project.face`` for all of that module's weights, ``mixture.weight.face`` for a row alone."""
    total: collections.Counter[str] = collections.Counter()
    picked: collections.Counter[str] = collections.Counter()
    for counter, group in ((total, keys), (picked, chosen)):
        for key in group:
            parts = key.split('.')
            counter.update('.'.join(parts[:j]) for j in range(1, len(parts) + 1))
    names: list[str] = []
    for key in chosen:
        parts = key.split('.')
        name = next(p for p in ('.'.join(parts[:j]) for j in range(1, len(parts) + 1)) if total[p] == picked[p])
        if name not in names:
            names.append(name)
    return names


def init_weights(model: RetrievalModel, source: Path, run_dir: Path | None = None, report: bool = True
                 ) -> InitReport:
    """Set `model`'s weights that the checkpoint `source` has under the same name with the same
    shape; print what was loaded, kept and dropped, and record it in `run_dir`/init_from.json
    (`report`: this process prints and writes; under torchrun every rank loads, rank 0 reports).

    Raises:
        CheckpointError: `source` cannot be read.
    """
    state = load_checkpoint(source, advice=_SOURCE_ADVICE)['model']
    own = model.state_dict()
    src_run = _source_run(source)
    if src_run is not None and any(k not in own for k in state):
        # positional keys of an older run follow its own expert order, not this model's
        try:
            state = by_expert_name(state, meta_model(saved_run_cfg(src_run).model))
        except (ValueError, FileNotFoundError) as err:  # its model cannot be built here: keys as saved
            _logger.warning('%s: %s; its weights match by name as saved', src_run, err)
    loaded: dict[str, torch.Tensor] = {}
    dropped: dict[str, str] = {}
    for key, value in state.items():
        if key not in own:
            dropped[key] = 'not in this model'
        elif own[key].shape != value.shape:
            dropped[key] = 'another shape'
        else:
            loaded[key] = value
    model.load_state_dict(loaded, strict=False)
    out = InitReport(source, list(loaded), [k for k in own if k not in loaded], dropped)
    if not report:
        return out
    for line in out.lines(list(own)):
        print(line)
    if run_dir is not None:
        shapes = {k: f'{tuple(v.shape)} there, {tuple(own[k].shape)} here' for k, v in state.items()
                  if dropped.get(k) == 'another shape'}
        atomic_write_text(run_dir / REPORT, json.dumps(
            {'source': str(source), 'loaded': out.loaded, 'fresh': out.fresh,
             'dropped': {k: shapes.get(k, why) for k, why in dropped.items()}}, indent=1))
    return out
