"""Storage dtypes: the one table that maps a resgen dtype to torch and to C.

Arithmetic is float32 everywhere; a dtype matters where a value is stored (outputs, `rg.cast`).
The float types round like torch's `.to()` on the pinned torch: f16, bf16 and f8e5m2 round to
nearest even and overflow to inf; f8e4m3 (float8_e4m3fn, which has no inf) rounds to nearest even
and saturates at +-448, inf included; NaN keeps its sign. `i8` rounds half to even and saturates to
[-128, 127], NaN giving 0: what int8 quantizers do (torch's `.to(int8)` truncates and wraps).

The two block-scaling formats:
- `e8m0` (torch.float8_e8m0fnu) is a power-of-two scale byte: 2^(bits - 127), 0xff is NaN. It rounds
  like torch's `.to()`: the exponent of |v| (the sign is dropped), rounded up when the mantissa's
  guard bit is set and any lower bit, or the exponent's own last bit, is too (1.5 -> 2, 3 -> 4,
  0.75 -> 1 but 2^-127 * 1.5 -> 2^-127); zero and float32 subnormals below 2^-127 give 2^-127;
  NaN, inf and anything that rounds past 2^127 give NaN.
- `f4e2m1` (OCP MX FP4: +-{0, 0.5, 1, 1.5, 2, 3, 4, 6}) is packed two to a byte as torch's
  float4_e2m1fn_x2: the element at the even column in the low nibble, so a tensor of it has half as
  many columns. It rounds to nearest even and saturates at +-6 (inf included); having no NaN, NaN
  gives +6. torch cannot convert to it; `to_storage` below is the rule, and the kernels match it.
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
    pack: int = 1  # values per storage element (f4e2m1: two per byte)

    @property
    def is_float(self) -> bool:
        return self.torch_dtype.is_floating_point

    @property
    def value_bytes(self) -> float:
        """Bytes one value takes in memory (a packed e2m1 value: half a byte)."""
        return self.itemsize / self.pack

    def columns(self, values: int) -> int:
        """Storage elements holding `values` consecutive values of a row."""
        return values // self.pack

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
e8m0 = DType("e8m0", "rg_e8m0", 1, torch.float8_e8m0fnu)
f4e2m1 = DType("f4e2m1", "rg_e2m1x2", 1, torch.float4_e2m1fn_x2, pack=2)

DTYPES: dict[str, DType] = {d.name: d for d in (f32, f16, bf16, f8e4m3, f8e5m2, i8, e8m0, f4e2m1)}
_ALIASES = {"float32": f32, "float": f32, "float16": f16, "half": f16, "bfloat16": bf16, "float8_e4m3fn": f8e4m3,
            "float8_e5m2": f8e5m2, "int8": i8, "float8_e8m0fnu": e8m0, "float4_e2m1fn_x2": f4e2m1}

#: The e2m1 values of codes 0..7 (code | 8 is the negative).
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


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
    """`value` (float) stored as `dtype` by resgen's rounding rules (the module docstring); f4e2m1
    packs pairs of the last dimension, which must be even."""
    if dtype is i8:
        return torch.nan_to_num(torch.round(value), nan=0.0).clamp(-128, 127).to(torch.int8)
    if dtype is f4e2m1:
        return _pack_e2m1(_e2m1_codes(value.float()))
    return value.to(dtype.torch_dtype)


def from_storage(stored: torch.Tensor, dtype: DType) -> torch.Tensor:
    """The float32 values a tensor of `dtype` holds (f4e2m1 unpacked: the last dimension doubles)."""
    if dtype is f4e2m1:
        byte = stored.view(torch.uint8)
        codes = torch.stack((byte & 0xF, byte >> 4), dim=-1).flatten(-2).long()
        return _e2m1_values(codes)
    return stored.float()


def rounded(value: torch.Tensor, dtype: DType) -> torch.Tensor:
    """`value` rounded to `dtype` and back to float32 (any shape; nothing packed)."""
    if dtype is f4e2m1:
        return _e2m1_values(_e2m1_codes(value.float()))
    return to_storage(value, dtype).float()


def _e2m1_values(codes: torch.Tensor) -> torch.Tensor:
    """The float32 values of 4-bit e2m1 codes (sign in bit 3)."""
    return torch.tensor(E2M1_VALUES + tuple(-v for v in E2M1_VALUES), device=codes.device)[codes]


def _e2m1_codes(v: torch.Tensor) -> torch.Tensor:
    """The 4-bit codes of float32 `v`: nearest e2m1 value, ties to the even code, saturating at 6."""
    a = torch.nan_to_num(v.abs(), nan=6.0, posinf=6.0)
    grid = torch.tensor(E2M1_VALUES, device=v.device)
    below = (torch.searchsorted(grid, a.contiguous(), right=True) - 1).clamp(max=7)  # the largest value <= a
    above = (below + 1).clamp(max=7)
    lo, hi = grid[below], grid[above]
    up = (a - lo > hi - a) | ((a - lo == hi - a) & (below % 2 == 1))
    code = torch.where(up, above, below)
    negative = torch.signbit(v) & ~v.isnan()
    return code | (negative.long() << 3)


def _pack_e2m1(codes: torch.Tensor) -> torch.Tensor:
    if codes.shape[-1] % 2:
        raise IRTypeError(f"f4e2m1 packs two values per byte: the last dimension must be even, got {codes.shape[-1]}")
    pairs = codes.reshape(*codes.shape[:-1], codes.shape[-1] // 2, 2)
    return (pairs[..., 0] | (pairs[..., 1] << 4)).to(torch.uint8).view(torch.float4_e2m1fn_x2)


def promote(dtypes: list[DType]) -> DType:
    """The storage dtype of a result computed from values of these dtypes (torch's rule)."""
    distinct = set(dtypes)
    if len(distinct) == 1:
        return dtypes[0]
    return f32
