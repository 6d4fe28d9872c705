"""The `rg.*` functions of the builder API; each appends one node to its operand's block."""

from __future__ import annotations

from resgen.errors import IRTypeError
from resgen.ir.block import Operand, Value, _block_of, binary, unary
from resgen.ir.dtypes import DType, as_dtype


def cast(v: Value, dtype: DType | str) -> Value:
    """Round `v` to `dtype` exactly as torch's `.to(dtype)` does; arithmetic stays float32."""
    return unary("cast", v, dtype=as_dtype(dtype, what="cast: argument 'dtype'"))


def sqrt(v: Value) -> Value:
    return unary("sqrt", v)


def rsqrt(v: Value) -> Value:
    return unary("rsqrt", v)


def abs(v: Value) -> Value:  # noqa: A001 - the public name DESIGN.md gives
    return unary("abs", v)


def maximum(a: Operand, b: Operand) -> Value:
    return binary("maximum", a, b)


def minimum(a: Operand, b: Operand) -> Value:
    """Elementwise minimum; NaN in either operand gives NaN (torch.minimum)."""
    return binary("minimum", a, b)


def clamp(v: Value, lo: Operand, hi: Operand) -> Value:
    """minimum(maximum(v, lo), hi), as torch.clamp: NaN stays NaN; lo > hi gives hi."""
    return minimum(maximum(v, lo), hi)


def round(v: Value) -> Value:  # noqa: A001 - the public name DESIGN.md gives
    """Round half to even (torch.round); no gradient."""
    return unary("round", v)


def floor(v: Value) -> Value:
    return unary("floor", v)


def log2(v: Value) -> Value:
    return unary("log2", v)


def exp2(v: Value) -> Value:
    return unary("exp2", v)


def exponent(v: Value) -> Value:
    """floor(log2(v)) exactly, from the float's exponent (float32 subnormals included): -inf at 0,
    inf at inf, NaN for v < 0 or NaN. `rg.floor(rg.log2(v))` rounds log2 first, so it is k at
    2^k (1 - 2^-24) for large k; block-scale formats (MX) need this one. No gradient."""
    return unary("exponent", v)


def group_max(v: Value, size: int) -> Value:
    """The maximum over each `size` consecutive columns of a row (size a power of two dividing hidden):
    a group value, shape [..., hidden // size], that broadcasts back over its columns when combined
    with a row tensor. NaN in a group gives NaN. Computed within a thread or a few lanes (shuffles),
    so it costs no extra pass over the row."""
    return unary("group_max", v, size=size)


def group_sum(v: Value, size: int) -> Value:
    """The sum over each `size` consecutive columns of a row: a group value (see group_max)."""
    return unary("group_sum", v, size=size)


def col_sum(v: Value) -> Value:
    """Sum over the rows of each column: a float32 column vector (weight and bias gradients).

    Deterministic: fixed-order partial sums, then a fixed-order combine; no float atomics.
    """
    return unary("col_sum", v)


def eq(a: Operand, b: Operand) -> Value:
    """1.0 where a == b, else 0.0 (elementwise)."""
    return binary("eq", a, b)


def gt(a: Operand, b: Operand) -> Value:
    """1.0 where a > b, else 0.0 (elementwise)."""
    return binary("gt", a, b)


def row_sum(v: Value) -> Value:
    """Sum over the hidden dimension of each row: a row scalar."""
    return unary("row_sum", v)


def row_mean(v: Value) -> Value:
    return unary("row_mean", v)


def row_max(v: Value) -> Value:
    return unary("row_max", v)


def row_var(v: Value) -> Value:
    """Population variance over the hidden dimension of each row (divides by hidden): a row scalar.
    Kernels take it in one pass (Welford within a thread, Chan's combine across threads), so a
    LayerNorm's mean and variance need one reduction phase, not two."""
    return unary("row_var", v)


def _as_float(value: object) -> object:
    """Numbers as floats (attributes are floats); anything else is left for `check_attrs` to reject."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def layer_norm(v: Value, weight: Value | None = None, bias: Value | None = None, eps: float = 1e-5) -> Value:
    """(v - mean) / sqrt(var + eps) * weight + bias over each row, variance computed in two passes."""
    args = [v] + [a for a in (weight, bias) if a is not None]
    names = ["v"] + [n for n, a in (("weight", weight), ("bias", bias)) if a is not None]
    block = _block_of("layer_norm", tuple(args))
    return block.emit("layer_norm", args, arg_names=names, weight=weight is not None,
                      bias=bias is not None, eps=_as_float(eps))


def rms_norm(v: Value, weight: Value | None = None, eps: float = 1e-6, offset: float = 0.0) -> Value:
    """v / sqrt(mean(v^2) + eps) * (offset + weight); Gemma uses offset 1.0."""
    args = [v] + ([weight] if weight is not None else [])
    names = ["v", "weight"][: len(args)]
    block = _block_of("rms_norm", tuple(args))
    return block.emit("rms_norm", args, arg_names=names, weight=weight is not None,
                      eps=_as_float(eps), offset=_as_float(offset))


def dropout(v: Value, p: float) -> Value:
    """Zero each element with probability p and scale the rest by 1/(1-p).

    The mask is drawn from Philox4x32-10 keyed by (seed, offset, row, column); `seed=` and
    `offset=` are call-time arguments of the kernel and of `rg.reference`. The k-th dropout of a
    block (its `site`) draws an independent mask.
    """
    if not isinstance(v, Value):
        raise IRTypeError(f"dropout: argument 'v' must be a resgen Value, got {type(v).__name__}")
    site = sum(n.op == "dropout" for n in v.block.body)
    return unary("dropout", v, p=_as_float(p), site=site)
