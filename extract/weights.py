"""Weight resolution for experts, in the order of DESIGN.md.

A weight spec (an expert cfg's `weights`, or `--weights`) is one of:

- ``random``: random initialisation, only when asked for; recorded in the store and warned about.
- a path (``/models/x.pth``, ``./x.pth``, ``~/x.pth``): that file, which must exist.
- ``file:NAME``: NAME in the weights directory (``$VIDEOEXPERTS_WEIGHTS_DIR``, default
  ``~/.cache/videoexperts/weights``), for checkpoints no library distributes (Places365, IG65M).
- ``url:URL``, ``torchvision:ENUM`` (e.g. ``ResNet152_Weights.IMAGENET1K_V1``), ``timm:NAME.TAG``: the
  library's own cache (torch hub's ``checkpoints/`` or the Hugging Face hub cache), downloaded
  there when missing unless ``$VIDEOEXPERTS_OFFLINE`` or ``$HF_HUB_OFFLINE`` is set.

When nothing is found the error names the file, the directory it is looked for in and where it
comes from. Files are loaded with ``torch.load(weights_only=True)``; their sha256 goes into the store.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from shared.config import offline, weights_dir
from shared.files import compressed_record, sha256_file

__all__ = ['WeightsError', 'ResolvedWeights', 'resolve_weights', 'load_state_dict', 'torch_file', 'weights_dir', 'offline',
           'sha256_file']


class WeightsError(RuntimeError):
    """Weights were asked for but cannot be found or read."""


@dataclasses.dataclass(frozen=True)
class ResolvedWeights:
    """Where an expert's weights come from: `random`, or a file with its checksum."""

    spec: str
    path: Path | None = None
    sha256: str = ''

    @property
    def random(self) -> bool:
        return self.spec == 'random'

    @property
    def source(self) -> str:
        """What the store records: ``random``, or the spec and the file it resolved to."""
        if self.random:
            return 'random'
        return self.spec if self.path is None or str(self.path) == self.spec else f'{self.spec} ({self.path})'


def _is_path(spec: str) -> bool:
    return spec.startswith(('/', './', '../', '~')) or os.sep in spec and ':' not in spec.split(os.sep)[0]


def _from_url(url: str, spec: str) -> Path:
    import torch.hub

    directory = Path(torch.hub.get_dir()) / 'checkpoints'
    path = directory / os.path.basename(url.split('?')[0])
    if path.is_file():
        return path
    if not offline():
        try:
            directory.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(url, str(path), progress=True)
            return path
        except Exception as err:  # noqa: BLE001 - any download failure ends in the same advice
            reason = f'download failed ({type(err).__name__}: {err})'
    else:
        reason = 'offline mode, no download tried'
    raise WeightsError(f'weights {spec!r} not found: put {path.name} in {directory} (from {url}), '
                       f'or pass --weights PATH; {reason}')


def _from_hf(repo_id: str, spec: str) -> Path:
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    for fname in ('model.safetensors', 'pytorch_model.bin'):
        cached = try_to_load_from_cache(repo_id, fname)
        if isinstance(cached, str):
            return Path(cached)
    reason = 'offline mode, no download tried'
    if not offline():
        try:
            return Path(hf_hub_download(repo_id, 'model.safetensors'))
        except Exception as err:  # noqa: BLE001
            reason = f'download failed ({type(err).__name__})'
    raise WeightsError(f'weights {spec!r} not found in the Hugging Face cache: run '
                       f'`huggingface-cli download {repo_id}` on a machine with internet and copy the cache '
                       f'(HF_HOME), or pass --weights PATH; {reason}')


def resolve_weights(spec: str, origin: str = '') -> ResolvedWeights:
    """Find the file behind a weight spec (see the module docstring); `random` needs no file.

    Args:
        spec: the weight spec.
        origin: where the file can be had, named in the error when it is missing.
    """
    if spec == 'random':
        return ResolvedWeights('random')
    if spec.startswith('file:'):
        path = weights_dir() / spec[len('file:'):]
        if not path.is_file():
            where = f' (from {origin})' if origin else ''
            raise WeightsError(f'weights file {path.name} not found in {path.parent}: put it there{where} '
                               '(or set $VIDEOEXPERTS_WEIGHTS_DIR), or pass --weights PATH')
    elif spec.startswith('url:'):
        path = _from_url(spec[len('url:'):], spec)
    elif spec.startswith('torchvision:'):
        import torchvision.models as tvm

        enum_name, _, member = spec[len('torchvision:'):].partition('.')
        try:
            url = getattr(getattr(tvm, enum_name), member).url
        except AttributeError:
            try:
                import torchvision.models.video as tvv
                url = getattr(getattr(tvv, enum_name), member).url
            except AttributeError:
                raise WeightsError(f'unknown torchvision weights {spec!r}') from None
        path = _from_url(url, spec)
    elif spec.startswith('timm:'):
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(spec[len('timm:'):])
        if cfg is None:
            raise WeightsError(f'unknown timm weights {spec!r}')
        if cfg.hf_hub_id:
            path = _from_hf(cfg.hf_hub_id, spec)
        elif cfg.url:
            path = _from_url(cfg.url, spec)
        else:
            raise WeightsError(f'timm weights {spec!r} have no download location')
    elif _is_path(spec) or spec.endswith(('.pth', '.pt', '.tar', '.bin', '.safetensors', '.ckpt')):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise WeightsError(f'weights file {path} not found')
    else:
        raise WeightsError(f'cannot read weight spec {spec!r}: use random, a path, file:NAME, url:URL, '
                           'torchvision:ENUM.MEMBER or timm:NAME.TAG')
    return ResolvedWeights(spec, path, sha256_file(path))


def torch_file(path: Path) -> Any:
    """What a torch.save file holds, read with ``weights_only=True`` on the CPU; a zip file with a
    compressed record (torch.save writes none; torch.load inflates one whole, 1000-fold for zeros)
    is a WeightsError, unread."""
    import torch

    packed = compressed_record(path)
    if packed:
        raise WeightsError(f'{path} holds a compressed record ({packed}), which torch.save never writes: refused '
                           'unread (it would be inflated whole in memory); save its state dict with torch.save')
    return torch.load(str(path), map_location='cpu', weights_only=True)


def load_state_dict(path: Path) -> dict[str, Any]:
    """A state dict from a checkpoint file, safely (`weights_only=True`; safetensors too).

    Common wrappers are unpacked: ``{'state_dict': ...}``, ``{'model': ...}``, and the
    ``module.`` prefix that DataParallel adds.
    """
    if path.suffix == '.safetensors':
        from safetensors.torch import load_file

        sd: Any = load_file(str(path))
    else:
        try:
            sd = torch_file(path)
        except WeightsError:
            raise
        except Exception as err:  # noqa: BLE001 - unpickling errors have many types
            raise WeightsError(f'cannot read {path} as a weights-only checkpoint ({err}); whole pickled '
                               'models are refused: convert them to a state dict first') from err
    for key in ('state_dict', 'model', 'model_state'):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise WeightsError(f'{path} holds no state dict')
    return {(k[len('module.'):] if k.startswith('module.') else k): v for k, v in sd.items()}
