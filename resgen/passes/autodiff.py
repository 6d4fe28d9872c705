"""Reverse-mode automatic differentiation over the IR: the backward of any block is a block.

`grad(block)` lowers the block to primitives, replays its forward values in a new block (the row
statistics the backward needs, such as a norm's mean and rstd, become row-scalar inputs that the
forward saves instead of being recomputed), walks the body backwards applying one adjoint rule per
op, and runs the pass pipeline on the result, including `DistributeRowSums`, which pulls row-scalar
factors out of row sums so that a LayerNorm backward needs one reduction phase, as a hand-written
one does. The backward block is an ordinary block: it prints, verifies, lowers, emits and runs.

Inputs of the backward block: the forward parameters it reads, `saved_<k>` row scalars (float32,
`saved_statistics(block)` names them and `with_saved_statistics(block)` is the forward that writes
them), and one cotangent `d_<output>` per output (the output's dtype and shape). Outputs: `d_<name>`
for every differentiable parameter (row inputs and weights; runtime scalars and row-scalar inputs
are not differentiated), in that parameter's dtype; weight gradients are `col_sum`s, accumulated in
float32 over the rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from resgen.errors import VerifyError
from resgen.ir.block import Block, Output
from resgen.ir.dtypes import f32
from resgen.ir.nodes import PARAM_OPS, Kind, Node, const, make
from resgen.ir.verify import reachable
from resgen.passes.base import rewrite

#: Parameters that gradients are taken with respect to.
DIFFERENTIABLE = ("input", "weight")


def _lowered(block: Block) -> Block:
    from resgen.passes import pipeline

    return pipeline(block, block.hidden if block.is_specialized else None)


def _saved(low: Block) -> list[Node]:
    used = {a for n in low.body if n.kind is Kind.ROW for a in n.args if a.kind is Kind.ROWS and a.op not in PARAM_OPS}
    return [n for n in low.body if n in used]


def saved_statistics(block: Block) -> list[Node]:
    """The row scalars of the lowered forward that row tensors are computed from (a norm's mean and
    rstd): the backward reads them instead of reducing again. In body order."""
    return _saved(_lowered(block))


def with_saved_statistics(block: Block) -> Block:
    """The forward that also outputs `saved_<k>` (float32 row scalars): what a training call runs."""
    low = _lowered(block)
    saved = _saved(low)
    outputs = low.outputs + tuple(Output(f"saved_{k}", n, f32) for k, n in enumerate(saved))
    return low.derive(body=low.body, outputs=outputs)


class _Tape:
    """The backward block under construction: replayed forward values and accumulated adjoints."""

    def __init__(self, low: Block, saved: list[Node]) -> None:
        self.primal: dict[Node, Node] = {}
        self.params: dict[str, Node] = {}
        for p in low.params:
            self.primal[p] = self.param(p.op, p.name, p.dtype)
        for k, n in enumerate(saved):
            self.primal[n] = self.param("row_scalar", f"saved_{k}", f32)
        for n in low.body:
            if n not in self.primal:
                self.primal[n] = make(n.op, tuple(self.primal[a] for a in n.args), **dict(n.attrs))
        self.adjoint: dict[Node, Node] = {}
        self.per_row: dict[Node, Node] = {}  # column vectors: the per-row sum of their contributions
        self.low = low
        self.two_over_hidden = const(2 / low.hidden)

    def mean_of(self, v: Node) -> Node:
        """The backward's value of mean(v): the forward's row_sum(v) * (1/hidden) node when it has
        one (a LayerNorm's, so the saved statistic), else a new row sum of v's value."""
        for n in self.low.body:
            if n.op == "mul" and n.args[0].op == "row_sum" and n.args[0].args[0] is v and n.args[1].op == "const" \
                    and n.args[1].attr("value") == 1 / self.low.hidden:
                return self.primal[n]
        return make("mul", (make("row_sum", (self.primal[v],)), const(1 / self.low.hidden)))

    def param(self, op: str, name: str, dtype) -> Node:
        node = make(op, name=name, dtype=dtype)
        self.params[name] = node
        return node

    def add(self, node: Node, value: Node) -> None:
        """Accumulate `value` into the adjoint of forward `node`, reducing what it broadcast over."""
        if node.kind is Kind.SCALAR or node.op == "const":
            return  # runtime scalars and constants are not differentiated
        if node.kind is Kind.ROWS and value.kind is Kind.ROW:
            value = make("row_sum", (value,))
        elif node.kind is Kind.GROUP and value.kind is Kind.ROW:  # a group value broadcast over its columns
            value = make("group_sum", (value,), size=node.group)
        elif node.kind is Kind.COL and value.kind is Kind.ROW:  # summed over the rows once, in `get`
            old = self.per_row.get(node)
            self.per_row[node] = value if old is None else make("add", (old, value))
            return
        elif node.kind is Kind.COL and value.kind is Kind.ROWS:
            raise VerifyError(f"grad: a column vector's adjoint would be a row scalar (at {node.op})")
        old = self.adjoint.get(node)
        self.adjoint[node] = value if old is None else make("add", (old, value))

    def get(self, node: Node) -> Node | None:
        """The adjoint of `node` once every use has contributed (one col_sum per column vector)."""
        rows = self.per_row.pop(node, None)
        if rows is not None:
            total = make("col_sum", (rows,))
            old = self.adjoint.get(node)
            self.adjoint[node] = total if old is None else make("add", (old, total))
        return self.adjoint.get(node)


def _op(name: str, *args: Node | float, **attrs) -> Node:
    return make(name, tuple(a if isinstance(a, Node) else const(a) for a in args), **attrs)


def _backprop(tape: _Tape, n: Node, a: Node) -> None:
    """Add the contributions of node `n`, whose adjoint is `a`, to its operands' adjoints."""
    P = tape.primal  # noqa: N806 - the forward value of a node, in the backward block
    op, args = n.op, n.args
    if op == "add":
        tape.add(args[0], a)
        tape.add(args[1], a)
    elif op == "sub":
        tape.add(args[0], a)
        tape.add(args[1], _op("neg", a))
    elif op == "mul":
        tape.add(args[0], _op("mul", a, P[args[1]]))
        tape.add(args[1], _op("mul", a, P[args[0]]))
    elif op == "div":
        tape.add(args[0], _op("div", a, P[args[1]]))
        tape.add(args[1], _op("neg", _op("div", _op("mul", a, P[n]), P[args[1]])))
    elif op == "neg":
        tape.add(args[0], _op("neg", a))
    elif op == "sqrt":
        tape.add(args[0], _op("div", _op("mul", a, 0.5), P[n]))
    elif op == "rsqrt":
        cube = _op("mul", P[n], _op("mul", P[n], P[n]))
        tape.add(args[0], _op("mul", a, _op("mul", cube, -0.5)))
    elif op == "abs":
        x = P[args[0]]
        tape.add(args[0], _op("mul", a, _op("sub", _op("gt", x, 0.0), _op("gt", 0.0, x))))
    elif op == "maximum":  # torch's rule: a tie splits the gradient in half
        x, y = P[args[0]], P[args[1]]
        tie = _op("mul", _op("eq", x, y), 0.5)
        tape.add(args[0], _op("mul", a, _op("add", _op("gt", x, y), tie)))
        tape.add(args[1], _op("mul", a, _op("add", _op("gt", y, x), tie)))
    elif op == "minimum":
        x, y = P[args[0]], P[args[1]]
        tie = _op("mul", _op("eq", x, y), 0.5)
        tape.add(args[0], _op("mul", a, _op("add", _op("gt", y, x), tie)))
        tape.add(args[1], _op("mul", a, _op("add", _op("gt", x, y), tie)))
    elif op == "log2":  # 1 / (x ln 2)
        tape.add(args[0], _op("div", a, _op("mul", P[args[0]], math.log(2.0))))
    elif op == "exp2":  # 2^x ln 2
        tape.add(args[0], _op("mul", a, _op("mul", P[n], math.log(2.0))))
    elif op == "cast":  # torch rounds the gradient to the cast's dtype
        tape.add(args[0], make("cast", (a,), dtype=n.attr("dtype")))
    elif op == "dropout":  # the same mask, regenerated from (seed, offset, row, column, site)
        if a.kind is not Kind.ROW:
            raise VerifyError("grad: dropout's adjoint is not a row tensor")
        tape.add(args[0], make("dropout", (a,), **dict(n.attrs)))
    elif op in ("row_sum", "col_sum"):
        tape.add(args[0], a)
    elif op == "row_var":  # d var / d v = 2 (v - mean(v)) / hidden, with the forward's mean where it has one
        mean = tape.mean_of(args[0])
        tape.add(args[0], _op("mul", a, _op("mul", _op("sub", P[args[0]], mean), tape.two_over_hidden)))
    elif op == "row_max":  # torch's rule: the gradient is shared evenly by the maxima of the row
        hit = _op("eq", P[args[0]], P[n])
        tape.add(args[0], _op("mul", a, _op("div", hit, make("row_sum", (hit,)))))
    elif op in ("eq", "gt", "const", "round", "floor", "exponent"):
        pass  # piecewise constant: no gradient
    elif op == "group_sum":  # the adjoint, a group value, broadcasts back over the group's columns
        tape.add(args[0], a)
    elif op == "group_max":  # as row_max: shared evenly by the maxima of the group
        hit = _op("eq", P[args[0]], P[n])
        tape.add(args[0], _op("mul", a, _op("div", hit, make("group_sum", (hit,), size=n.group))))
    else:
        raise VerifyError(f"grad: no adjoint rule for op {op!r}")


def grad(block: Block, wrt: Sequence[str] | None = None) -> Block:
    """The backward block of `block` (see the module docstring); `wrt` limits the gradients to these
    parameter names (row inputs and weights only: row-input gradients need no column reduction)."""
    low = _lowered(block)
    names = [p.name for p in low.params if p.op in DIFFERENTIABLE]
    if wrt is not None:
        unknown = [n for n in wrt if n not in names]
        if unknown:
            raise VerifyError(f"grad: argument 'wrt' names {unknown}, which are not row inputs or weights of "
                              f"{block.name!r} (differentiable: {names})")
        names = [n for n in names if n in wrt]
    saved = _saved(low)
    taken = {p.name for p in low.params}
    ours = [f"saved_{k}" for k in range(len(saved))] + [f"d_{o.name}" for o in low.outputs]
    clash = sorted(taken & set(ours))
    if clash:
        raise VerifyError(f"grad: parameters {clash} of {block.name!r} take names the backward block gives its "
                          f"saved statistics and cotangents (saved_<k>, d_<output>); rename them")
    tape = _Tape(low, saved)
    cotangent_op = {Kind.ROW: "input", Kind.ROWS: "row_scalar", Kind.COL: "weight"}
    for o in low.outputs:
        if o.node.kind not in cotangent_op:
            raise VerifyError(f"grad: output {o.name!r} is a {o.node.kind.value} value, which has no gradient rule yet "
                              f"(block-scaled quantizers are inference-only)")
        tape.add(o.node, tape.param(cotangent_op[o.node.kind], f"d_{o.name}", o.dtype))
    for n in reversed(low.body):  # a saved statistic is an input of the backward, but its gradient still flows
        adjoint = tape.get(n)
        if adjoint is not None:
            _backprop(tape, n, adjoint)
    outputs = []
    for p in low.params:
        if p.name not in names:
            continue
        adj = tape.get(p)
        if adj is None or adj.kind is not p.kind:
            raise VerifyError(f"grad: the gradient of {p.op} {p.name!r} does not depend on its columns one by one "
                              f"(it would be {adj.kind if adj is not None else 'zero'}); not supported yet")
        outputs.append(Output(f"d_{p.name}", adj, p.dtype))
    return _assemble(f"{block.name}_grad", low, tape, outputs)


def _assemble(name: str, low: Block, tape: _Tape, outputs: list[Output]) -> Block:
    """A verified block of the nodes the outputs reach, parameters in a fixed order (forward
    parameters, saved statistics, cotangents), simplified by the pass pipeline."""
    from resgen.passes import pipeline

    live = reachable([o.node for o in outputs])
    live_ids = {id(n) for n in live}
    order = [n for n in tape.params.values() if id(n) in live_ids]
    gb = Block(name, hidden=low.hidden)
    gb.params = tuple(order)
    gb.body = tuple(n for n in live if n.op not in PARAM_OPS)
    gb.outputs = tuple(outputs)
    gb.doc = f"The backward of {low.name}, derived by resgen.passes.autodiff."
    hidden = low.hidden if low.is_specialized else None
    return pipeline(DistributeRowSums().run(pipeline(gb.verify(), hidden)), hidden)


@dataclass(frozen=True)
class DistributeRowSums:
    """row_sum(a * s) -> row_sum(a) * s for a row scalar or scalar s, and row_sum over +, -, neg and
    over a row scalar s (s * H): reductions that only waited for s become independent of it, so
    they share one phase (exact in real arithmetic; in float32 the rounding differs slightly, as in
    every hand-written norm backward)."""

    name: str = "distribute-row-sums"

    def run(self, block: Block) -> Block:
        return rewrite(block, _distribute)


def _broadcast(node: Node) -> bool:
    return node.kind in (Kind.ROWS, Kind.SCALAR)


def _distribute(node: Node) -> Node:
    if node.op != "row_sum":
        return node
    v = node.args[0]
    if v.op in ("add", "sub") and v.args[0].kind is Kind.ROW and v.args[1].kind is Kind.ROW:
        return make(v.op, (_distribute(make("row_sum", (v.args[0],))), _distribute(make("row_sum", (v.args[1],)))))
    if v.op == "neg":
        return make("neg", (_distribute(make("row_sum", (v.args[0],))),))
    if v.op in ("mul", "div") and _broadcast(v.args[1]) and v.args[0].kind is Kind.ROW:
        return make(v.op, (_distribute(make("row_sum", (v.args[0],))), v.args[1]))
    if v.op == "mul" and _broadcast(v.args[0]) and v.args[1].kind is Kind.ROW:
        return make("mul", (_distribute(make("row_sum", (v.args[1],))), v.args[0]))
    return node


def distinct_outputs(block: Block) -> tuple[Block, dict[str, str]]:
    """`block` without the outputs that repeat an earlier one (the same value in the same dtype), and
    for each dropped output the name of the one it repeats. A residual add hands one gradient to
    both its operands (torch's own add does the same): written once, returned for both."""
    kept: list[Output] = []
    same: dict[str, str] = {}
    for o in block.outputs:
        twin = next((k for k in kept if k.node is o.node and k.dtype == o.dtype and not (k.inplace or o.inplace)),
                    None)
        if twin is None:
            kept.append(o)
        else:
            same[o.name] = twin.name
    return (block.derive(body=block.body, outputs=tuple(kept)) if same else block), same
