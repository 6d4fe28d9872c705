"""Parse the printer's text back into a Block (print -> parse -> print is the identity)."""

from __future__ import annotations

import re
from typing import Any

import sympy

from resgen.errors import VerifyError
from resgen.ir.block import Block, Output
from resgen.ir.dtypes import DTYPES, as_dtype
from resgen.ir.nodes import H, Node, make

_HEADER = re.compile(r"^block @(\w+)\(hidden = (\w+)\) \{$")
_PARAM = re.compile(r'^%(\w+) = (input|weight|scalar) "(\w+)" : (\w+)<(\w+)>$')
_NODE = re.compile(r"^%(\d+) = (\w+) (.*?)(?: \{(.*)\})? : (\w+)<(\w+)>$")
_OUTPUT = re.compile(r'^output "(\w+)" = %(\w+) : (\w+)<(\w+)>(?: inplace "(\w+)")?$')


def _attr_value(key: str, text: str) -> Any:
    if text in ("True", "False"):
        return text == "True"
    if key == "dtype":
        return as_dtype(text, what="parse: attribute 'dtype'")
    if key == "site":
        return int(text)
    return float(text)


def _attrs(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    pairs = (item.split(" = ", 1) for item in text.split(", "))
    return {k: _attr_value(k, v) for k, v in pairs}


def _check_type(where: str, node: Node, kind: str, dtype: str) -> None:
    if (node.kind.value, node.dtype.name) != (kind, dtype):
        raise VerifyError(f"parse: {where}: declared {kind}<{dtype}> but the op gives {node.kind}<{node.dtype}>")


def parse_block(text: str) -> Block:
    """The Block a `print_block` text describes; VerifyError names the line that is wrong."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip() and not ln.strip().startswith("//")]
    head = _HEADER.match(lines[0]) if lines else None
    if head is None or lines[-1] != "}":
        raise VerifyError("parse: expected 'block @name(hidden = H) { ... }'")
    hidden: int | sympy.Expr = H if head.group(2) == "H" else int(head.group(2))
    block = Block(head.group(1), hidden=hidden)
    values: dict[str, Node] = {}
    body: list[Node] = []
    outputs: list[Output] = []
    for number, line in enumerate(lines[1:-1], start=2):
        where = f"line {number} {line!r}"
        if m := _PARAM.match(line):
            ssa, op, name, kind, dtype = m.groups()
            node = make(op, name=name, dtype=as_dtype(dtype, what=where))
            _check_type(where, node, kind, dtype)
            block.params += (node,)
            values[ssa] = node
        elif m := _OUTPUT.match(line):
            name, ssa, kind, dtype, inplace = m.groups()
            if ssa not in values or dtype not in DTYPES:
                raise VerifyError(f"parse: {where}: unknown value %{ssa} or dtype {dtype}")
            outputs.append(Output(name, values[ssa], DTYPES[dtype], inplace))
        elif m := _NODE.match(line):
            ssa, op, operands, attr_text, kind, dtype = m.groups()
            if op == "const":
                node = make("const", value=sympy.sympify(operands, locals={"H": H}))
            else:
                names = [o.strip().lstrip("%") for o in operands.split(",") if o.strip()]
                missing = [n for n in names if n not in values]
                if missing:
                    raise VerifyError(f"parse: {where}: operands {missing} are not defined above")
                node = make(op, tuple(values[n] for n in names), **_attrs(attr_text))
            _check_type(where, node, kind, dtype)
            values[ssa] = node
            body.append(node)
        else:
            raise VerifyError(f"parse: {where}: not a parameter, op or output line")
    parsed = block.derive(body=tuple(body), outputs=tuple(outputs))
    return parsed.verify()
