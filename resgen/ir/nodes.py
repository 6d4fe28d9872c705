"""IR nodes: immutable, typed, structurally keyed. `make` is the one constructor that infers types."""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import sympy

from resgen.errors import IRTypeError, VerifyError
from resgen.ir.attrs import check_attrs
from resgen.ir.dtypes import DType, f32, promote

#: The hidden size of a block before `specialize` replaces it with a number.
H = sympy.Symbol("H", integer=True, positive=True)


class Kind(enum.Enum):
    """Where a value lives: its shape relative to the [rows, hidden] iteration space."""

    ROW = "row"  # [rows, hidden]
    COL = "col"  # [hidden]: weights, biases
    ROWS = "rowscalar"  # [rows]: mean, rstd, per-row scales
    GROUP = "group"  # [rows, hidden // size]: one value per `size` consecutive columns (block scales)
    SCALAR = "scalar"  # one number: a constant or a runtime argument

    def __str__(self) -> str:
        return self.value


#: Kinds stored as [rows, columns] tensors with a row stride: row tensors and group values.
ROW_LIKE = (Kind.ROW, Kind.GROUP)
#: The kinds a block may output: row tensors, row scalars, group values (block scales), and column
#: reductions (weight gradients).
OUTPUT_KINDS = (Kind.ROW, Kind.ROWS, Kind.GROUP, Kind.COL)

PARAM_OPS = ("input", "weight", "scalar", "row_scalar")
#: Elementwise ops of two operands; eq and gt give 1.0 where the comparison holds, else 0.0.
BINARY_OPS = ("add", "sub", "mul", "div", "maximum", "minimum", "eq", "gt")
#: round is half to even (torch.round); exponent is floor(log2(v)) taken exactly from the float's
#: exponent (log2 rounds: 2^k (1 - 2^-24) has log2 == k in float32); round, floor and exponent have
#: no gradient.
UNARY_OPS = ("neg", "sqrt", "rsqrt", "abs", "round", "floor", "log2", "exp2", "exponent")
#: Row reductions; row_var is the population variance (divides by hidden), taken in one pass.
REDUCE_OPS = ("row_sum", "row_mean", "row_max", "row_var")
#: Reductions over the rows of each column: a column vector (weight and bias gradients).
COL_REDUCE_OPS = ("col_sum",)
#: Reductions over `size` consecutive columns of each row (size a power of two dividing hidden): group values.
GROUP_REDUCE_OPS = ("group_max", "group_sum")
COMPOSITE_OPS = ("layer_norm", "rms_norm")
ALL_OPS = (PARAM_OPS + ("const",) + BINARY_OPS + UNARY_OPS + ("cast", "dropout") + REDUCE_OPS + COL_REDUCE_OPS
           + GROUP_REDUCE_OPS + COMPOSITE_OPS)


def _attr_repr(value: Any) -> str:
    if isinstance(value, sympy.Basic):
        return sympy.srepr(value)
    return repr(value)


@dataclass(frozen=True, eq=False)
class Node:
    """One SSA value. Equality is identity; `key` is the structural identity used by caches and CSE."""

    op: str
    args: tuple[Node, ...]
    attrs: tuple[tuple[str, Any], ...]
    kind: Kind
    dtype: DType

    @cached_property
    def key(self) -> str:
        parts = [self.op, str(self.kind), self.dtype.name]
        parts += [f"{k}={_attr_repr(v)}" for k, v in self.attrs]
        parts += [a.key for a in self.args]
        return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:20]

    def attr(self, name: str) -> Any:
        for k, v in self.attrs:
            if k == name:
                return v
        raise KeyError(f"{self.op} has no attribute {name!r}")

    @property
    def name(self) -> str:
        """The user-facing name of a parameter node."""
        return self.attr("name")

    @cached_property
    def group(self) -> int:
        """Columns per value of a group value (Kind.GROUP); 0 for every other kind."""
        if self.kind is not Kind.GROUP:
            return 0
        if self.op in GROUP_REDUCE_OPS:
            return self.attr("size")
        return next(a.group for a in self.args if a.kind is Kind.GROUP)

    def __repr__(self) -> str:
        attrs = ", ".join(f"{k}={v}" for k, v in self.attrs)
        return f"Node({self.op}{' ' + attrs if attrs else ''} : {self.kind}<{self.dtype}>)"


