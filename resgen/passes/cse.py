from __future__ import annotations

from dataclasses import dataclass

from resgen.ir.block import Block
from resgen.ir.nodes import Node, make
from resgen.passes.base import rewrite

COMMUTATIVE = ("add", "mul", "maximum", "minimum")


@dataclass(frozen=True)
class CSE:
    """Merge structurally equal nodes; commutative operands are put in a canonical order first."""

    name: str = "cse"

    def run(self, block: Block) -> Block:
        seen: dict[str, Node] = {}

        def merge(node: Node) -> Node:
            if node.op in COMMUTATIVE and node.args[0].key > node.args[1].key:
                node = make(node.op, (node.args[1], node.args[0]), **dict(node.attrs))
            return seen.setdefault(node.key, node)

        return rewrite(block, merge)
