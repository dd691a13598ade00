"""Typed configs: nested dataclasses loaded from YAML, with dotted command-line overrides.

Each stage defines a dataclass tree; ``load_config(StageConfig, path, ["--a.b", "3"])``
reads the YAML (composed with the config it starts from, ``base: NAME``), applies overrides
and checks every value against the field's type, so a typo or a wrong type is a one-line
error naming the file, the field and what was expected.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml

from pipeline.errors import SemoreError
from semore.checks import INT64_MAX, CheckError, show

T = TypeVar("T")


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping, with one-line errors for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise SemoreError(f"config file {path} not found: expected a YAML file")
    try:
        data = yaml.safe_load(path.read_text())
    except ValueError:  # an int past Python's 4300-digit limit
        raise SemoreError(
            f"config file {path} holds a number of more than 4300 digits: expected a mapping "
            "of values in range"
        ) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise SemoreError(
            f"config file {path} is not valid YAML{where}: expected a mapping"
        ) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SemoreError(f"config file {path} holds a {type(data).__name__}: expected a mapping")
    return data


def parse_overrides(args: list[str]) -> dict:
    """Turn ``["--trainer.max_steps", "5", "--carla.server-cmd=x"]`` into a nested dict."""
    nested: dict = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) < 3:
            raise SemoreError(f"unexpected argument {arg!r}: expected --section.field VALUE")
        name, sep, value = arg[2:].partition("=")
        if not sep:
            if i + 1 >= len(args) or args[i + 1].startswith("--"):
                raise SemoreError(f"option --{name} needs a value")
            value = args[i + 1]
            i += 1
        i += 1
        node = nested
        parts = name.replace("-", "_").split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = _yaml_value(name, value) if value != "" else ""
    return nested


def _yaml_value(name: str, text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except (yaml.YAMLError, ValueError):  # ValueError: an int past Python's 4300 digits
        raise SemoreError(
            f"option --{name} is {show(text)}: expected a YAML value (numbers of at most "
            "4300 digits)"
        ) from None


def merge(base: dict, update: dict) -> dict:
    """Recursively merge ``update`` into a copy of ``base``."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def flatten(tree: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (the dotted names of ``--a.b`` overrides)."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def override_flags(overrides: dict) -> list[str]:
    """The ``--a.b VALUE`` command-line form of a nested overrides dict (inverse of
    :func:`parse_overrides`): strings as they are, other values as JSON."""
    flags = []
    for name, value in flatten(overrides).items():
        flags += [f"--{name}", value if isinstance(value, str) else json.dumps(value)]
    return flags


