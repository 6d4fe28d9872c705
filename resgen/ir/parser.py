"""Parse the printer's text back into a Block (print -> parse -> print is the identity).

A `.rgir` file is untrusted input: no text is ever evaluated. Constants and the hidden size are
read by a small grammar of our own (decimal and float literals, `H`, + - * / ** with small integer
exponents, parentheses), bounded in length and depth, and every node is built through the same
checks as the Python builder. Every error is one SpecError naming the line and what was expected.
"""

from __future__ import annotations

import math
import re
from typing import Any

import sympy

from resgen.errors import ResgenError, SpecError
from resgen.ir.block import Block, Value
from resgen.ir.dtypes import DType, as_dtype
from resgen.ir.nodes import PARAM_OPS, H, Node, make

#: Bounds on a constant expression: characters, nesting depth, and |exponent| of `**`.
MAX_EXPR_CHARS = 200
MAX_EXPR_DEPTH = 16
MAX_EXPONENT = 16
MAX_BITS = 4096

_HEADER = re.compile(r"^block @(\w+)\(hidden = (\w+)\) \{$")
_PARAM = re.compile(r'^%(\w+) = (\w+) "(\w+)" : (\w+)<(\w+)>$')
_NODE = re.compile(r"^%(\d+) = (\w+) (.*?)(?: \{(.*)\})? : (\w+)<(\w+)>$")
_OUTPUT = re.compile(r'^output "(\w+)" = %(\w+) : (\w+)<(\w+)>(?: inplace "(\w+)")?$')
_TOKEN = re.compile(r"\s*(?:(\d+\.\d*(?:[eE][+-]?\d+)?|\d+[eE][+-]?\d+|\.\d+(?:[eE][+-]?\d+)?)|(\d+)|(H)|(\*\*|[-+*/()]))")


class _Expr:
    """Recursive descent over the tokens of one constant: sum := term (('+'|'-') term)*,
    term := unary (('*'|'/') unary)*, unary := '-' unary | power, power := atom ('**' unary)?,
    atom := number | 'H' | '(' sum ')'."""

    def __init__(self, text: str) -> None:
        if len(text) > MAX_EXPR_CHARS:
            raise ValueError(f"a constant of at most {MAX_EXPR_CHARS} characters, got {len(text)}")
        self.tokens: list[tuple[str, str]] = []
        pos = 0
        while pos < len(text.rstrip()):
            m = _TOKEN.match(text, pos)
            if m is None:
                raise ValueError(f"a number, H, + - * / ** or parentheses, got {text[pos:].strip()[:20]!r}")
            kind = ("float", "int", "H", "op")[next(i for i, g in enumerate(m.groups()) if g is not None)]
            self.tokens.append((kind, m.group(m.lastindex)))
            pos = m.end()
        self.i, self.depth = 0, 0

    def parse(self) -> sympy.Expr:
        value = self.sum()
        if self.i != len(self.tokens):
            raise ValueError(f"an operator or the end of the constant, got {self.tokens[self.i][1]!r}")
        return value

    def peek(self) -> str | None:
        return self.tokens[self.i][1] if self.i < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        if self.i >= len(self.tokens):
            raise ValueError("more of the constant (it ends early)")
        self.i += 1
        return self.tokens[self.i - 1]

    def nest(self) -> None:
        self.depth += 1
        if self.depth > MAX_EXPR_DEPTH:
            raise ValueError(f"a constant nested at most {MAX_EXPR_DEPTH} deep")

    def sum(self) -> sympy.Expr:
        value = self.term()
        while self.peek() in ("+", "-"):
            op = self.take()[1]
            rhs = self.term()
            value = value + rhs if op == "+" else value - rhs
        return value

    def term(self) -> sympy.Expr:
        value = self.unary()
        while self.peek() in ("*", "/"):
            op = self.take()[1]
            rhs = self.unary()
            if op == "/" and rhs == 0:
                raise ValueError("no division by zero")
            value = value * rhs if op == "*" else value / rhs
        return value

    def unary(self) -> sympy.Expr:
        if self.peek() == "-":
            self.take()
            self.nest()
            value = -self.unary()
            self.depth -= 1
            return value
        return self.power()

    def power(self) -> sympy.Expr:
        base = self.atom()
        if self.peek() != "**":
            return base
        self.take()
        self.nest()
        exponent = self.unary()
        self.depth -= 1
        if not (exponent.is_Integer and abs(int(exponent)) <= MAX_EXPONENT):
            raise ValueError(f"an integer exponent in [-{MAX_EXPONENT}, {MAX_EXPONENT}], got {exponent}")
        if base == 0 and exponent < 0:
            raise ValueError("no division by zero")
        if base.is_Rational and max(abs(base.p), base.q).bit_length() * abs(int(exponent)) > MAX_BITS:
            raise ValueError(f"a constant of at most {MAX_BITS} bits")
        return base ** exponent

    def atom(self) -> sympy.Expr:
        kind, text = self.take()
        if kind == "int":
            return sympy.Integer(int(text))
        if kind == "float":
            value = float(text)
            if not math.isfinite(value):
                raise ValueError(f"a finite number, got {text}")
            return sympy.Float(value)
        if kind == "H":
            return H
        if text == "(":
            self.nest()
            value = self.sum()
            if self.take()[1] != ")":
                raise ValueError("a closing parenthesis")
            self.depth -= 1
            return value
        raise ValueError(f"a number, H or '(', got {text!r}")


