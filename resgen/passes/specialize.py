from __future__ import annotations

from dataclasses import dataclass

from resgen.errors import VerifyError
from resgen.ir.block import Block, check_hidden_fits
from resgen.ir.nodes import H, Node, const
from resgen.passes.base import rewrite


@dataclass(frozen=True)
class Specialize:
    """Bind the hidden-size symbol H to a concrete size."""

    hidden: int
    name: str = "specialize"

    def __post_init__(self) -> None:
        if isinstance(self.hidden, bool) or not isinstance(self.hidden, int) or self.hidden < 1:
            raise VerifyError(f"specialize: argument 'hidden' must be an int >= 1, got {self.hidden!r}")

    def run(self, block: Block) -> Block:
        if block.is_specialized and block.hidden != self.hidden:
            raise VerifyError(
                f"specialize: block {block.name!r} is already specialized for hidden={block.hidden}"
            )

        def bind(node: Node) -> Node:
            if node.op == "const" and node.attr("value").has(H):
                return const(node.attr("value").subs(H, self.hidden))
            return node

        check_hidden_fits(block, self.hidden)
        specialized = rewrite(block, bind)
        return specialized.derive(body=specialized.body, outputs=specialized.outputs, hidden=self.hidden)