def from_dict(cls: type[T], data: dict, where: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``, checking names and types recursively."""
    if not isinstance(data, dict):
        raise SemoreError(f"{where} is a {type(data).__name__}: expected a mapping")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    data = _without_retired(cls, data, where)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise SemoreError(
            f"{where}: unknown field {unknown[0]!r}: expected one of {', '.join(sorted(fields))}"
        )
    kwargs = {name: _coerce(hints[name], value, f"{where}.{name}") for name, value in data.items()}
    try:
        built = cls(**kwargs)
    except CheckError as err:  # a range check of cls.__post_init__: name the field in the file
        raise SemoreError(str(err.under(where))) from None
    except (ValueError, TypeError) as err:
        raise SemoreError(f"{where}: {err}") from None
    for name, value in kwargs.items():  # a field its class leaves unchecked (none should)
        if _wider_than_64_bits(value):
            raise SemoreError(f"{where}.{name} is {show(value)}: expected a 64-bit integer")
    return built


def _wider_than_64_bits(value: Any) -> bool:
    """An int (or a list holding one) that no tensor, array or seed can hold."""
    if isinstance(value, (list, tuple)):
        return any(_wider_than_64_bits(item) for item in value)
    return isinstance(value, int) and abs(value) > INT64_MAX


# Class attribute of a config dataclass: {name: value} of fields it no longer has, each with
# the one value it could take. A config or a checkpoint saved with such a field still loads
# when it holds that value (it meant what the code now always does); any other value is an
# error, since the code can no longer do what it asks.
RETIRED = "RETIRED"


def _without_retired(cls: type, data: dict, where: str) -> dict:
    retired = getattr(cls, RETIRED, {})
    for name in sorted(set(data) & set(retired)):
        if data[name] != retired[name]:
            raise SemoreError(
                f"{where}.{name} is {data[name]!r}: the field was removed (it could only be "
                f"{retired[name]!r}); expected it left out"
            )
    return {k: v for k, v in data.items() if k not in retired}


# Presets ship inside the package (pipeline/presets/<stage>/<name>.yaml), so an installed
# wheel has them; the repository's top-level configs/ is a link to the same folder.
PRESETS_DIR = "presets"


def preset_names(stage: str = "") -> list[str]:
    """Names of the presets of ``stage`` ("" = the ``semore-run`` presets)."""
    folder = resources.files("pipeline").joinpath(PRESETS_DIR, *([stage] if stage else []))
    if not folder.is_dir():
        return []
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def resolve_config(value: str | Path, stage: str = "") -> Path:
    """A YAML path as given, or the packaged preset of ``stage`` called ``value``."""
    path = Path(value)
    if path.is_file():
        return path
    if path.suffix not in (".yaml", ".yml") and len(path.parts) == 1:
        preset = resources.files("pipeline").joinpath(
            PRESETS_DIR, *([stage] if stage else []), f"{value}.yaml"
        )
        if preset.is_file():
            return Path(str(preset))
    names = ", ".join(preset_names(stage)) or "none"
    raise SemoreError(
        f"config file {value} not found: expected a YAML file or one of the "
        f"{stage or 'semore-run'} presets ({names})"
    )


# A config that starts from another names it under this key: a YAML file beside it (NAME.yaml
# or a path relative to its folder), else a preset of the same stage.
BASE_KEY = "base"


def compose(data: dict, base: dict) -> dict:
    """``data`` laid over ``base`` (the rules of ``base:``, see :func:`load_config`)."""
    out = dict(base)
    for key, value in data.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict):
            below = out.get(key)
            out[key] = compose(value, below if isinstance(below, dict) else {})
        else:
            out[key] = value
    return out


def _base_path(base: object, path: Path, stage: str) -> Path:
    if not isinstance(base, str) or not base:
        raise SemoreError(f"{path}: {BASE_KEY} is {base!r}: expected a preset name or a YAML path")
    for beside in (path.parent / base, path.parent / f"{base}.yaml"):
        if beside.is_file():
            return beside
    return resolve_config(base, stage)


def load_composed(path: Path, stage: str = "", seen: tuple[Path, ...] = ()) -> dict:
    """The YAML mapping at ``path`` composed with the chain of configs it starts from."""
    data = load_yaml(path)
    if BASE_KEY not in data:
        return data
    base = _base_path(data.pop(BASE_KEY), path, stage)
    chain = (*seen, path.resolve())
    if base.resolve() in chain:
        names = " -> ".join(p.stem for p in (*chain, base))
        raise SemoreError(f"{path}: {BASE_KEY} goes round in a circle ({names}): expected a chain")
    return compose(data, load_composed(base, stage, chain))


def load_config(
    cls: type[T], path: str | Path | None, overrides: list[str] | dict = (), stage: str = ""
) -> T:
    """Load ``cls`` from a YAML file or ``stage`` preset (defaults when None) plus overrides.

    A config may start from another: ``base: NAME`` (a YAML file beside it, ``NAME`` or
    ``NAME.yaml``, else the preset NAME of ``stage``) takes NAME's config, itself composed the
    same way, and lays this file over it:

    - a mapping merges key by key, at any depth: a study's ``arms``, ``encoders``,
      ``overrides``, an arm's own ``overrides``, a ``dataset`` or ``launcher`` section;
    - any other value (a number, a string, a list such as ``seeds``) replaces the base's;
    - a key set to null removes the base's key: an arm or encoder leaves the study, an
      override goes back to the fine-tune preset's value, a field to its default (so a config
      with a base cannot set a field to null; one without a base can);
    - keys keep the base's order, and keys new in this file follow it.

    Command-line ``overrides`` then apply as they do to any config (a null there is a null).
    """
    if path is not None:
        path = resolve_config(path, stage)
    data = load_composed(path, stage) if path is not None else {}
    extra = overrides if isinstance(overrides, dict) else parse_overrides(list(overrides))
    return from_dict(cls, merge(data, extra), where=str(path) if path else "config")


def to_dict(cfg: Any) -> dict:
    """The plain-dict form of a config, for manifests and checkpoints."""
    return dataclasses.asdict(cfg)


# Field metadata key: a --resume (or a rerun that extends a dataset) may change this field,
# because it says how much, where or how fast work is done, not what the work produces.
RESUME_MAY_CHANGE = "resume_may_change"


def resumable(**kwargs: Any) -> Any:
    """``dataclasses.field(**kwargs)`` marked as a field a resume may change."""
    return dataclasses.field(metadata={RESUME_MAY_CHANGE: True}, **kwargs)


def content_of(cls: type, data: dict) -> dict:
    """``data`` (the dict form of config class ``cls``) without the fields marked
    :func:`resumable`, at any depth. Keys ``cls`` does not know are kept, so a config saved by
    another version compares as different instead of failing.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    out = {}
    for name, value in data.items():
        f = fields.get(name)
        if f is not None and f.metadata.get(RESUME_MAY_CHANGE):
            continue
        tp = hints.get(name)
        nested = f is not None and dataclasses.is_dataclass(tp) and isinstance(value, dict)
        out[name] = content_of(tp, value) if nested else value
    return out


