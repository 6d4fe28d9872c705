"""What a kernel keeps on chip between its phases: a liveness analysis over the lowered block.

A kernel passes over its row once per phase (`phases`): each reduction must finish before the
values that use it exist. A later phase needs values the earlier ones already had: it can read
the row inputs again from the row cache and recompute (`inputs` caching), or read the computed
values it needs straight from the cache (`values` caching: a residual add's h instead of x and
residual, a dropout's result instead of its Philox draws). `row_cache` works out both and keeps
the one that holds fewer bytes (fewer floats in registers), the computed values on a tie since
they cost no recomputation. Values are kept as float32, exactly as computed, so either choice
gives the same bits.
"""

from __future__ import annotations

from dataclasses import dataclass

from resgen.codegen.plan import LaunchConfig
from resgen.ir.block import Block
from resgen.ir.nodes import COL_REDUCE_OPS, REDUCE_OPS, ROW_LIKE, Kind, Node


def stages(block: Block) -> dict[Node, int]:
    """How many reductions must finish before each node's value exists."""
    stage: dict[Node, int] = {p: 0 for p in block.params}
    for node in block.body:
        before = max((stage[a] for a in node.args), default=0)
        stage[node] = before + 1 if node.op in REDUCE_OPS else before
    return stage


def phase_count(block: Block) -> int:
    """Passes over the row: one per reduction stage, and one more for outputs that need the last."""
    stage = stages(block)
    reductions = [stage[n.args[0]] for n in block.body if n.op in REDUCE_OPS + COL_REDUCE_OPS]
    row_outputs = [stage[o.node] for o in block.outputs if o.node.kind in ROW_LIKE]
    return 1 + max(reductions + row_outputs + [0])


def store_phase(block: Block, output, stage: dict[Node, int]) -> int:
    """The phase that stores a row output: when its value exists, or the last for an in-place one
    (every phase must have read the input it overwrites)."""
    return phase_count(block) - 1 if output.inplace else stage[output.node]


def phase_roots(block: Block, s: int, stage: dict[Node, int]) -> list[Node]:
    """What phase `s` must produce: the arguments of its reductions and column sums, its stores."""
    roots = [n.args[0] for n in block.body if n.op in REDUCE_OPS + COL_REDUCE_OPS and stage[n.args[0]] == s]
    return roots + [o.node for o in block.outputs if o.node.kind in ROW_LIKE and store_phase(block, o, stage) == s]


def per_element(node: Node, order: dict[Node, int]) -> bool:
    """A value computed per element inside a phase's column loop (not a parameter or row reduction;
    group values and their reductions are: a group lies within a chunk or a few lanes' chunks)."""
    return node in order and node.kind in (Kind.ROW, Kind.COL, Kind.GROUP) and node.op not in REDUCE_OPS


def closure(roots: list[Node], order: dict[Node, int], cut: frozenset[Node] = frozenset()
            ) -> tuple[list[Node], set[Node]]:
    """(per-element nodes the roots need, in body order; the `cut` nodes they reach, which are read
    from the row cache instead of computed)."""
    seen: set[Node] = set()
    reads: set[Node] = set()
    stack = []
    for r in roots:
        if r in cut:
            reads.add(r)
        elif per_element(r, order):
            stack.append(r)
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        for a in node.args:
            if a in cut:
                reads.add(a)
            elif per_element(a, order):
                stack.append(a)
    return sorted(seen, key=order.__getitem__), reads


def inputs_of(nodes: list[Node], roots: list[Node]) -> frozenset[str]:
    """Row inputs the nodes read (a bare input as a root, too)."""
    return frozenset({a.name for n in nodes for a in n.args if a.op == "input"}
                     | {r.name for r in roots if r.op == "input"})


@dataclass(frozen=True)
class PhaseWork:
    """One phase's share of the work: what it computes, which row inputs it reads, and which
    computed values it takes from the row cache."""

    nodes: tuple[Node, ...]
    inputs: frozenset[str]
    reads: frozenset[Node]


@dataclass(frozen=True)
class RowCache:
    """The liveness analysis' choice (module docstring): per phase its work, the row inputs and the
    computed values kept between phases, and the phase that computes each kept value."""

    phases: tuple[PhaseWork, ...]
    inputs: tuple[str, ...]
    values: tuple[Node, ...]
    producer: dict[Node, int]

    def floats(self) -> int:
        """Floats per element the cache holds in registers."""
        return len(self.inputs) + len(self.values)

    def bytes(self, block: Block) -> int:
        """Bytes per element the cache holds in shared memory (inputs in their storage dtype)."""
        size = {p.name: p.dtype.itemsize for p in block.params_of("input")}
        return sum(size[n] for n in self.inputs) + 4 * len(self.values)


def _analyse(block: Block, keep_values: bool) -> RowCache:
    order = {n: i for i, n in enumerate(block.body)}
    stage = stages(block)
    computed: dict[Node, int] = {}
    works = []
    for s in range(phase_count(block)):
        roots = phase_roots(block, s, stage)
        cut = frozenset(n for n in computed if n.kind is Kind.ROW) if keep_values else frozenset()
        nodes, reads = closure(roots, order, cut)
        works.append(PhaseWork(tuple(nodes), inputs_of(nodes, roots), frozenset(reads)))
        for n in nodes:
            computed.setdefault(n, s)
    read = set().union(*(w.reads for w in works))
    values = tuple(sorted(read, key=order.__getitem__))
    inputs = tuple(p.name for p in block.params_of("input") if sum(p.name in w.inputs for w in works) > 1)
    return RowCache(tuple(works), inputs, values, {v: computed[v] for v in values})


def row_cache(block: Block, config: LaunchConfig) -> RowCache:
    """What `block` keeps on chip between phases under `config` (nothing with cache=global: every
    phase reads the inputs it needs from global memory again)."""
    recompute = _analyse(block, keep_values=False)
    if config.cache == "global":
        return RowCache(recompute.phases, (), (), {})
    keep = _analyse(block, keep_values=True)
    if config.cache == "registers":
        return keep if keep.floats() <= recompute.floats() else recompute
    return keep if keep.bytes(block) <= recompute.bytes(block) else recompute
