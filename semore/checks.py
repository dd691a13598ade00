"""Typed value checks: one vocabulary for config ranges and for the schemas of files read back.

A spec (``Int``, ``Float``, ``Str``, ``Bool``, ``Opt``, ``ListOf``, ``MapOf``, ``Record``,
``Either``) checks one value and says in words what it expected; a failure is a
:class:`CheckError` naming the dotted path of the value, the value and the expectation, on one
line. Config dataclasses call :func:`check_fields` from ``__post_init__``; readers of manifests,
exports and results files call ``SPEC.check(data)`` on what they parsed, before using it.

Booleans are never numbers here (``True`` is not an int of 1), numbers are finite, and every
integer range has both ends, so a value like 10**29 is refused with the range it should be in
instead of reaching torch or numpy.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Widest integer any tensor or numpy index holds; the default upper end of an Int.
INT64_MAX = 2**63 - 1
# Seeds: what numpy, torch and Lightning all take (Lightning replaces a wider one with 0).
MAX_SEED = 2**32 - 1
# Common upper ends of config values: far above any setting in use, far below what would
# overflow a tensor or hang a loop. A field with a tighter natural limit states its own.
MAX_LR = 10.0  # learning rates
MAX_WEIGHT = 1e6  # loss weights, temperatures, reward coefficients
MAX_WIDTH = 1 << 14  # hidden layer widths
MAX_STEPS = 10**9  # step budgets and "every N steps" intervals
MAX_BATCH = 1 << 16  # batch sizes (memory is checked on top, where the frame size is known)
MAX_BUFFER = 10**8  # shuffle buffers and replay capacities (idem)
MAX_AUG_PAD = 256  # DrQ shift padding, pixels
MAX_PROCESSES = 1024  # workers and threads on one machine
MAX_ACTION_DIM = 64
_SHOWN_CHARS = 60  # a value in a message is cut to this many characters


class _Missing:
    def __repr__(self) -> str:
        return "missing"


MISSING = _Missing()  # the "value" of a required field that is not there


def show(value: Any) -> str:
    """``value`` as a message shows it: huge integers in scientific form, long text cut."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**15:
        try:
            return f"{float(value):.3g}"
        except OverflowError:
            return f"an integer of {value.bit_length()} bits"
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


def _number(value: int | float) -> str:
    """A range end as it reads best: 65536, 1e6, 0.5, 0.0001."""
    if isinstance(value, int) and abs(value) >= 10**6 and value % 10**6 == 0:
        return f"{value:.0e}".replace("e+0", "e").replace("e+", "e")
    if isinstance(value, int) or (value.is_integer() and abs(value) < 1e6):
        return str(int(value))
    return f"{value:g}".replace("e+0", "e").replace("e+", "e").replace("e-0", "e-")


class CheckError(ValueError):
    """A value that is not what its spec expects: ``path is value: expected ...``."""

    def __init__(self, path: str, value: Any, expected: str, owner: str = "") -> None:
        self.path, self.value, self.expected, self.owner = path, value, expected, owner
        where = f"{owner}.{path}" if owner else path
        super().__init__(f"{where} is {show(value)}: expected {expected}")

    def under(self, prefix: str) -> CheckError:
        """The same error with ``prefix`` before its path (a file, or a config section)."""
        path = f"{prefix}.{self.path}" if prefix and self.path else prefix or self.path
        return CheckError(path, self.value, self.expected)


class Spec:
    """One value's type and range. ``check`` returns nothing and raises :class:`CheckError`.

    A subclass defines one of the two: a plain value its ``accepts`` (``check`` then names the
    value), a structure its ``check`` (naming the inner field that fails; ``accepts`` then
    asks it)."""

    def check(self, value: Any, path: str = "value") -> None:
        if not self.accepts(value):
            raise CheckError(path, value, self.describe())

    def accepts(self, value: Any) -> bool:
        try:
            self.check(value)
        except CheckError:
            return False
        return True

    def describe(self) -> str:
        raise NotImplementedError


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class Int(Spec):
    """An int (not a bool) in ``[low, high]``."""

    low: int = 0
    high: int = INT64_MAX

    def accepts(self, value: Any) -> bool:
        return _is_int(value) and self.low <= value <= self.high

    def describe(self) -> str:
        return f"an int in [{_number(self.low)}, {_number(self.high)}]"