def _combine_kinds(op: str, args: tuple[Node, ...]) -> Kind:
    kinds = {a.kind for a in args}
    sizes = sorted({a.group for a in args if a.kind is Kind.GROUP})
    if len(sizes) > 1:
        raise IRTypeError(f"{op}: cannot combine group values of {sizes[0]} and {sizes[1]} columns")
    if Kind.ROW in kinds or {Kind.GROUP, Kind.COL} <= kinds:  # a group value broadcasts over its columns
        return Kind.ROW
    if Kind.GROUP in kinds:
        return Kind.GROUP
    if Kind.COL in kinds and Kind.ROWS in kinds:
        raise IRTypeError(
            f"{op}: cannot combine a column vector with a row scalar (the result would be a row "
            f"tensor with no row input); add it to a row tensor instead"
        )
    for k in (Kind.COL, Kind.ROWS):
        if k in kinds:
            return k
    return Kind.SCALAR


def _elementwise_dtype(args: tuple[Node, ...]) -> DType:
    tensors = [a.dtype for a in args if a.kind is not Kind.SCALAR]
    return promote(tensors or [a.dtype for a in args])


def _require(op: str, arg: str, node: Node, kinds: tuple[Kind, ...]) -> None:
    if node.kind not in kinds:
        expected = " or ".join(k.value for k in kinds)
        raise IRTypeError(f"{op}: argument {arg!r} must be a {expected}, got a {node.kind.value}")


def infer(op: str, args: tuple[Node, ...], attrs: dict[str, Any]) -> tuple[Kind, DType]:
    """The kind and storage dtype of `op(args)`; raises IRTypeError naming op and argument."""
    if op in PARAM_OPS:
        kind = {"input": Kind.ROW, "weight": Kind.COL, "scalar": Kind.SCALAR, "row_scalar": Kind.ROWS}[op]
        return kind, attrs["dtype"]
    if op == "const":
        return Kind.SCALAR, f32
    if op in BINARY_OPS:
        return _combine_kinds(op, args), _elementwise_dtype(args)
    if op in UNARY_OPS:
        return args[0].kind, args[0].dtype
    if op == "cast":
        return args[0].kind, attrs["dtype"]
    if op == "dropout":
        _require(op, "v", args[0], (Kind.ROW,))
        return Kind.ROW, args[0].dtype
    if op in REDUCE_OPS:
        _require(op, "v", args[0], (Kind.ROW,))
        return Kind.ROWS, args[0].dtype
    if op in COL_REDUCE_OPS:
        _require(op, "v", args[0], (Kind.ROW,))
        return Kind.COL, f32
    if op in GROUP_REDUCE_OPS:
        _require(op, "v", args[0], (Kind.ROW,))
        return Kind.GROUP, args[0].dtype
    if op in COMPOSITE_OPS:
        _require(op, "v", args[0], (Kind.ROW,))
        names = [n for n in ("weight", "bias") if attrs.get(n)]
        for name, a in zip(names, args[1:], strict=True):
            _require(op, name, a, (Kind.COL,))
        return Kind.ROW, promote([a.dtype for a in args])
    raise VerifyError(f"unknown op {op!r}")


_ARITY = {**{o: 0 for o in PARAM_OPS + ("const",)}, **{o: 2 for o in BINARY_OPS}}
_ARITY.update({o: 1 for o in UNARY_OPS + REDUCE_OPS + COL_REDUCE_OPS + GROUP_REDUCE_OPS + ("cast", "dropout")})


def make(op: str, args: tuple[Node, ...] = (), **attrs: Any) -> Node:
    """Build a node, inferring its kind and dtype from the op's rules."""
    if op not in ALL_OPS:
        raise VerifyError(f"unknown op {op!r}; known ops: {', '.join(ALL_OPS)}")
    arity = _ARITY.get(op)
    if arity is not None and len(args) != arity:
        raise VerifyError(f"{op}: expected {arity} operand(s), got {len(args)}")
    if op in COMPOSITE_OPS:
        expected = 1 + int(attrs.get("weight", False)) + int(attrs.get("bias", False))
        if len(args) != expected:
            raise VerifyError(f"{op}: expected {expected} operand(s) for its attributes, got {len(args)}")
    check_attrs(op, attrs)
    kind, dtype = infer(op, args, attrs)
    return Node(op, tuple(args), tuple(attrs.items()), kind, dtype)


def rebuild(node: Node, args: tuple[Node, ...]) -> Node:
    """`node` with new operands, types re-inferred; the same object when nothing changed."""
    if len(args) == len(node.args) and all(a is b for a, b in zip(args, node.args, strict=True)):
        return node
    return make(node.op, args, **dict(node.attrs))


def const(value: float | int | sympy.Expr) -> Node:
    """A scalar constant; floats become exact sympy Floats, ints exact Integers."""
    return make("const", value=sympy.sympify(value))
