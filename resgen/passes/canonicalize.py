from __future__ import annotations

from dataclasses import dataclass

import sympy
import torch

from resgen.ir.block import Block
from resgen.ir.dtypes import f32, rounded
from resgen.ir.nodes import BINARY_OPS, UNARY_OPS, Node, const, make
from resgen.passes.base import rewrite

_FOLD = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
    "maximum": sympy.Max,
    "minimum": sympy.Min,
    "floor": sympy.floor,
    "neg": lambda a: -a,
    "sqrt": sympy.sqrt,
    "rsqrt": lambda a: 1 / sympy.sqrt(a),
    "abs": sympy.Abs,
}


def round_to(value: sympy.Expr, node: Node) -> sympy.Expr:
    """A numeric constant rounded to the storage dtype of a cast, as torch rounds it."""
    as_float = rounded(torch.tensor(float(value), dtype=torch.float32), node.attr("dtype"))
    return sympy.Float(as_float.item())


def _is_const(node: Node, value: float | None = None) -> bool:
    if node.op != "const":
        return False
    v = node.attr("value")
    return value is None or (v.is_number and float(v) == value)


def fold(node: Node) -> Node | None:
    """The constant `node` computes when all its operands are constants, else None."""
    if not node.args or not all(_is_const(a) for a in node.args):
        return None
    values = [a.attr("value") for a in node.args]
    if node.op in _FOLD:
        result = sympy.simplify(_FOLD[node.op](*values))
    elif node.op == "cast" and all(v.is_number for v in values):
        result = round_to(values[0], node)
    else:
        return None
    if result.has(sympy.zoo, sympy.nan, sympy.oo, -sympy.oo, sympy.I):
        return None
    return const(result)


def simplify(node: Node) -> Node:
    """`node` with algebraic identities applied that hold exactly in float32."""
    op, args = node.op, node.args
    if op in ("add", "sub") and _is_const(args[1], 0):
        return args[0]
    if op == "add" and _is_const(args[0], 0):
        return args[1]
    if op == "sub" and _is_const(args[0], 0):
        return make("neg", (args[1],))
    if op in ("mul", "div") and _is_const(args[1], 1):
        return args[0]
    if op == "mul" and _is_const(args[0], 1):
        return args[1]
    if op == "mul" and _is_const(args[1], -1):
        return make("neg", (args[0],))
    if op == "mul" and _is_const(args[0], -1):
        return make("neg", (args[1],))
    if op == "neg" and args[0].op == "neg":
        return args[0].args[0]
    if op == "cast":
        inner = args[0]
        if node.attr("dtype") == f32:
            return inner
        exact = inner.op in ("input", "weight", "scalar") or (inner.op == "cast")
        if exact and inner.dtype == node.attr("dtype"):
            return inner
    if op == "dropout" and node.attr("p") == 0.0:
        return args[0]
    return node


@dataclass(frozen=True)
class Canonicalize:
    """Fold scalar constant subexpressions with sympy and apply exact algebraic identities."""

    name: str = "canonicalize"

    def run(self, block: Block) -> Block:
        def step(node: Node) -> Node:
            if node.op in BINARY_OPS + UNARY_OPS + ("cast",):
                folded = fold(node)
                if folded is not None:
                    return folded
            return simplify(node)

        return rewrite(block, step)
