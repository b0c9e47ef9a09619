"""Checks of config values that every settings section shares: each names the offending
field (``config.ppo.clip=-1 must be >= 0``) in a ``ConfigError`` (docs/design.md, rule 6)."""
from __future__ import annotations

import math
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from jaxrlhf.errors import ConfigError


def fail(field: str, value: Any, why: str) -> typing.NoReturn:
    """Raise a ConfigError: ``config.FIELD=VALUE`` and why it cannot be used."""
    raise ConfigError(f"config.{field}={value!r} {why}")


def in_range(section: Any, prefix: str, fields: Sequence[str], lo: float, hi: float, *,
              hi_open: bool = False) -> None:
    for name in fields:
        value = getattr(section, name)
        if not lo <= value <= hi or (hi_open and value == hi):
            fail(f"{prefix}.{name}", value, f"must lie in [{lo}, {hi}{')' if hi_open else ']'}")


def check_types(cls, values: Mapping[str, Any], prefix: str) -> None:
    """Each value has its field's declared type: an integer for ``int`` (not a bool), a
    finite number for ``float``, true/false for ``bool``, a string for ``str``."""
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        want, field = hints.get(name), f"{prefix}{name}"
        if want is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                fail(field, value, "must be a number")
            if not math.isfinite(value):
                fail(field, value, "must be finite")
        elif want is int and (isinstance(value, bool) or not isinstance(value, int)):
            fail(field, value, "must be an integer")
        elif want is bool and not isinstance(value, bool):
            fail(field, value, "must be True or False")
        elif want is str and not isinstance(value, str):
            fail(field, value, "must be a string")


def positive(section: Any, prefix: str, fields: Sequence[str], *,
              allow_zero: bool = False) -> None:
    for name in fields:
        value = getattr(section, name)
        if value < 0 or (value == 0 and not allow_zero):
            fail(f"{prefix}.{name}", value, "must be >= 0" if allow_zero else "must be positive")
