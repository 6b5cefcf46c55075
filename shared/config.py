"""Typed configs: dataclasses filled from YAML (`yaml.safe_load`), unknown keys are errors."""
from __future__ import annotations

import dataclasses
import difflib
import os
import reprlib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

__all__ = ['ConfigError', 'UnknownKeys', 'from_dict', 'load_yaml', 'read_yaml', 'to_dict', 'parse_overrides',
           'DEFAULT_DATA_ROOT', 'DEFAULT_FEATURES_ROOT', 'DATA_ROOT_ENV', 'FEATURES_ROOT_ENV', 'DATA_ROOT_HELP',
           'FEATURES_ROOT_HELP', 'data_root_default', 'features_root_default', 'weights_dir',
           'offline', 'int_at_least', 'at_least', 'brief_repr']

T = TypeVar('T')

DEFAULT_DATA_ROOT = 'data'
DEFAULT_FEATURES_ROOT = 'features'
#: the environment variables that move the roots, and the defaults as the commands' --help says them
DATA_ROOT_ENV, FEATURES_ROOT_ENV = 'VIDEOEXPERTS_DATA_ROOT', 'VIDEOEXPERTS_FEATURES_ROOT'
DATA_ROOT_HELP = f'${DATA_ROOT_ENV}, else {DEFAULT_DATA_ROOT}'
FEATURES_ROOT_HELP = f'${FEATURES_ROOT_ENV}, else {DEFAULT_FEATURES_ROOT}'


def data_root_default() -> Path:
    """`$VIDEOEXPERTS_DATA_ROOT`, else ./data."""
    return Path(os.environ.get(DATA_ROOT_ENV, DEFAULT_DATA_ROOT))


def weights_dir() -> Path:
    """Checkpoints no library distributes: `$VIDEOEXPERTS_WEIGHTS_DIR`, else ~/.cache/videoexperts/weights."""
    return Path(os.environ.get('VIDEOEXPERTS_WEIGHTS_DIR', Path.home() / '.cache' / 'videoexperts' / 'weights'))


def offline() -> bool:
    """`$VIDEOEXPERTS_OFFLINE` or `$HF_HUB_OFFLINE` is set: nothing is downloaded, a missing file fails at once."""
    return any(os.environ.get(k, '') not in ('', '0') for k in ('VIDEOEXPERTS_OFFLINE', 'HF_HUB_OFFLINE'))


def features_root_default() -> Path:
    """`$VIDEOEXPERTS_FEATURES_ROOT`, else ./features."""
    return Path(os.environ.get(FEATURES_ROOT_ENV, DEFAULT_FEATURES_ROOT))


class ConfigError(ValueError):
    """A config file or override does not fit its dataclass."""


#: how an error shows a value: bounded, since YAML aliases make a 1 KB file a list of 9**9 items
#: whose full repr (taken before any truncation) never ends
_BRIEF = reprlib.Repr()  # (keyword arguments from Python 3.12 only)
_BRIEF.maxlevel, _BRIEF.maxstring, _BRIEF.maxother = 2, 80, 80
_BRIEF.maxtuple = _BRIEF.maxlist = _BRIEF.maxdict = _BRIEF.maxset = 6