@dataclass(frozen=True)
class Float(Spec):
    """A finite number (int or float, not a bool) in ``[low, high]``; ``low_open`` excludes low."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False

    def accepts(self, value: Any) -> bool:
        if not _is_number(value) or not math.isfinite(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        return above and value <= self.high

    def describe(self) -> str:
        if self.low == -math.inf and self.high == math.inf:
            return "a finite number"
        if self.high == math.inf:
            return f"a number {'>' if self.low_open else '>='} {_number(self.low)}"
        opening = "(" if self.low_open else "["
        return f"a number in {opening}{_number(self.low)}, {_number(self.high)}]"


@dataclass(frozen=True)
class Str(Spec):
    """A string, optionally matching ``pattern`` (whole) or being one of ``choices``."""

    pattern: str | None = None
    choices: tuple[str, ...] = ()
    what: str = "a string"

    def accepts(self, value: Any) -> bool:
        if not isinstance(value, str):
            return False
        if self.choices and value not in self.choices:
            return False
        return self.pattern is None or re.fullmatch(self.pattern, value) is not None

    def describe(self) -> str:
        if self.choices:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        return self.what


@dataclass(frozen=True)
class Bool(Spec):
    def accepts(self, value: Any) -> bool:
        return isinstance(value, bool)

    def describe(self) -> str:
        return "true or false"


@dataclass(frozen=True)
class AnyValue(Spec):
    """Anything (a free-form part, such as a stored config that its own reader checks)."""

    def accepts(self, value: Any) -> bool:
        return True

    def describe(self) -> str:
        return "anything"


@dataclass(frozen=True)
class Opt(Spec):
    """None, or what ``spec`` accepts."""

    spec: Spec

    def check(self, value: Any, path: str = "value") -> None:
        if value is not None:
            self.spec.check(value, path)

    def accepts(self, value: Any) -> bool:
        return value is None or self.spec.accepts(value)

    def describe(self) -> str:
        return f"null or {self.spec.describe()}"


@dataclass(frozen=True)
class Either(Spec):
    """What any of ``specs`` accepts (e.g. an int count or a float fraction)."""

    specs: tuple[Spec, ...]

    def accepts(self, value: Any) -> bool:
        return any(spec.accepts(value) for spec in self.specs)

    def describe(self) -> str:
        return " or ".join(spec.describe() for spec in self.specs)


@dataclass(frozen=True)
class ListOf(Spec):
    """A list (or tuple) of ``min_len`` to ``max_len`` items, each what ``item`` accepts."""

    item: Spec
    min_len: int = 0
    max_len: int = INT64_MAX
    unique: bool = False

    def check(self, value: Any, path: str = "value") -> None:
        if not isinstance(value, (list, tuple)) or not self.min_len <= len(value) <= self.max_len:
            raise CheckError(path, value, self.describe())
        for i, item in enumerate(value):
            self.item.check(item, f"{path}[{i}]")
        if self.unique and len({repr(v) for v in value}) != len(value):
            raise CheckError(path, value, self.describe())

    def describe(self) -> str:
        distinct = "distinct " if self.unique else ""
        if self.min_len == self.max_len:
            size = f"a list of {self.min_len} {distinct}values"
        elif self.max_len < INT64_MAX:
            size = f"a list of {self.min_len} to {self.max_len} {distinct}values"
        elif self.min_len > 0:
            size = f"a list of at least {self.min_len} {distinct}values"
        else:
            size = f"a list of {distinct}values"
        return f"{size}, each {self.item.describe()}"


@dataclass(frozen=True)
class MapOf(Spec):
    """A mapping of string keys (matching ``key``) to what ``value`` accepts."""

    value: Spec
    key: Str = Str()

    def check(self, value: Any, path: str = "value") -> None:
        if not isinstance(value, Mapping):
            raise CheckError(path, value, "a mapping")
        for name, item in value.items():
            if not self.key.accepts(name):
                raise CheckError(f"{path} key", name, self.key.describe())
            self.value.check(item, f"{path}.{name}")

    def describe(self) -> str:
        return "a mapping"


@dataclass(frozen=True)
class Record(Spec):
    """A mapping with known fields: ``required`` ones must be there, the others are checked
    when present; unknown keys are allowed (a newer writer may add fields)."""

    fields: dict[str, Spec] = field(default_factory=dict)
    required: tuple[str, ...] = ()

    def check(self, value: Any, path: str = "value") -> None:
        if not isinstance(value, Mapping):
            raise CheckError(path, value, "a mapping")
        for name in self.required:
            if name not in value:
                raise CheckError(f"{path}.{name}", MISSING, self.fields[name].describe())
        for name, spec in self.fields.items():
            if name in value:
                spec.check(value[name], f"{path}.{name}")

    def describe(self) -> str:
        return "a mapping"


def check_fields(obj: object, **specs: Spec) -> None:
    """Check attributes of ``obj`` (a config dataclass, from its ``__post_init__``): a
    :class:`CheckError` naming the class and field on the first that is out of range."""
    for name, spec in specs.items():
        try:
            spec.check(getattr(obj, name), name)
        except CheckError as err:
            raise CheckError(err.path, err.value, err.expected, owner=type(obj).__name__) from None
