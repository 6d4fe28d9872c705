from __future__ import annotations

from dataclasses import dataclass

from resgen.errors import VerifyError
from resgen.ir.block import Block
from resgen.ir.nodes import Node, make
from resgen.passes.base import rewrite


@dataclass(frozen=True)
class InferTypes:
    """Re-derive every node's kind and dtype from its operands; a stored type that disagrees is an error."""

    name: str = "infer-types"

    def run(self, block: Block) -> Block:
        def infer(node: Node) -> Node:
            fresh = make(node.op, node.args, **dict(node.attrs))
            if (fresh.kind, fresh.dtype) != (node.kind, node.dtype):
                raise VerifyError(
                    f"{node.op}: stored type {node.kind}<{node.dtype}> disagrees with inferred "
                    f"{fresh.kind}<{fresh.dtype}>"
                )
            return node

        return rewrite(block, infer)
