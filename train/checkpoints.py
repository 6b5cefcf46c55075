"""Model checkpoints of a run: the trained weights per checkpoint, frozen feature extractors once.

CE's frozen GPT is 466 MB of weights that training never changes. Saved in every checkpoint it
would be written again each epoch (last.pt) and kept twice (last.pt, best.pt); instead it is
written once per run, to checkpoints/frozen.pt, and joined back when a checkpoint is loaded.
Checkpoints written before this split (every weight in one file) load as they are.

Checkpoints from before per-expert modules were keyed by expert name (`ModuleList` positions,
one `Linear`/`Embedding` row per expert) load too: their keys are renamed by the model's own
expert order (`by_expert_name`).

Every file is written whole or not at all (`shared.files.atomic_save`): a run killed while it
saves keeps the previous checkpoint, so its rerun resumes. A file that still cannot be read (a
copy cut short, a damaged disk) is a `CheckpointError` naming it and what to do.
"""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shared.config import ConfigError
from shared.files import atomic_save, compressed_record
from train.models.base import RetrievalModel
from train.models.layers import PerExpertRows

__all__ = ['FROZEN', 'GALLERY', 'FINAL', 'CheckpointError', 'save_checkpoint', 'load_checkpoint', 'load_model', 'load_gallery',
           'by_expert_name']

FROZEN = 'frozen.pt'
#: a finished run's test videos embedded once, for search
GALLERY = 'gallery.pt'
#: a finished run trained on a split without a test part (pretraining): the checkpoint it ended with
FINAL = 'final.json'
_GALLERY_KEYS = {'video_ids': list, 'emb': torch.Tensor, 'available': torch.Tensor, 'checkpoint': str}


def _frozen_keys(model: RetrievalModel) -> set[str]:
    """State-dict keys of the model's frozen feature extractors."""
    frozen = {id(m) for m in model.feature_extractors()}
    prefixes = [f'{name}.' for name, m in model.named_modules() if id(m) in frozen]
    return {k for k in model.state_dict() if any(k.startswith(p) for p in prefixes)}


def save_checkpoint(model: RetrievalModel, path: Path, **extra: Any) -> None:
    """`path` gets the model's trained weights and `extra`; the frozen ones go to frozen.pt beside
    it, the first time only."""
    state = model.state_dict()
    frozen = _frozen_keys(model)
    if frozen and not (path.parent / FROZEN).is_file():
        atomic_save({k: state[k] for k in sorted(frozen)}, path.parent / FROZEN)
    atomic_save({'model': {k: v for k, v in state.items() if k not in frozen}, **extra}, path)


class CheckpointError(ConfigError):
    """A checkpoint file that cannot be read."""


def _read(path: Path, map_location: Any, advice: str | None = None, what: str = 'checkpoint',
          mmap: bool = False) -> dict[str, Any]:
    advice = advice or _advice(path)
    if path.exists() and not path.is_file():  # a device or a FIFO (a link to one): torch.load reads it for ever
        raise CheckpointError(f'{what} {path} is not a regular file. {advice}')
    packed = compressed_record(path)
    if packed:
        raise CheckpointError(f'{what} {path} holds a compressed record ({packed}), which torch.save never writes: '
                              'it was not saved by torch (a 1000-fold inflation of a few MB can fill the memory). '
                              f'{advice}')
    try:
        try:
            state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
        except (RuntimeError, OSError, ValueError):
            if not mmap:
                raise
            # a file torch cannot map (the legacy format, a file system without mmap) may still read
            state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as err:
        # torch's messages run to several sentences of advice: the first says what is wrong
        reason = (str(err).strip().split('. ')[0].splitlines() or [''])[0][:160] or type(err).__name__
        raise CheckpointError(f'{what} {path} cannot be read ({reason}): it was cut short or damaged. {advice}') from None
    plain = path.name in (FROZEN, GALLERY)  # weights alone, or a gallery: no 'model' entry
    if not isinstance(state, dict) or (not plain and not isinstance(state.get('model'), dict)):
        raise CheckpointError(f'{path} is not a checkpoint of this project. {advice}')
    # every weight a tensor: a number in its place was an AttributeError (no .shape) out of --init-from
    weights = state if path.name == FROZEN else {} if path.name == GALLERY else state['model']
    odd = next((k for k, v in weights.items() if not isinstance(v, torch.Tensor)), None)
    if odd is not None:
        raise CheckpointError(f'{path} is not a checkpoint of this project (its weight {str(odd)[:80]!r} is a '
                              f'{type(weights[odd]).__name__}, not a tensor). {advice}')
    return state


