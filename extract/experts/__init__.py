"""The expert registry: `create_expert(name, **overrides)` is the only way to build an expert.

Names are ``family`` for the default model of a family (``object``, ``action``, ``scene``, ...)
and ``family.variant`` for alternatives (``object.resnet152``); a store is named after the
expert that wrote it.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

from extract.experts._base import Expert, ExpertCfg
from shared.config import ConfigError, _coerce
from shared.registry import Registry

__all__ = ['EXPERTS', 'Expert', 'ExpertCfg', 'create_expert', 'build_expert', 'expert_names', 'resolve_expert_names', 'FAMILIES']

#: name -> factory(**overrides) -> Expert
EXPERTS: Registry[Callable[..., Expert]] = Registry('expert')

#: the seven expert families; `all` extracts their default models
FAMILIES = ('object', 'action', 'scene', 'audio', 'face', 'ocr', 'speech')


def _import_all() -> None:
    from extract.experts import action, audio, face, object, ocr, scene, speech  # noqa: F401  (register)


def expert_names() -> list[str]:
    _import_all()
    return EXPERTS.names()


def resolve_expert_names(spec: str) -> list[str]:
    """``all``, one name, or a comma list -> registered names (unknown ones are an error)."""
    _import_all()
    names = [n.strip() for n in spec.split(',') if n.strip()]
    if not names:  # `--expert ''` (an unset make variable): no expert ran into an empty run's traceback
        raise KeyError(f'no expert named in {spec!r}: give one, a comma list, or all (python -m extract --list)')
    if names == ['all']:
        return [f for f in FAMILIES if f in EXPERTS]
    for n in names:
        EXPERTS.get(n)  # raises KeyError with close matches
    if len(set(names)) != len(names):
        raise KeyError(f'expert listed twice in {spec!r}')
    return names


def apply_overrides(cfg: ExpertCfg, overrides: dict[str, Any], where: str) -> ExpertCfg:
    """`cfg` with `overrides` (typed like the field); unknown keys raise ConfigError."""
    import typing

    fields = {f.name: f for f in dataclasses.fields(cfg)}
    hints = typing.get_type_hints(type(cfg))
    clean = {}
    for key, value in overrides.items():
        if value is None:  # timm's rule: None means "keep the default"
            continue
        if key not in fields:
            raise ConfigError(f'{where}: unknown setting {key!r} (known: {", ".join(sorted(fields))})')
        if isinstance(value, (int, float, str)) and hints[key] in (tuple[int, ...], tuple[float, ...], tuple[str, ...]):
            value = [value]
        clean[key] = _coerce(hints[key], value, f'{where}.{key}')
    try:
        return dataclasses.replace(cfg, **clean)
    except (TypeError, ValueError) as err:
        raise ConfigError(f'{where}: {err}') from err


def build_expert(cls: type[Expert], default_cfgs: dict[str, ExpertCfg], name: str, overrides: dict[str, Any]) -> Expert:
    """`cls` for registry name `name`, its default cfg with `overrides` applied (each module's factories)."""
    return cls(name, apply_overrides(default_cfgs[name], overrides, name))


def create_expert(name: str, **overrides: Any) -> Expert:
    """Build (not load) expert `name` with cfg `overrides` (``weights='random'``, ``fps=2``...)."""
    _import_all()
    return EXPERTS.get(name)(**overrides)