def brief_repr(value: Any) -> str:
    """`repr(value)`, cut short for an error message without building the whole of it."""
    return _BRIEF.repr(value)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(value, dict):
        return from_dict(tp, value, where)
    if dataclasses.is_dataclass(tp) and not isinstance(value, tp):
        raise ConfigError(f'{where}: expected a mapping of {tp.__name__} settings, got {brief_repr(value)}')
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where)
            except ConfigError:
                continue
        raise ConfigError(f'{where}: {brief_repr(value)} does not fit {tp}')
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f'{where}: expected a mapping, got {brief_repr(value)}')
        key_tp, value_tp = typing.get_args(tp) or (Any, Any)
        return {_coerce(key_tp, k, f'{where} key'): _coerce(value_tp, v, _join(where, k)) for k, v in value.items()}
    if origin in (list, tuple) and not isinstance(value, (list, tuple)):
        raise ConfigError(f'{where}: expected a list, got {brief_repr(value)}')
    if origin in (list, tuple):
        (arg, *_) = typing.get_args(tp) or (Any,)
        items = [_coerce(arg, v, f'{where}[{i}]') for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads 5e-05 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if tp is float and isinstance(value, float) and value != value:  # no setting means NaN; nor does it equal itself
        raise ConfigError(f'{where}: expected a finite number, got {brief_repr(value)}')
    if tp in (int, float, str, bool) and not isinstance(value, tp):
        raise ConfigError(f'{where}: expected {tp.__name__}, got {brief_repr(value)}')
    if tp is int and isinstance(value, bool):
        raise ConfigError(f'{where}: expected int, got {brief_repr(value)}')
    return value


def _join(where: str, key: object) -> str:
    """Where a setting is: `train.lr`, after a file's name `PATH: train.lr` (not `PATH.train.lr`)."""
    return f'{where}: {key}' if where.endswith(('.yaml', '.yml')) else f'{where}.{key}'


class UnknownKeys(ConfigError):
    """Settings that `where` does not have, with the close names of those it has (a typo's fix)."""

    def __init__(self, where: str, unknown: list[str], known: list[str]) -> None:
        close = [m for k in unknown for m in difflib.get_close_matches(k, known, n=1)]
        hint = f'; did you mean {", ".join(close)}?' if close else ''
        super().__init__(f'{where}: unknown keys {unknown} (known: {known}){hint}')
        self.where, self.unknown, self.known, self.close = where, unknown, known, close


def from_dict(cls: type[T], data: dict[str, Any], where: str = 'config') -> T:
    """Build dataclass `cls` from a mapping; unknown keys and wrong types raise ConfigError. A
    class with a ``resolve(data, where)`` classmethod is a family: it returns the member to build."""
    if not isinstance(data, dict):
        raise ConfigError(f'{where}: expected a mapping, got {type(data).__name__}')
    if hasattr(cls, 'resolve'):  # a family of configs: the data names its member (train's ModelCfg)
        cls = cls.resolve(data, where)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise UnknownKeys(where, unknown, sorted(fields))
    missing = [n for n, f in fields.items() if n not in data and f.init and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:  # (not Python's "__init__() missing 3 required positional arguments")
        raise ConfigError(f'{where}: {", ".join(missing)} must be given: {"it has" if len(missing) == 1 else "they have"}'
                          ' no default')
    hints = typing.get_type_hints(cls)
    kwargs = {k: _coerce(hints[k], v, _join(where, k)) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:  # ValueError: a range check in __post_init__
        path, _, section = where.rpartition(': ')
        if path and str(err).startswith(f'{section}.'):  # it names the setting itself: PATH: train.lr ...
            where = path
        raise ConfigError(f'{where}: {err}') from err


def _yaml_problem(err: yaml.YAMLError) -> str:
    """PyYAML's error in one line: the problem and where (its message spans several lines)."""
    problem = getattr(err, 'problem', None) or str(err).strip().splitlines()[0]
    mark = getattr(err, 'problem_mark', None)
    where = f' (line {mark.line + 1}, column {mark.column + 1})' if mark is not None else ''
    if isinstance(err, yaml.constructor.ConstructorError):  # safe_load met a tag such as !!python/object
        return (f'{problem}{where}: a tag that builds a Python object is refused (it can run code); write plain '
                'values')
    return f'not valid YAML: {problem}{where}'


def read_yaml(path: str | os.PathLike) -> Any:
    """A YAML file's plain data (`yaml.safe_load`); unreadable text, bad YAML and Python tags are a
    one-line ConfigError naming the file."""
    try:
        with open(path, encoding='utf-8') as f:
            return yaml.safe_load(f)
    except UnicodeDecodeError as err:
        raise ConfigError(f'{path}: not UTF-8 text (byte {err.start}): give a YAML file') from None
    except IsADirectoryError:
        raise ConfigError(f'{path} is a directory: give a YAML file') from None
    except yaml.YAMLError as err:
        raise ConfigError(f'{path}: {_yaml_problem(err)}') from None


def load_yaml(cls: type[T], path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> T:
    """Load dataclass `cls` from a YAML file, then apply dotted-key `overrides`."""
    data = read_yaml(path) or {}
    if not isinstance(data, dict):
        raise ConfigError(f'{path}: expected a mapping of settings, got {type(data).__name__}')
    for key, value in (overrides or {}).items():
        node = data
        *parents, last = key.split('.')
        for i, p in enumerate(parents):
            node = node.setdefault(p, {})
            if not isinstance(node, dict):  # train.lr.x=1: lr is a value, nothing can be set inside it
                section = '.'.join(parents[:i + 1])
                kind = 'a list' if isinstance(node, list) else 'a single value'
                raise ConfigError(f'{path}: cannot set {key}: {section} is {kind} ({brief_repr(node)[:40]}), not a '
                                  f'section of settings; set {section} itself')
        node[last] = value
    try:
        return from_dict(cls, data, where=str(path))
    except UnknownKeys as err:  # a typo in --set is the command's, not the file's: say so
        section = err.where[len(str(path)) + 2:] if err.where != str(path) else ''
        bad = [f'{section}.{u}' if section else u for u in err.unknown]
        typed = [(k, b) for k in overrides or {} for b in bad if k == b or k.startswith(f'{b}.')]
        if not typed:
            raise
        key, name = typed[0][0], typed[0][1].rsplit('.', 1)[-1]
        hint = f' did you mean {", ".join(f"{section}.{c}" if section else c for c in err.close)}?' if err.close else ''
        raise ConfigError(f'--set {key}: {section or "a run config"} has no setting {name!r};{hint} '
                          f'(its settings: {", ".join(err.known)})') from None


def to_dict(cfg: Any) -> dict[str, Any]:
    """A dataclass config as plain data (for YAML dumps and store attributes)."""
    return dataclasses.asdict(cfg)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`key=value` strings -> dict; values are parsed as YAML scalars (`fps=2` gives an int)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition('=')
        if not sep or not key:
            raise ConfigError(f'expected key=value, got {item!r}')
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw else ''
        except yaml.YAMLError as err:
            raise ConfigError(f'--set {item}: {_yaml_problem(err)}') from None
    return out


def at_least(cfg: object, low: int, *names: str, prefix: str = '') -> None:
    """Each setting `names` of `cfg` is at least `low` (ValueError naming it): a size of 0 built a model
    of empty layers that trained without error into embeddings that say nothing, a negative one
    ended in torch's traceback."""
    for name in names:
        value = getattr(cfg, name)
        if value < low:
            raise ValueError(f'{prefix}{name} must be at least {low}, got {value}')


def int_at_least(low: int) -> typing.Callable[[str], int]:
    """An argparse `type`: a whole number >= `low`, else argparse's one-line usage error naming the flag
    (`--workers 0` made a cluster with no worker, which waited for one forever)."""
    import argparse

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            raise argparse.ArgumentTypeError(f'{text!r}: give a whole number >= {low}')
        return value

    return parse