def _advice(path: Path) -> str:
    if path.name == FROZEN:  # the other checkpoints of the run need it
        return (f'Put back a good copy, or delete {path.parent} and rerun: the run trains again from its first '
                'epoch')
    return 'Put back a good copy, or delete it and rerun (without last.pt the run trains again from its first epoch)'


def load_checkpoint(path: Path, map_location: Any = 'cpu', advice: str | None = None, mmap: bool = False
                    ) -> dict[str, Any]:
    """A checkpoint with its model state made whole again (the frozen weights joined back); `mmap`:
    its tensors mapped from the file, not read (a check that it loads costs no more than its pickle).

    Raises:
        CheckpointError: the checkpoint or frozen.pt cannot be read; `advice`: what to do then, where
            the checkpoint is no file of the run itself (by default, put back or delete it and rerun).
    """
    state = _read(path, map_location, advice, mmap=mmap)
    frozen = path.parent / FROZEN
    if frozen.is_file():
        state['model'] = {**_read(frozen, map_location, advice, mmap=mmap), **state['model']}
    return state


def load_model(model: RetrievalModel, path: Path, map_location: Any = 'cpu', misfit: str | None = None
               ) -> dict[str, Any]:
    """Load a checkpoint's weights into `model` (every key must match); returns the checkpoint.

    Raises:
        CheckpointError: the checkpoint cannot be read, or its weights do not fit `model` (a run's
            config.yaml edited since, or a checkpoint of another model put in its place; `misfit`:
            what to do then, where the caller knows better).
    """
    state = load_checkpoint(path, map_location)
    try:
        model.load_state_dict(by_expert_name(state['model'], model))
    except RuntimeError as err:
        # torch lists every mismatched key over many lines: the first names the kind of mismatch
        detail = next((ln.strip() for ln in str(err).splitlines()[1:] if ln.strip()), str(err))[:160]
        raise CheckpointError(f'{path} does not fit the {type(model).__name__} model its run\'s config.yaml '
                              f'describes ({detail}): ' + (misfit or 'put back the config.yaml the run was trained '
                              'with (or the checkpoint of this config), or train the run again')) from None
    return state


def by_expert_name(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """`state` with the keys of positional per-expert weights (saved before they were keyed by
    expert name) renamed as `model` keys them: ``video_gem.0.fc.weight`` -> ``video_gem.object.fc.weight``
    (the i-th entry of a `ModuleDict`), and an (M, ...) ``mixture.weight`` split into
    ``mixture.weight.object`` ... (the rows of an `PerExpertRows`). Keys the model has stay as they are."""
    have = model.state_dict()
    dicts = {name: list(m.keys()) for name, m in model.named_modules() if isinstance(m, nn.ModuleDict)}
    rows = {f'{name}.{part}': list(getattr(m, part).keys()) for name, m in model.named_modules()
            if isinstance(m, PerExpertRows) for part in ('weight', 'bias') if getattr(m, part) is not None}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in have:
            out[key] = value
        elif key in rows and value.shape[0] == len(rows[key]):
            for i, k in enumerate(rows[key]):
                out[f'{key}.{k}'] = value[i] if value.ndim > 1 else value[i:i + 1]
        else:
            parts = key.split('.')  # the ModuleDict whose i-th entry this is
            for j in range(len(parts) - 1):
                name, index = '.'.join(parts[:j]), parts[j]
                if name in dicts and index.isdigit() and int(index) < len(dicts[name]):
                    key = '.'.join([*parts[:j], dicts[name][int(index)], *parts[j + 1:]])
                    break
            out[key] = value
    return out


def load_gallery(run_dir: Path) -> dict[str, Any]:
    """A finished run's gallery.pt (video_ids, emb, available, checkpoint).

    Raises:
        CheckpointError: it cannot be read or is not a gallery; rerunning the training command
            writes it again from the run's checkpoint.
    """
    path = run_dir / GALLERY
    advice = 'Rerun the training command of this run: it writes gallery.pt again from its checkpoint'
    state = _read(path, 'cpu', advice, 'gallery')
    wrong = [k for k, t in _GALLERY_KEYS.items() if not isinstance(state.get(k), t)]
    if not wrong and not state['emb'].is_floating_point():  # integers: torch's dtype error out of the search
        wrong = ['emb of whole numbers']
    if wrong or not (len(state['video_ids']) == len(state['emb']) == len(state['available'])):
        raise CheckpointError(f'{path} is not a gallery of this project ({", ".join(wrong) or "lengths differ"}). '
                              f'{advice}')
    return state
