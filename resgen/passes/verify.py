from __future__ import annotations

from dataclasses import dataclass

from resgen.ir.block import Block


@dataclass(frozen=True)
class Verify:
    """Check every IR invariant; the block passes through unchanged."""

    name: str = "verify"

    def run(self, block: Block) -> Block:
        return block.verify()
