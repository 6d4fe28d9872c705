from __future__ import annotations

from dataclasses import dataclass

from resgen.ir.block import Block
from resgen.passes.base import rewrite


@dataclass(frozen=True)
class DCE:
    """Drop body nodes no output depends on (parameters stay: they are the kernel's ABI)."""

    name: str = "dce"

    def run(self, block: Block) -> Block:
        return rewrite(block, lambda node: node, keep_dead=False)
