"""The one place op attributes are checked: the builder and the textual-IR parser both build nodes
through `make`, which calls `check_attrs`, so a block read from a file obeys the same rules as one
written in Python."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import sympy

from resgen.errors import VerifyError
from resgen.ir.dtypes import DType


def _number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float))


def _bool(value: Any) -> str | None:
    return None if isinstance(value, bool) else "True or False"


def _eps(value: Any) -> str | None:
    return None if _number(value) and math.isfinite(value) and value >= 0 else "a finite number >= 0"


def _finite(value: Any) -> str | None:
    return None if _number(value) and math.isfinite(value) else "a finite number"


def _probability(value: Any) -> str | None:
    return None if _number(value) and 0.0 <= value < 1.0 else "a number in [0, 1)"


def _site(value: Any) -> str | None:
    return None if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else "an int >= 0"


def _group_size(value: Any) -> str | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1 and value & (value - 1) == 0
    return None if ok else "a power of two (1, 2, 4, ...)"


def _dtype(value: Any) -> str | None:
    return None if isinstance(value, DType) else "a resgen dtype"


def _name(value: Any) -> str | None:
    return None if isinstance(value, str) and value.isidentifier() else "an identifier"


def _const(value: Any) -> str | None:
    if not isinstance(value, sympy.Expr):
        return "a sympy expression"
    if value.is_number and not value.is_finite:
        return "a finite number"
    return None


#: op -> attribute -> a check returning None, or what the value should have been.
SCHEMA: dict[str, dict[str, Callable[[Any], str | None]]] = {
    "input": {"name": _name, "dtype": _dtype},
    "weight": {"name": _name, "dtype": _dtype},
    "scalar": {"name": _name, "dtype": _dtype},
    "row_scalar": {"name": _name, "dtype": _dtype},
    "const": {"value": _const},
    "cast": {"dtype": _dtype},
    "dropout": {"p": _probability, "site": _site},
    "group_max": {"size": _group_size},
    "group_sum": {"size": _group_size},
    "layer_norm": {"weight": _bool, "bias": _bool, "eps": _eps},
    "rms_norm": {"weight": _bool, "eps": _eps, "offset": _finite},
}


def check_attrs(op: str, attrs: dict[str, Any]) -> None:
    """Raise VerifyError naming the op and attribute when `attrs` are not exactly what `op` takes."""
    schema = SCHEMA.get(op, {})
    unknown = sorted(set(attrs) - set(schema))
    if unknown:
        raise VerifyError(f"{op}: unknown attribute(s) {unknown}; it takes {sorted(schema) or 'none'}")
    missing = sorted(set(schema) - set(attrs))
    if missing:
        raise VerifyError(f"{op}: missing attribute(s) {missing}")
    for key, check in schema.items():
        expected = check(attrs[key])
        if expected is not None:
            raise VerifyError(f"{op}: argument {key!r} must be {expected}, got {attrs[key]!r}")
    if op == "rms_norm" and attrs["offset"] and not attrs["weight"]:
        raise VerifyError("rms_norm: argument 'offset' needs a 'weight' to offset")