def parse_constant(text: str) -> sympy.Expr:
    """The value of a constant expression (`1e-06`, `1/H`, `2*(H + 1)**-1`); ValueError says what
    was expected. Nothing is evaluated but this grammar."""
    value = _Expr(text.strip()).parse()
    if value.is_number and not math.isfinite(float(value)):
        raise ValueError(f"a constant within float range, got {text.strip()[:40]}")
    return value


def _attr_value(key: str, text: str) -> Any:
    """An attribute's text as the value its op's schema checks (bool, int, float or dtype)."""
    if text in ("True", "False"):
        return text == "True"
    if key == "dtype":
        return as_dtype(text, what=f"attribute {key!r}")
    if re.fullmatch(r"[+-]?\d+", text):
        return int(text)
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"attribute {key!r}: a number, True or False, got {text!r}") from None


def _attrs(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    attrs: dict[str, Any] = {}
    for item in text.split(", "):
        key, sep, value = item.partition(" = ")
        if not sep or not key.isidentifier():
            raise ValueError(f"attributes as 'name = value, ...', got {item!r}")
        attrs[key] = _attr_value(key, value.strip())
    return attrs


def _float_attrs(op: str, attrs: dict[str, Any]) -> dict[str, Any]:
    """Integers written where a float attribute is expected (eps = 0) become floats, as the builder's."""
    floats = {"eps", "offset", "p"}
    return {k: float(v) if k in floats and isinstance(v, int) and not isinstance(v, bool) else v
            for k, v in attrs.items()}


def _dtype_named(text: str, where: str) -> DType:
    return as_dtype(text, what=where)


def _check_type(node: Node, kind: str, dtype: str) -> None:
    if (node.kind.value, node.dtype.name) != (kind, dtype):
        raise ValueError(f"declared {kind}<{dtype}> but the op gives {node.kind}<{node.dtype}>")


def parse_block(text: str) -> Block:
    """The Block a `print_block` text describes; SpecError names the line that is wrong."""
    lines = [(i, ln.strip()) for i, ln in enumerate(text.splitlines(), start=1)
             if ln.strip() and not ln.strip().startswith("//")]
    head = _HEADER.match(lines[0][1]) if lines else None
    if head is None or lines[-1][1] != "}":
        raise SpecError("parse: expected 'block @name(hidden = H) { ... }' (the form `resgen ir` prints)")
    hidden_text = head.group(2)
    try:
        if hidden_text == "H":
            block = Block(head.group(1))
        elif hidden_text.isdigit():
            block = Block(head.group(1), hidden=int(hidden_text))
        else:
            raise ValueError(f"hidden = H or an integer, got {hidden_text!r}")
    except (ValueError, ResgenError) as exc:
        raise SpecError(f"parse: line {lines[0][0]}: {exc}") from None
    values: dict[str, Node] = {}
    for number, line in lines[1:-1]:
        try:
            _parse_line(block, values, line)
        except (ValueError, ResgenError) as exc:
            raise SpecError(f"parse: line {number} {line!r}: {exc}") from None
    try:
        return block.verify()
    except ResgenError as exc:
        raise SpecError(f"parse: {exc}") from None


def _parse_line(block: Block, values: dict[str, Node], line: str) -> None:
    if m := _PARAM.match(line):
        ssa, op, name, kind, dtype = m.groups()
        if op not in PARAM_OPS:
            raise ValueError(f"a parameter op ({', '.join(PARAM_OPS)}), got {op!r}")
        if ssa != name:
            raise ValueError(f"a parameter's value is named after it (%{name}), got %{ssa}")
        handle = getattr(block, op)(name, _dtype_named(dtype, "parameter dtype"))
        _check_type(handle.node, kind, dtype)
        values[ssa] = handle.node
    elif m := _OUTPUT.match(line):
        name, ssa, kind, dtype, inplace = m.groups()
        if ssa not in values:
            raise ValueError(f"a value defined above, got %{ssa}")
        if values[ssa].kind.value != kind:
            raise ValueError(f"declared {kind} but %{ssa} is a {values[ssa].kind}")
        block.output(name, Value(block, values[ssa]), dtype=_dtype_named(dtype, "output dtype"), inplace=inplace)
    elif m := _NODE.match(line):
        ssa, op, operands, attr_text, kind, dtype = m.groups()
        if ssa in values:
            raise ValueError(f"a new value name, but %{ssa} is defined above")
        if op == "const":
            node = make("const", value=parse_constant(operands))
        else:
            names = [o.strip() for o in operands.split(",") if o.strip()]
            bad = [n for n in names if not n.startswith("%") or n[1:] not in values]
            if bad:
                raise ValueError(f"operands defined above, got {bad}")
            if op in PARAM_OPS:
                raise ValueError(f"a computation op, got the parameter op {op!r}")
            node = make(op, tuple(values[n[1:]] for n in names), **_float_attrs(op, _attrs(attr_text)))
        _check_type(node, kind, dtype)
        values[ssa] = node
        block.body += (node,)
    else:
        raise ValueError("a parameter, op or output line")
