"""A deterministic, MLIR-like text form of a block."""

from __future__ import annotations

import sympy

from resgen.ir.block import Block
from resgen.ir.nodes import Node


def format_attr(value: object) -> str:
    if isinstance(value, sympy.Float):
        return repr(float(value))
    if isinstance(value, sympy.Basic):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


def print_block(block: Block) -> str:
    """The block as text: one SSA line per node, parameters named `%name`, the rest numbered."""
    names: dict[int, str] = {id(p): f"%{p.name}" for p in block.params}
    lines = [f"block @{block.name}(hidden = {block.hidden}) {{"]
    for p in block.params:
        lines.append(f"  {names[id(p)]} = {p.op} \"{p.name}\" : {p.kind}<{p.dtype}>")
    for i, node in enumerate(block.body):
        names[id(node)] = f"%{i}"
        lines.append(f"  %{i} = {_format_node(node, names)}")
    for out in block.outputs:
        inplace = f" inplace \"{out.inplace}\"" if out.inplace else ""
        lines.append(f"  output \"{out.name}\" = {names[id(out.node)]} : {out.node.kind}<{out.dtype}>{inplace}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _format_node(node: Node, names: dict[int, str]) -> str:
    if node.op == "const":
        return f"const {format_attr(node.attr('value'))} : {node.kind}<{node.dtype}>"
    operands = ", ".join(names[id(a)] for a in node.args)
    attrs = node.attrs
    attr_text = " {" + ", ".join(f"{k} = {format_attr(v)}" for k, v in attrs) + "}" if attrs else ""
    return f"{node.op} {operands}{attr_text} : {node.kind}<{node.dtype}>"
