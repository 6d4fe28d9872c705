"""`Block`, the user's builder, and the value handles its operators produce."""

from __future__ import annotations

import hashlib
import keyword
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

import sympy

from resgen.errors import IRTypeError, VerifyError
from resgen.ir.dtypes import DType, as_dtype, f32
from resgen.ir.nodes import OUTPUT_KINDS, H, Kind, Node, const, make

#: Names the call signature already uses. Any other Python identifier is a valid name: the emitted
#: source mangles every user-chosen name (a role prefix), so none can meet a C keyword or macro.
RESERVED_NAMES = frozenset({"seed", "offset", "rows", "hidden", "config", "backend", "out"})
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Output:
    """A named result of a block; `inplace` names the row input whose buffer it overwrites."""

    name: str
    node: Node
    dtype: DType
    inplace: str | None = None


class Value:
    """A handle on one node of one block; arithmetic on it appends nodes to that block."""

    __slots__ = ("block", "node")

    def __init__(self, block: Block, node: Node) -> None:
        self.block = block
        self.node = node

    @property
    def kind(self) -> Kind:
        return self.node.kind

    @property
    def dtype(self) -> DType:
        return self.node.dtype

    def __add__(self, other: Operand) -> Value:
        return binary("add", self, other)

    def __radd__(self, other: Operand) -> Value:
        return binary("add", other, self)

    def __sub__(self, other: Operand) -> Value:
        return binary("sub", self, other)

    def __rsub__(self, other: Operand) -> Value:
        return binary("sub", other, self)

    def __mul__(self, other: Operand) -> Value:
        return binary("mul", self, other)

    def __rmul__(self, other: Operand) -> Value:
        return binary("mul", other, self)

    def __truediv__(self, other: Operand) -> Value:
        return binary("div", self, other)

    def __rtruediv__(self, other: Operand) -> Value:
        return binary("div", other, self)

    def __neg__(self) -> Value:
        return unary("neg", self)

    def __bool__(self) -> bool:
        raise IRTypeError("a resgen Value has no truth value; it is a symbolic row computation")

    def __repr__(self) -> str:
        return f"<Value {self.node.op} : {self.kind}<{self.dtype}> of block {self.block.name!r}>"


Operand = Value | float | int


