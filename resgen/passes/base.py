"""What every pass shares: the Pass protocol and the one graph-rewriting walk."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from resgen.ir.block import Block, replace_outputs
from resgen.ir.nodes import Node, rebuild
from resgen.ir.verify import reachable


class Pass(Protocol):
    """A pass receives a valid block and returns a valid block; it never mutates its input."""

    name: str

    def run(self, block: Block) -> Block: ...


def rewrite(block: Block, fn: Callable[[Node], Node], *, keep_dead: bool = True) -> Block:
    """Rebuild `block`, replacing each body node (operands already rewritten) by `fn(node)`.

    `fn` may return the node itself, another existing node, or a new subgraph. The new body lists
    every node reachable from the rewritten body (or, with keep_dead=False, from the outputs),
    operands first.
    """
    mapping: dict[Node, Node] = {p: p for p in block.params}
    for node in block.body:
        mapping[node] = fn(rebuild(node, tuple(mapping[a] for a in node.args)))
    outputs = replace_outputs(block.outputs, mapping)
    roots = [o.node for o in outputs] if not keep_dead else [mapping[n] for n in block.body]
    params = {id(p) for p in block.params}
    body = tuple(n for n in reachable(roots + [o.node for o in outputs]) if id(n) not in params)
    return block.derive(body=body, outputs=outputs)