def content_dict(cfg: Any) -> dict:
    """The fields of ``cfg`` that decide what a run produces: equal content dicts make the
    same data, models or agents, so manifests hash this and a resume compares it."""
    return content_of(type(cfg), to_dict(cfg))


def first_difference(before: dict, now: dict) -> tuple[str, Any, Any] | None:
    """The first dotted field (sorted) whose value differs: ``(name, before, now)``, or None."""
    old, new = flatten(before), flatten(now)
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            return key, old.get(key), new.get(key)
    return None


_FLOAT_MAX = 1e300  # a float() of a bigger int is inf, or an OverflowError


def _float_or_none(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where)
            except SemoreError as err:
                errors.append(str(err))
        raise SemoreError(errors[0] if errors else f"{where} must not be null")
    if origin is typing.Literal:
        if value not in args:
            allowed = ", ".join(repr(a) for a in args)
            raise SemoreError(f"{where} is {value!r}: expected one of {allowed}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise SemoreError(f"{where} is {value!r}: expected a list")
        item = args[0] if args else Any
        items = [_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise SemoreError(f"{where} is {value!r}: expected a mapping")
        item = args[1] if len(args) == 2 else Any
        return {k: _coerce(item, v, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise SemoreError(f"{where} is {value!r}: expected true or false")
        return value
    if tp is int:  # its range is checked by the field's config class (see from_dict)
        if isinstance(value, bool) or not isinstance(value, int):
            raise SemoreError(f"{where} is {show(value)}: expected an integer")
        return value
    if tp is float:
        # YAML 1.1 reads 3e-5 (no dot) as a string; accept any string Python reads as a number.
        number = _float_or_none(value) if isinstance(value, str) else value
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            raise SemoreError(f"{where} is {show(value)}: expected a number")
        if abs(number) > _FLOAT_MAX or not math.isfinite(number):
            raise SemoreError(f"{where} is {show(value)}: expected a finite number")
        return float(number)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise SemoreError(f"{where} is {value!r}: expected a string")
        return str(value)
    return value
