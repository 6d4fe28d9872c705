"""The semantics of the IR, executable: a PyTorch interpreter with float32 arithmetic.

Values are float32 tensors: row tensors [rows, hidden], column vectors [hidden], row scalars
[rows, 1], scalars 0-d. Rounding happens only at `cast` and at outputs. Row sums accumulate in
float64 and round once, so the reference is the float32 value nearest the exact sum.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sympy
import torch

from resgen.ir.block import Block
from resgen.ir.dtypes import from_storage, rounded, to_storage
from resgen.ir.nodes import H, Kind, Node
from resgen.passes.decompose import DecomposeNorms
from resgen.philox import keep_mask
from resgen.signature import BoundCall, Outputs, bind

_BINARY: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div, "maximum": torch.maximum,
    "minimum": torch.minimum,
    "eq": lambda a, b: (a == b).float(), "gt": lambda a, b: (a > b).float(),
}
_UNARY: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "neg": torch.neg, "sqrt": torch.sqrt, "rsqrt": torch.rsqrt, "abs": torch.abs, "round": torch.round,
    "floor": torch.floor, "log2": torch.log2, "exp2": torch.exp2,
}


def exponent(v: torch.Tensor) -> torch.Tensor:
    """floor(log2(v)) exactly (rg.exponent): frexp's exponent less one; -inf at 0, inf at inf, NaN below 0."""
    e = (torch.frexp(v).exponent - 1).float()
    e = torch.where(v == 0, float("-inf"), e)
    e = torch.where(torch.isinf(v), float("inf"), e)
    return torch.where((v < 0) | v.isnan(), float("nan"), e)


def f32_constant(value: sympy.Expr, hidden: int, device: torch.device) -> torch.Tensor:
    """A constant of the IR as the float32 number every backend uses."""
    return torch.tensor(float(value.subs(H, hidden)), dtype=torch.float32, device=device)


def dropout_scale(p: float) -> float:
    """The float32 factor kept elements are multiplied by."""
    return float(torch.tensor(1.0 / (1.0 - p), dtype=torch.float32))


class _Interpreter:
    def __init__(self, call: BoundCall, device: torch.device, accumulate: torch.dtype) -> None:
        self.call = call
        self.device = device
        self.accumulate = accumulate
        self.values: dict[Node, torch.Tensor] = {}  # keyed by identity; holds nodes alive

    def param(self, node: Node) -> torch.Tensor:
        name = node.name
        if node.op == "scalar":
            return torch.tensor(self.call.scalars[name], dtype=torch.float32, device=self.device)
        t = from_storage(self.call.tensors[name], node.dtype)
        if node.op == "input":
            return t.reshape(self.call.rows, self.call.hidden)
        if node.op == "row_scalar":
            return t.reshape(self.call.rows, 1)
        return t

    def eval(self, node: Node) -> torch.Tensor:
        cached = self.values.get(node)
        if cached is not None:
            return cached
        result = self._compute(node)
        self.values[node] = result
        return result

    def broadcast(self, arg: Node, user: Node) -> torch.Tensor:
        """`arg`'s value as `user` combines it: a group value repeated over its columns for a row result."""
        value = self.eval(arg)
        if arg.kind is Kind.GROUP and user.kind is Kind.ROW:
            return value.repeat_interleave(arg.group, dim=-1)
        return value

    def _compute(self, node: Node) -> torch.Tensor:
        op = node.op
        if op in ("input", "weight", "scalar", "row_scalar"):
            return self.param(node)
        if op == "const":
            return f32_constant(node.attr("value"), self.call.hidden, self.device)
        if op in ("layer_norm", "rms_norm", "row_mean"):
            return self.eval(DecomposeNorms.lower(node))
        args = [self.broadcast(a, node) for a in node.args]
        if op in _BINARY:
            return _BINARY[op](*args)
        if op in _UNARY:
            return _UNARY[op](args[0])
        if op == "exponent":
            return exponent(args[0])
        if op in ("group_max", "group_sum"):
            groups = args[0].reshape(self.call.rows, self.call.hidden // node.group, node.group)
            if op == "group_max":  # amax ignores NaN on some builds: put it back
                return torch.where(groups.isnan().any(-1), float("nan"), groups.amax(-1))
            return groups.to(self.accumulate).sum(-1).float()
        if op == "cast":
            return rounded(args[0], node.attr("dtype"))
        if op == "row_sum":
            return args[0].to(self.accumulate).sum(dim=-1, keepdim=True).float()
        if op == "row_max":
            return args[0].amax(dim=-1, keepdim=True)
        if op == "row_var":
            return args[0].to(self.accumulate).var(dim=-1, unbiased=False, keepdim=True).float()
        if op == "col_sum":
            return args[0].to(self.accumulate).sum(dim=0).float()
        if op == "dropout":
            p = node.attr("p")
            mask = keep_mask(self.call.rows, self.call.hidden, p, self.call.seed, self.call.offset,
                             node.attr("site"))
            keep = torch.from_numpy(mask).to(self.device)
            return torch.where(keep, args[0] * dropout_scale(p), torch.zeros((), device=self.device))
        raise NotImplementedError(f"reference: no rule for op {op!r}")


def evaluate(block: Block, call: BoundCall, accumulate: torch.dtype = torch.float64) -> Outputs:
    """Run `block` on already-bound arguments; outputs keep the inputs' leading shape.

    `accumulate` is the dtype row sums are taken in: float64 for the reference; float32 gives the
    plain PyTorch code a user would write (the benchmark's eager baseline for any block).
    """
    device = next(iter(call.tensors.values())).device
    interp = _Interpreter(call, device, accumulate)
    results: dict[str, torch.Tensor] = {}
    for out in block.outputs:
        value = interp.eval(out.node)
        if out.node.kind is Kind.ROW:
            value = value.expand(call.rows, call.hidden).reshape(*call.lead, call.hidden)
        elif out.node.kind is Kind.GROUP:
            value = value.reshape(*call.lead, call.hidden // out.node.group)
        elif out.node.kind is Kind.COL:
            value = value.expand(call.hidden)
        else:
            value = value.reshape(call.rows).reshape(call.lead)
        results[out.name] = to_storage(value, out.dtype)
    return Outputs(results)


def reference(block: Block, **kwargs: Any) -> Outputs:
    """Evaluate `block` on torch tensors by parameter name (plus `seed=`, `offset=`, runtime scalars).

    Inputs may have any leading dimensions and strides; outputs are new tensors (an in-place
    output's input is not modified).
    """
    block.verify()
    return evaluate(block, bind(block, kwargs))
