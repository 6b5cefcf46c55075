"""Finished run directories on disk, as search, evaluation and fine-tuning read them: a run's
seeds, the checkpoint its test used, its model loaded with every weight."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from shared.config import ConfigError
from train.checkpoints import FINAL, GALLERY, load_gallery, load_model
from train.config import RunCfg, saved_run_cfg
from train.models import RetrievalModel, create_model, structure_only

__all__ = ['run_seeds', 'tested_checkpoint', 'LoadedRun', 'load_run']


def run_seeds(run: Path) -> list[Path]:
    """The run directories under `run`: `run` itself when it holds a config.yaml, else its
    seedN/ folders in seed order (``python -m train --seeds 0,1,2`` writes one each).

    Raises:
        ConfigError: `run` holds neither.
    """
    if (run / 'config.yaml').is_file():
        return [run]
    seeds = sorted((p.parent for p in run.glob('seed*/config.yaml')), key=lambda d: (len(d.name), d.name))
    if not seeds and not run.exists():  # most often a run not trained yet: say what writes one
        raise ConfigError(f'{run} is not a run directory: it does not exist (python -m train writes one; make demo '
                          'writes runs/demo/MODEL)')
    if not seeds:
        raise ConfigError(f'{run} is not a run directory (no config.yaml)')
    return seeds


def tested_checkpoint(run: Path, gallery: dict[str, Any] | None = None) -> Path:
    """The checkpoint a finished run was tested with: the one its gallery.pt names (`gallery`, when
    the caller has read it already: at collection scale it is large); of a run trained on a split
    without a test part (pretraining), the one it ended with (final.json).

    Raises:
        ConfigError: the run has not finished (no gallery.pt), or its gallery cannot be read.
    """
    if gallery is None and not (run / GALLERY).is_file() and (run / FINAL).is_file():
        try:
            name = json.loads((run / FINAL).read_text(encoding='utf-8')).get('checkpoint')
        except (ValueError, AttributeError):  # not JSON (UnicodeDecodeError included), or no mapping
            name = None
        return _named_checkpoint(run, FINAL, name)
    return _named_checkpoint(run, GALLERY, (gallery if gallery is not None else _gallery(run))['checkpoint'])


def _named_checkpoint(run: Path, source: str, name: Any) -> Path:
    """RUN/checkpoints/NAME, the checkpoint that the run's `source` file names; a ConfigError for a name
    that is no file name there: a run received from others may name ../../x.pt or /dev/zero, which
    torch.load would read as the run's weights (or for ever)."""
    if not isinstance(name, str) or name in ('', '.', '..') or Path(name).name != name or '\x00' in name:
        raise ConfigError(f'{run / source} names the checkpoint {name!r:.80}, which is no file name in '
                          f'{run / "checkpoints"}: rerun the training command of this run, which writes it again')
    return run / 'checkpoints' / name


def _gallery(run: Path) -> dict[str, Any]:
    if not (run / GALLERY).is_file():
        if (run / FINAL).is_file():
            raise ConfigError(f'{run} was trained on a split without a test part (pretraining): it has no '
                              f'{GALLERY} of test videos')
        raise ConfigError(f'{run} has no {GALLERY}: the run has not finished')
    return load_gallery(run)


@dataclasses.dataclass
class LoadedRun:
    """A finished run: its config, its model with the tested checkpoint's weights (eval mode), that
    checkpoint, and its gallery when asked for."""

    cfg: RunCfg
    model: RetrievalModel
    checkpoint: Path
    gallery: dict[str, Any] | None = None


def load_run(run: Path, device: torch.device | str = 'cpu', gallery: bool = False) -> LoadedRun:
    """Load the finished run in directory `run` (with its gallery.pt when `gallery`).

    Raises:
        ConfigError: its config no longer loads, it has not finished, or a file of it cannot be read.
    """
    cfg = saved_run_cfg(run)
    saved = _gallery(run) if gallery or not (run / FINAL).is_file() else None
    checkpoint = tested_checkpoint(run, saved)
    model = create_model(structure_only(cfg.model))  # checkpoint + frozen.pt: every weight
    load_model(model, checkpoint, device)
    return LoadedRun(cfg, model.to(device).eval(), checkpoint, saved if gallery else None)
