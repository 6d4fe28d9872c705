from __future__ import annotations

from dataclasses import dataclass

from resgen.ir.block import Block
from resgen.ir.nodes import H, Node, const, make
from resgen.passes.base import rewrite


def _mean(v: Node) -> Node:
    return make("mul", (make("row_sum", (v,)), const(1 / H)))


@dataclass(frozen=True)
class DecomposeNorms:
    """Lower layer_norm, rms_norm and row_mean to primitives (layer_norm's mean and its one-pass
    variance, row_var, reduce the same row side by side: one reduction phase)."""

    name: str = "decompose-norms"

    def run(self, block: Block) -> Block:
        return rewrite(block, self.lower)

    @staticmethod
    def lower(node: Node) -> Node:
        if node.op == "row_mean":
            return _mean(node.args[0])
        if node.op == "layer_norm":
            v, extra = node.args[0], list(node.args[1:])
            centered = make("sub", (v, _mean(v)))
            var = make("row_var", (v,))
            y = make("mul", (centered, make("rsqrt", (make("add", (var, const(node.attr("eps")))),))))
            if node.attr("weight"):
                y = make("mul", (y, extra.pop(0)))
            if node.attr("bias"):
                y = make("add", (y, extra.pop(0)))
            return y
        if node.op == "rms_norm":
            v = node.args[0]
            mean_sq = _mean(make("mul", (v, v)))
            y = make("mul", (v, make("rsqrt", (make("add", (mean_sq, const(node.attr("eps")))),))))
            if node.attr("weight"):
                scale = node.args[1]
                if node.attr("offset"):
                    scale = make("add", (scale, const(node.attr("offset"))))
                y = make("mul", (y, scale))
            return y
        return node
