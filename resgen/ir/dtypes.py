"""Storage dtypes: the one table that maps a resgen dtype to torch and to C.

Arithmetic is float32 everywhere; a dtype matters where a value is stored (outputs, `rg.cast`).
The float types round like torch's `.to()` on the pinned torch: f16, bf16 and f8e5m2 round to
nearest even and overflow to inf; f8e4m3 (float8_e4m3fn, which has no inf) rounds to nearest even
and saturates at +-448, inf included; NaN keeps its sign. `i8` rounds half to even and saturates to
[-128, 127], NaN giving 0: what int8 quantizers do (torch's `.to(int8)` truncates and wraps).
"""

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
    header: str = ""  # the CUDA header that declares c_type

    @property
    def is_float(self) -> bool:
        return self.torch_dtype.is_floating_point

    def __repr__(self) -> str:
        return f"rg.{self.name}"

    def __str__(self) -> str:
        return self.name


f32 = DType("f32", "float", 4, torch.float32)
f16 = DType("f16", "__half", 2, torch.float16, "cuda_fp16.h")
bf16 = DType("bf16", "__nv_bfloat16", 2, torch.bfloat16, "cuda_bf16.h")
f8e4m3 = DType("f8e4m3", "rg_e4m3", 1, torch.float8_e4m3fn)  # rg_e4m3, rg_e5m2: templates/prelude.cuh
f8e5m2 = DType("f8e5m2", "rg_e5m2", 1, torch.float8_e5m2)
i8 = DType("i8", "signed char", 1, torch.int8)

DTYPES: dict[str, DType] = {d.name: d for d in (f32, f16, bf16, f8e4m3, f8e5m2, i8)}
_ALIASES = {"float32": f32, "float": f32, "float16": f16, "half": f16, "bfloat16": bf16, "float8_e4m3fn": f8e4m3,
            "float8_e5m2": f8e5m2, "int8": i8}


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
    raise IRTypeError(f"{what}: unknown dtype {value!r}; expected one of {', '.join(f'rg.{d}' for d in DTYPES)}")


def to_storage(value: torch.Tensor, dtype: DType) -> torch.Tensor:
    """`value` (float) stored as `dtype` by resgen's rounding rules (the module docstring)."""
    if dtype is i8:
        return torch.nan_to_num(torch.round(value), nan=0.0).clamp(-128, 127).to(torch.int8)
    return value.to(dtype.torch_dtype)


def promote(dtypes: list[DType]) -> DType:
    """The storage dtype of a result computed from values of these dtypes (torch's rule)."""
    distinct = set(dtypes)
    if len(distinct) == 1:
        return dtypes[0]
    return f32
