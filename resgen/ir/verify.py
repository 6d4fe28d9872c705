"""The IR's invariants, checked in one place; every pass leaves a block that satisfies them."""

from __future__ import annotations

from resgen.errors import VerifyError
from resgen.ir.block import Block
from resgen.ir.nodes import ALL_OPS, OUTPUT_KINDS, PARAM_OPS, H, Node, infer


def reachable(roots: list[Node]) -> list[Node]:
    """Every node reachable from `roots`, operands before users, in a deterministic order."""
    seen: set[int] = set()
    order: list[Node] = []
    stack: list[tuple[Node, bool]] = [(r, False) for r in reversed(roots)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.append((node, True))
        stack.extend((a, False) for a in reversed(node.args) if id(a) not in seen)
    return order


def verify_block(block: Block) -> None:
    """Raise VerifyError naming the offending op or name when `block` breaks an IR rule."""
    where = f"block {block.name!r}"
    if not (block.hidden == H or (isinstance(block.hidden, int) and block.hidden >= 1)):
        raise VerifyError(f"{where}: hidden must be the symbol H or an int >= 1, got {block.hidden!r}")
    if not block.outputs:
        raise VerifyError(f"{where}: has no outputs; declare one with b.output(name, value)")
    if not block.params_of("input"):
        raise VerifyError(f"{where}: needs at least one row input (b.input) to define its rows")
    names = [p.name for p in block.params] + [o.name for o in block.outputs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise VerifyError(f"{where}: duplicate names {dupes}")
    defined: set[int] = {id(p) for p in block.params}
    for p in block.params:
        if p.op not in PARAM_OPS:
            raise VerifyError(f"{where}: parameter {p!r} is not one of {PARAM_OPS}")
    for node in block.body:
        if node.op not in ALL_OPS or node.op in PARAM_OPS:
            raise VerifyError(f"{where}: body holds {node.op!r}, which is not a computation op")
        for i, a in enumerate(node.args):
            if id(a) not in defined:
                raise VerifyError(f"{where}: {node.op}: operand {i} is not defined before it in this block")
        kind, dtype = infer(node.op, node.args, dict(node.attrs))
        if (kind, dtype) != (node.kind, node.dtype):
            raise VerifyError(
                f"{where}: {node.op}: typed {node.kind}<{node.dtype}> but its operands give {kind}<{dtype}>"
            )
        if node.op == "const":
            free = node.attr("value").free_symbols - {H}
            if free or (block.is_specialized and node.attr("value").free_symbols):
                raise VerifyError(f"{where}: const {node.attr('value')} has unbound symbols")
        defined.add(id(node))
    for out in block.outputs:
        if id(out.node) not in defined:
            raise VerifyError(f"{where}: output {out.name!r} refers to a value of another block")
        if out.node.kind not in OUTPUT_KINDS:
            raise VerifyError(f"{where}: output {out.name!r} must be a row tensor, row scalar, group value or column "
                              f"reduction, got {out.node.kind}")
    used = {id(n) for n in reachable([o.node for o in block.outputs])}
    for p in block.params:
        if id(p) not in used:
            raise VerifyError(f"{where}: {p.op} {p.name!r} is not used by any output")