class Block:
    """A residual-plus-normalization block: parameters, an SSA body in order, named outputs.

    Built by the methods below and the `rg.*` functions; passes return new blocks and never
    modify the one they receive.
    """

    def __init__(self, name: str, *, hidden: int | sympy.Expr = H) -> None:
        if not isinstance(name, str) or not _IDENT.match(name):
            raise VerifyError(f"Block: name must be an identifier ([A-Za-z_][A-Za-z0-9_]*), got {name!r}")
        self.name = name
        self.hidden = hidden
        self.params: tuple[Node, ...] = ()
        self.body: tuple[Node, ...] = ()
        self.outputs: tuple[Output, ...] = ()
        self.doc: str = ""

    # -- building ------------------------------------------------------------------------------
    def input(self, name: str, dtype: DType | str = f32) -> Value:
        """A row tensor argument `[..., hidden]`."""
        return self._param("input", name, dtype)

    def weight(self, name: str, dtype: DType | str = f32) -> Value:
        """A column vector argument `[hidden]` (a weight or bias)."""
        return self._param("weight", name, dtype)

    def scalar(self, name: str, dtype: DType | str = f32) -> Value:
        """A runtime scalar argument, passed by name as a Python number at call time."""
        return self._param("scalar", name, dtype)

    def row_scalar(self, name: str, dtype: DType | str = f32) -> Value:
        """A row-scalar argument `[...]` (one value per row: a saved statistic, a per-row scale)."""
        return self._param("row_scalar", name, dtype)

    def output(self, name: str, value: Value, dtype: DType | str | None = None,
               inplace: str | None = None) -> None:
        """Declare a result; `dtype` defaults to the value's, `inplace` names a row input to overwrite."""
        self._check_name("output", name)
        node = self.node_of(value, op="output", arg="value")
        if node.kind not in OUTPUT_KINDS or (node.kind is Kind.COL and not _has_row_reduction(node)):
            raise IRTypeError(
                f"output {name!r}: argument 'value' must be a row tensor, a row scalar, a group value, or a column "
                f"vector reduced over the rows (col_sum), got a {node.kind.value}"
            )
        out_dtype = node.dtype if dtype is None else as_dtype(dtype, what=f"output {name!r}: argument 'dtype'")
        if out_dtype.pack > 1 and node.kind is not Kind.ROW:
            raise IRTypeError(f"output {name!r}: {out_dtype!r} packs {out_dtype.pack} values per byte; only a row "
                              f"tensor output may have it, got a {node.kind.value}")
        if inplace is not None:
            target = next((p for p in self.params if p.name == inplace), None)
            if target is None or target.op != "input":
                raise VerifyError(f"output {name!r}: argument 'inplace' must name a row input, got {inplace!r}")
            if node.kind is not Kind.ROW or target.dtype != out_dtype:
                raise VerifyError(
                    f"output {name!r}: in-place output must be a row tensor of the input's dtype "
                    f"{target.dtype}, got {node.kind.value}<{out_dtype}>"
                )
            if any(o.inplace == inplace for o in self.outputs):
                raise VerifyError(f"output {name!r}: input {inplace!r} is already overwritten by another output")
        self.outputs += (Output(name, node, out_dtype, inplace),)

    def emit(self, op: str, args: Iterable[Operand], *, arg_names: Iterable[str], **attrs: Any) -> Value:
        """Append `op(args)` to the body and return its handle (the builder functions use this)."""
        nodes = tuple(self.node_of(a, op=op, arg=n) for a, n in zip(args, arg_names, strict=True))
        node = make(op, nodes, **attrs)
        self.body += (node,)
        return Value(self, node)

    def node_of(self, value: Operand, *, op: str, arg: str) -> Node:
        """The node behind an operand of `op`: a value of this block or a Python number."""
        if isinstance(value, Value):
            if value.block is not self:
                raise VerifyError(
                    f"{op}: argument {arg!r} belongs to block {value.block.name!r}, not {self.name!r}"
                )
            return value.node
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            node = const(value)
            self.body += (node,)
            return node
        raise IRTypeError(f"{op}: argument {arg!r} must be a resgen Value or a number, got {type(value).__name__}")

    # -- identity and derived views ------------------------------------------------------------
    @property
    def key(self) -> str:
        """Structural hash of the whole block: parameters, outputs and the hidden size."""
        parts = [self.name, str(self.hidden)] + [p.key for p in self.params]
        parts += [f"{o.name}:{o.node.key}:{o.dtype.name}:{o.inplace}" for o in self.outputs]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:20]

    def params_of(self, op: str) -> tuple[Node, ...]:
        return tuple(p for p in self.params if p.op == op)

    @property
    def is_specialized(self) -> bool:
        return isinstance(self.hidden, int)

    def derive(self, *, body: tuple[Node, ...], outputs: tuple[Output, ...],
               hidden: int | sympy.Expr | None = None) -> Block:
        """A new block with the same name and parameters and the given body and outputs."""
        new = Block.__new__(Block)
        new.name, new.params, new.doc = self.name, self.params, self.doc
        new.hidden = self.hidden if hidden is None else hidden
        new.body, new.outputs = body, outputs
        return new

    def verify(self) -> Block:
        """Raise VerifyError when the block breaks a rule; return it unchanged otherwise."""
        from resgen.ir.verify import verify_block

        verify_block(self)
        return self

    def __str__(self) -> str:
        from resgen.ir.printer import print_block

        return print_block(self)

    def __repr__(self) -> str:
        return f"<Block {self.name!r} hidden={self.hidden} params={len(self.params)} outputs={len(self.outputs)}>"

    # -- internals -----------------------------------------------------------------------------
    def _param(self, op: str, name: str, dtype: DType | str) -> Value:
        self._check_name(op, name)
        dt = as_dtype(dtype, what=f"{op} {name!r}: argument 'dtype'")
        if dt.pack > 1 and op != "input":
            raise IRTypeError(f"{op} {name!r}: {dt!r} packs {dt.pack} values per byte, so only a row input or a row "
                              f"output may have it, not a {op}")
        node = make(op, name=name, dtype=dt)
        self.params += (node,)
        return Value(self, node)

    def _check_name(self, op: str, name: str) -> None:
        if not isinstance(name, str) or not _IDENT.match(name) or keyword.iskeyword(name):
            raise VerifyError(f"{op}: argument 'name' must be an ASCII Python identifier that is not a keyword, "
                              f"got {name!r}")
        if name in RESERVED_NAMES:
            raise VerifyError(f"{op}: name {name!r} is reserved (a call keyword: {', '.join(sorted(RESERVED_NAMES))})")
        taken = {p.name for p in self.params} | {o.name for o in self.outputs}
        if name in taken:
            raise VerifyError(f"{op}: duplicate name {name!r} in block {self.name!r}")


