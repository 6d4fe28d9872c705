"""Storage dtypes: the one table that maps a resgen dtype to torch and to C."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from resgen.errors import IRTypeError


@dataclass(frozen=True)
class DType:
    """A storage dtype. Arithmetic is always float32; this only matters at casts and outputs."""

    name: str
    c_type: str
    itemsize: int
    torch_dtype: torch.dtype

    def __repr__(self) -> str:
        return f"rg.{self.name}"

    def __str__(self) -> str:
        return self.name


f32 = DType("f32", "float", 4, torch.float32)
f16 = DType("f16", "__half", 2, torch.float16)
bf16 = DType("bf16", "__nv_bfloat16", 2, torch.bfloat16)

DTYPES: dict[str, DType] = {d.name: d for d in (f32, f16, bf16)}
_ALIASES = {"float32": f32, "float": f32, "float16": f16, "half": f16, "bfloat16": bf16}


def as_dtype(value: object, *, what: str) -> DType:
    """Return the DType named or given by `value`; `what` names the argument in the error."""
    if isinstance(value, DType):
        return value
    if isinstance(value, str):
        found = DTYPES.get(value) or _ALIASES.get(value)
        if found is not None:
            return found
    if isinstance(value, torch.dtype):
        for d in DTYPES.values():
            if d.torch_dtype == value:
                return d
    raise IRTypeError(f"{what}: unknown dtype {value!r}; expected one of rg.f32, rg.f16, rg.bf16")


def promote(dtypes: list[DType]) -> DType:
    """The storage dtype of a result computed from values of these dtypes (torch's rule)."""
    distinct = set(dtypes)
    if len(distinct) == 1:
        return dtypes[0]
    return f32
