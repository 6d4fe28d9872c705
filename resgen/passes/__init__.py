"""The pass pipeline: one function that runs every pass in order."""

from __future__ import annotations

from collections.abc import Callable

from resgen.ir.block import Block
from resgen.passes.base import Pass, rewrite
from resgen.passes.canonicalize import Canonicalize
from resgen.passes.cse import CSE
from resgen.passes.dce import DCE
from resgen.passes.decompose import DecomposeNorms
from resgen.passes.infer_types import InferTypes
from resgen.passes.specialize import Specialize
from resgen.passes.verify import Verify

__all__ = ["CSE", "DCE", "Canonicalize", "DecomposeNorms", "InferTypes", "Pass", "Specialize", "Verify",
           "passes_for", "pipeline", "rewrite"]


def passes_for(hidden: int | None) -> list[Pass]:
    """The passes `pipeline` runs, in order."""
    simplify: list[Pass] = [Canonicalize(), CSE(), DCE()]
    steps: list[Pass] = [Verify(), InferTypes(), DecomposeNorms(), *simplify]
    if hidden is not None:
        steps += [Specialize(hidden), *simplify]
    return steps + [Verify()]


def pipeline(block: Block, hidden: int | None = None,
             after_each: Callable[[Pass, Block], None] | None = None) -> Block:
    """Lower `block` to primitives (specialized for `hidden` when given); the result is verified."""
    for p in passes_for(hidden):
        block = p.run(block)
        if after_each is not None:
            after_each(p, block)
    return block