def hidden_multiple(block: Block) -> int:
    """What `check_hidden_fits` needs hidden to be a multiple of."""
    return math.lcm(1, *[n.group for n in _live_groups(block)], *[dt.pack for _name, dt in _packed(block)])


def _packed(block: Block) -> list[tuple[str, DType]]:
    """(name, dtype) of the block's parameters and outputs stored several values per element."""
    return [(p.name, p.dtype) for p in block.params if p.dtype.pack > 1] + [
        (o.name, o.dtype) for o in block.outputs if o.dtype.pack > 1]


def _live_groups(block: Block) -> list[Node]:
    """The group values some output uses (a value no output uses constrains nothing)."""
    from resgen.ir.verify import reachable

    return [n for n in reachable([o.node for o in block.outputs]) if n.kind is Kind.GROUP]


def check_hidden_fits(block: Block, hidden: int) -> None:
    """Raise IRTypeError unless every group size of `block` divides `hidden` and every packed row
    tensor holds whole bytes (hidden a multiple of its pack); values no output uses do not count."""
    for n in _live_groups(block):
        if hidden % n.group:
            raise IRTypeError(f"{n.op}: hidden={hidden} is not a multiple of its group size {n.group}; groups of "
                              f"consecutive columns must tile the row")
    for name, dt in _packed(block):
        if hidden % dt.pack:
            raise IRTypeError(f"{name!r}: {dt!r} packs {dt.pack} values per byte, so hidden must be a multiple of "
                              f"{dt.pack}, got {hidden}")


def _has_row_reduction(node: Node) -> bool:
    """True when a column vector depends on the rows (a col_sum), so it is a result, not a weight."""
    from resgen.ir.verify import reachable

    return any(n.op == "col_sum" for n in reachable([node]))


def _block_of(op: str, operands: tuple[Operand, ...]) -> Block:
    for v in operands:
        if isinstance(v, Value):
            return v.block
    raise IRTypeError(f"{op}: at least one argument must be a resgen Value, got only numbers")


def binary(op: str, a: Operand, b: Operand) -> Value:
    return _block_of(op, (a, b)).emit(op, (a, b), arg_names=("a", "b"))


def unary(op: str, v: Value, **attrs: Any) -> Value:
    if not isinstance(v, Value):
        raise IRTypeError(f"{op}: argument 'v' must be a resgen Value, got {type(v).__name__}")
    return v.block.emit(op, (v,), arg_names=("v",), **attrs)


def replace_outputs(outputs: tuple[Output, ...], mapping: dict[Node, Node]) -> tuple[Output, ...]:
    return tuple(replace(o, node=mapping.get(o.node, o.node)) for o in outputs)
