"""Model checkpoints of a run: the trained weights per checkpoint, frozen feature extractors once.

CE's frozen GPT is 466 MB of weights that training never changes. Saved in every checkpoint it
would be written again each epoch (last.pt) and kept twice (last.pt, best.pt); instead it is
written once per run, to checkpoints/frozen.pt, and joined back when a checkpoint is loaded.
Checkpoints written before this split (every weight in one file) load as they are.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from train.models.base import RetrievalModel

__all__ = ['FROZEN', 'save_checkpoint', 'load_checkpoint', 'load_model']

FROZEN = 'frozen.pt'


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
        tmp = path.parent / f'{FROZEN}.tmp'
        torch.save({k: state[k] for k in sorted(frozen)}, tmp)
        tmp.replace(path.parent / FROZEN)  # whole or absent: a resumed run never reads half a file
    torch.save({'model': {k: v for k, v in state.items() if k not in frozen}, **extra}, path)


def load_checkpoint(path: Path, map_location: Any = 'cpu') -> dict[str, Any]:
    """A checkpoint with its model state made whole again (the frozen weights joined back)."""
    state = torch.load(path, map_location=map_location, weights_only=True)
    frozen = path.parent / FROZEN
    if frozen.is_file():
        state['model'] = {**torch.load(frozen, map_location=map_location, weights_only=True), **state['model']}
    return state


def load_model(model: RetrievalModel, path: Path, map_location: Any = 'cpu') -> dict[str, Any]:
    """Load a checkpoint's weights into `model` (every key must match); returns the checkpoint."""
    state = load_checkpoint(path, map_location)
    model.load_state_dict(state['model'])
    return state
