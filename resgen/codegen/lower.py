"""Lowering: a block (run through the pass pipeline) and a LaunchConfig become a KernelPlan."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from resgen.codegen.arch import DEFAULT_ARCH, Arch, get_arch
from resgen.codegen.cost import IN_FLIGHT_TARGET
from resgen.codegen.liveness import row_cache, stages, store_phase
from resgen.codegen.plan import (
    ColSum,
    ColTensor,
    Dropout,
    Entry,
    GroupReduction,
    GroupStore,
    Held,
    KernelPlan,
    LaunchConfig,
    Param,
    Phase,
    Reduction,
    RowScalarStore,
    RowTensor,
    Segment,
    Store,
    ident,
)
from resgen.errors import PlanError
from resgen.ir.block import Block
from resgen.ir.dtypes import DType
from resgen.ir.nodes import GROUP_REDUCE_OPS, PARAM_OPS, REDUCE_OPS, ROW_LIKE, Kind, Node
from resgen.ir.printer import print_block
from resgen.passes import pipeline
from resgen.reference import dropout_scale

#: Registers a thread keeps for everything but the cached row (addresses, loop state, temporaries,
#: loads in flight), and what Philox's state adds when the block has dropout. Measured with NVRTC:
#: 64 cached floats at 512 threads (128 registers each) spill 8 bytes, so at least 72.
REGISTER_OVERHEAD = 72
DROPOUT_REGISTERS = 40
#: Chunks a smem- or global-staged kernel unrolls (its loads in flight), without and with dropout
#: (Philox's state takes registers): enough for 32 KiB of loads in flight per SM at 512 threads.
STAGED_UNROLL = {False: 4, True: 2}
#: The most cached floats per thread we allow in registers, whatever the thread count.
MAX_CACHED_FLOATS = 96
#: Column-reduction accumulators over this many floats per thread live in shared memory instead.
MAX_REGISTER_COL_FLOATS = 16
#: A kernel with column reductions runs at most `persistent_ctas(config)` CTAs (clusters), each
#: looping over row groups: a number fixed by the config (not the GPU's), so the partial sums, and
#: the result's bits, are the same on every device and on the emulator. It is the CTAs of up to
#: 2048 threads per SM on PERSISTENT_SMS SMs (an H100's or H200's 132), at most 8 per SM: enough
#: to fill those GPUs whatever the registers allow, few enough that the partials stay small.
PERSISTENT_SMS = 132
#: The heuristic's largest CTA: 1024 threads would cap every thread at 64 registers.
MAX_HEURISTIC_THREADS = 512


#: The largest hidden size: column indices are 32-bit ints in the kernel, and the last chunk of a
#: row (up to TPR * VEC * CLUSTER elements past HIDDEN) must still be indexable.
MAX_HIDDEN = 2**30


def check_hidden(hidden: object) -> int:
    """`hidden` when it is an int in [1, MAX_HIDDEN]; PlanError saying the limit otherwise."""
    if isinstance(hidden, bool) or not isinstance(hidden, int) or not 1 <= hidden <= MAX_HIDDEN:
        raise PlanError(f"hidden must be an int in [1, {MAX_HIDDEN}] (2**30: the kernel indexes columns with "
                        f"32-bit ints), got {hidden!r}")
    return hidden


def c_float(value: float) -> str:
    """A C float literal for the float32 nearest `value` (9 significant digits round-trip)."""
    f = float(np.float32(value))
    if math.isinf(f) or math.isnan(f):
        raise PlanError(f"constant {value} is not finite in float32")
    text = f"{f:.9g}"
    if "e" not in text and "." not in text:
        text += ".0"
    return f"({text}f)" if f < 0 else f"{text}f"


def _pow2_ceil(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1, n))))


def row_dtypes(block: Block) -> list[DType]:
    """Dtypes of everything read or written per row element (row inputs and row outputs)."""
    return [p.dtype for p in block.params_of("input")] + [o.dtype for o in block.outputs if o.node.kind is Kind.ROW]


def persistent_ctas(config: LaunchConfig) -> int:
    """Clusters (CTAs, without clusters) a kernel with column reductions runs (PERSISTENT_SMS)."""
    return PERSISTENT_SMS * (config.persist or max(1, min(8, 2048 // config.threads))) // config.cluster


def weight_floats(block: Block, hidden: int, config: LaunchConfig) -> int:
    """Floats per thread a persistent kernel's weights take in registers."""
    return len(block.params_of("weight")) * chunks_per_thread(hidden, config) * config.vec


def register_floats(block: Block, hidden: int, config: LaunchConfig, arch: Arch) -> int:
    """Floats per thread the kernel keeps in registers: the row cache (cache=registers) and the
    column accumulators that stay out of shared memory (a persistent kernel's weights: weight_home)."""
    floats = cached_floats(block, hidden, config) if config.cache == "registers" else 0
    if not col_sums_in_smem(block, hidden, config, arch):
        floats += col_sum_floats(block, hidden, config)
    return floats


def weight_home(block: Block, hidden: int, config: LaunchConfig, arch: Arch) -> str:
    """Where a persistent forward kernel keeps its weights, loaded once for all its rows: "registers"
    when they fit the budget beside everything else kept there, else "smem" (each thread copies
    its own columns, so no barrier). "" (read per row group, from L1/L2) without `persist`."""
    if not config.persist or col_sum_count(block) or not block.params_of("weight") or hidden % config.vec:
        return ""  # (a peeled row's chunks shift, so a chunk's weight columns change from row to row)
    fits = register_floats(block, hidden, config, arch) + weight_floats(block, hidden, config)
    return "registers" if fits <= register_budget(block, config, arch) else "smem"


def chunks_per_thread(hidden: int, config: LaunchConfig) -> int:
    """How many VEC-wide chunks of a row each thread handles: when VEC does not divide hidden, a
    peeled row (Entry.peel) starts up to VEC - 1 elements before its first chunk, so they cover as
    many more."""
    covered = hidden + (config.vec - 1 if hidden % config.vec else 0)
    return math.ceil(covered / (config.threads_per_row * config.vec * config.cluster))


def peelable(block: Block) -> bool:
    """Rows whose start is not VEC-aligned can still take 16-byte accesses by shifting their chunks
    (Entry.peel): not when the kernel sums columns, whose accumulators belong to fixed columns, nor
    when groups of columns (group values) or byte pairs of columns (packed dtypes) must stay whole."""
    return col_sum_count(block) == 0 and not has_groups(block) and min_vec(block) == 1


def has_groups(block: Block) -> bool:
    return any(n.kind is Kind.GROUP for n in block.body)


def min_vec(block: Block) -> int:
    """The narrowest vec the block's row tensors allow: a packed dtype's chunk holds whole bytes."""
    return max(d.pack for d in row_dtypes(block))


def widest_vec(block: Block, hidden: int) -> int:
    """The heuristic's vec: the widest of at most 16 bytes that divides hidden, or, for a peelable
    block with at least 4 chunks' worth of row, the widest of at most 16 bytes."""
    width = min(d.value_bytes for d in row_dtypes(block))
    return next(v for v in (8, 4, 2, 1) if v * width <= 16 and v >= min_vec(block) and (
        hidden % v == 0 or peelable(block) and hidden >= 4 * v))


def cached_floats(block: Block, hidden: int, config: LaunchConfig) -> int:
    """Floats per thread the row cache holds (inputs and computed values kept between phases)."""
    return chunks_per_thread(hidden, config) * config.vec * row_cache(block, config).floats()


def col_sum_floats(block: Block, hidden: int, config: LaunchConfig) -> int:
    """Floats per thread the column reductions' accumulators hold."""
    return col_sum_count(block) * chunks_per_thread(hidden, config) * config.vec


def col_sum_count(block: Block) -> int:
    """Column reductions the kernel accumulates: one per column output (two outputs of one col_sum
    node, e.g. two weights' equal gradients, each get their own)."""
    return sum(o.node.kind is Kind.COL for o in block.outputs)


def has_dropout(block: Block) -> bool:
    return any(n.op == "dropout" for n in block.body)


def register_overhead(block: Block) -> int:
    """Registers a thread needs besides the floats it keeps (REGISTER_OVERHEAD, DROPOUT_REGISTERS)."""
    return REGISTER_OVERHEAD + (DROPOUT_REGISTERS if has_dropout(block) else 0)


def register_budget(block: Block, config: LaunchConfig, arch: Arch) -> int:
    """Floats per thread the row cache and column accumulators may keep in registers (with
    `persist` CTAs of the config on each SM)."""
    per_thread = arch.regs_per_sm // (config.threads * max(1, config.persist))
    return max(0, min(MAX_CACHED_FLOATS, min(255, per_thread) - register_overhead(block)))


def col_sums_in_smem(block: Block, hidden: int, config: LaunchConfig, arch: Arch) -> bool:
    """Column-reduction accumulators live in shared memory (each thread its own columns, so no
    barrier) when they would not fit in registers beside the row cache, or are over
    MAX_REGISTER_COL_FLOATS; the sum's order, and its bits, are the same either way."""
    floats = col_sum_floats(block, hidden, config)
    cached = cached_floats(block, hidden, config) if config.cache == "registers" else 0
    return floats > MAX_REGISTER_COL_FLOATS or cached + floats > register_budget(block, config, arch)


@dataclass(frozen=True)
class SmemLayout:
    """Dynamic shared memory of one CTA: the row cache (cache=smem), the per-warp partials of each
    reduction, and (in a cluster) each reduction's slots that the cluster's CTAs push partials into."""

    pitch: int  # elements of one row this CTA caches
    cache_offsets: dict[str, int]  # row inputs kept between phases
    value_offsets: dict[Node, int]  # computed values kept between phases (float32)
    weight_offsets: dict[str, int]  # a persistent kernel's weights (weight_home "smem")
    col_sums: tuple[int, ...]  # byte offset of each column accumulator; empty: they live in registers
    scratch: int
    partials: int
    total: int


def smem_layout(block: Block, hidden: int, config: LaunchConfig, arch: Arch) -> SmemLayout:
    def up16(n: int) -> int:
        return -(-n // 16) * 16

    pitch = -(-(chunks_per_thread(hidden, config) * config.threads_per_row * config.vec) // 8) * 8
    offsets, values, weights, total = {}, {}, {}, 0
    if weight_home(block, hidden, config, arch) == "smem":
        for p in block.params_of("weight"):
            weights[p.name] = total
            total += up16(pitch * p.dtype.itemsize * config.rows_per_cta)
    if config.cache == "smem":
        cache = row_cache(block, config)
        for p in block.params_of("input"):
            if p.name in cache.inputs:
                offsets[p.name] = total
                total += up16(pitch * p.dtype.itemsize * config.rows_per_cta)
        for v in cache.values:
            values[v] = total
            total += up16(pitch * 4 * config.rows_per_cta)
    col_sums = []
    if col_sums_in_smem(block, hidden, config, arch):
        for _ in range(col_sum_count(block)):
            col_sums.append(total)
            total += up16(4 * pitch * config.rows_per_cta)
    reductions = sum(n.op in REDUCE_OPS for n in block.body)
    scratch = total
    slot = 4 * KernelPlan.SLOT_FLOATS  # bytes of one reduction's slot per warp (and per CTA of a cluster)
    total += up16(slot * reductions * config.rows_per_cta * max(1, config.threads_per_row // 32))
    partials = total
    if config.cluster > 1:  # a slot per CTA of the cluster; persistent kernels alternate two sets
        persistent = bool(config.persist or col_sum_count(block))
        total += up16(slot * reductions * config.cluster * (2 if persistent else 1))
    return SmemLayout(pitch, offsets, values, weights, tuple(col_sums), scratch, partials, total)


def check_config(block: Block, hidden: int, config: LaunchConfig, arch: Arch) -> None:
    """Raise PlanError when `config` cannot run `block` at `hidden` on `arch` without spilling."""
    if config.threads_per_row * config.vec * config.cluster >= 2 * hidden and config.threads_per_row * config.cluster > 1:
        raise PlanError(
            f"config {config}: {config.threads_per_row * config.cluster} threads x vec {config.vec} per row is "
            f"over twice hidden={hidden}; most threads would idle"
        )
    floats = register_floats(block, hidden, config, arch)
    budget = register_budget(block, config, arch)
    if floats and floats > budget:
        raise PlanError(
            f"config {config}: the row cache and column-reduction accumulators need {floats} floats per thread "
            f"in registers, over the budget of {budget} at {config.threads} threads/CTA; use cache=smem or "
            f"cache=global, or more threads"
        )
    total = smem_layout(block, hidden, config, arch).total
    if total > arch.max_dynamic_smem:
        raise PlanError(
            f"config {config}: the kernel needs {total} bytes of shared memory, over {arch.name}'s "
            f"{arch.max_dynamic_smem}; use cache=global, or a cluster on sm_90+"
        )
    if config.persist and total * config.persist > arch.max_dynamic_smem:
        raise PlanError(f"config {config}: {config.persist} CTAs of {total} bytes of shared memory do not fit "
                        f"one SM of {arch.name} ({arch.max_dynamic_smem}); use a smaller persist")
    if config.persist * config.threads > arch.max_threads_per_sm:
        raise PlanError(f"config {config}: {config.persist} CTAs of {config.threads} threads exceed an SM of "
                        f"{arch.name} ({arch.max_threads_per_sm} threads); use a smaller persist")
    if config.cluster > 1 and not arch.clusters:
        raise PlanError(f"config {config}: thread-block clusters need sm_90 or newer, not {arch.name}")
    if config.vec < min_vec(block):
        raise PlanError(f"config {config}: a packed row tensor holds {min_vec(block)} values per byte; vec must be at "
                        f"least {min_vec(block)}")
    for size in sorted({n.attr("size") for n in block.body if n.op in GROUP_REDUCE_OPS}):
        lanes = size // config.vec
        if lanes > min(32, config.threads_per_row):
            raise PlanError(f"config {config}: a group of {size} columns spans {lanes} lanes at vec {config.vec}, "
                            f"over {min(32, config.threads_per_row)} (a warp, and the threads of a row); use a wider "
                            f"vec or more threads per row")


def default_config(block: Block, hidden: int, arch: str = DEFAULT_ARCH,
                   fixed: Mapping[str, Any] | None = None, rows: int | None = None) -> LaunchConfig:
    """The heuristic's choice: 16-byte vectors where hidden allows, a warp (or less) per row for
    small rows, a CTA per row for large ones, and the cheapest row cache that fits.

    `fixed` holds fields the user set (LaunchConfig field names): the result keeps them and
    changes as few of the heuristic's other fields as it must for the config to fit. `rows`, when
    the caller knows it, lets too few rows to fill the GPU spread each row over a cluster (`_few_rows`)."""
    target = get_arch(arch)
    check_hidden(hidden)
    if block.hidden != hidden:  # the phases and reductions that size shared memory are the lowered block's
        block = pipeline(block, hidden)
    vec = widest_vec(block, hidden)
    vectors = math.ceil(hidden / vec)
    tpr = _pow2_ceil(math.ceil(vectors / 4))
    if tpr <= 32:
        rows_per_cta = max(1, 128 // tpr)
    else:
        tpr, rows_per_cta = _cta_threads(vectors), 1
    choice = None
    for config in _candidates(vectors, tpr, rows_per_cta, vec, target):
        try:
            check_config(block, hidden, config, target)
            choice = config
            break
        except PlanError:
            continue
    if choice is None:  # nothing fits at this shape (e.g. column-reduction accumulators): search for one
        return _fit(block, hidden, target, LaunchConfig(tpr, rows_per_cta, vec, "global"), dict(fixed or {}))
    if rows is not None and rows < target.sms:  # too few rows for one per SM: none would loop
        choice = _few_rows(block, hidden, choice, target, rows)
    else:
        choice = persistent_variant(block, hidden, choice, target)
    return _fit(block, hidden, target, choice, dict(fixed)) if fixed else choice


#: A CTA of a row split over a cluster keeps at least this many vectors (of `vec`) of it.
MIN_CLUSTER_SHARE = 256


def _few_rows(block: Block, hidden: int, choice: LaunchConfig, target: Arch, rows: int) -> LaunchConfig:
    """With fewer rows than the GPU has SMs (decode: 1 to 64 rows), a CTA (or small cluster) per row
    leaves most SMs idle and each row's bytes behind few SMs' bandwidth: on sm_90+ split each row
    over the largest cluster (up to 8 CTAs, each keeping at least MIN_CLUSTER_SHARE vectors, no more
    than two per SM in all) that fits, so rows x cluster SMs share the work. Forward kernels only
    (a column sum's grid is fixed)."""
    if not target.clusters or choice.rows_per_cta != 1 or col_sum_count(block):
        return choice
    vectors = math.ceil(hidden / choice.vec)
    for cluster in (c for c in (8, 4, 2) if c > choice.cluster):
        if vectors // cluster < MIN_CLUSTER_SHARE or rows * cluster > 2 * target.sms:
            continue
        for cache in ("registers", "smem"):
            config = LaunchConfig(_cta_threads(math.ceil(vectors / cluster)), 1, choice.vec, cache, cluster)
            try:
                check_config(block, hidden, config, target)
            except PlanError:
                continue
            return config
    return choice


def persistent_variant(block: Block, hidden: int, choice: LaunchConfig, target: Arch) -> LaunchConfig:
    """`choice` made persistent where that keeps its weights on chip (`weight_home`) and still has
    IN_FLIGHT_TARGET bytes of loads in flight per SM: the cost model charges a kernel that re-reads
    its weights for every row group (from L2) and not one that keeps them (cost.L2_REREAD_COST).
    Of the CTAs per SM that fit (at least 2, so one's reduction overlaps another's loads), the
    most that keep the weights in registers, else the fewest that keep them in shared memory.
    Unchanged where none reaches the in-flight target."""
    if col_sum_count(block) or not block.params_of("weight"):
        return choice
    per_cta = choice.threads * first_phase_load_bytes(block, hidden, choice)
    fits = []  # (in registers, the persist to prefer among those alike, config)
    for persist in range(2, min(8, target.max_threads_per_sm // choice.threads) + 1):
        config = replace(choice, persist=persist)
        try:
            check_config(block, hidden, config, target)
        except PlanError:
            continue
        home = weight_home(block, hidden, config, target)
        if target.regs_per_sm // (persist * choice.threads) < _registers_needed(block, hidden, config, target):
            continue  # __launch_bounds__(threads, persist) would make it spill
        if persist * per_cta >= IN_FLIGHT_TARGET and home:
            fits.append((home == "registers", persist if home == "registers" else -persist, config))
    return max(fits, key=lambda fit: fit[:2])[2] if fits else choice


def _registers_needed(block: Block, hidden: int, config: LaunchConfig, target: Arch) -> int:
    """Registers a thread of `config` needs: the overhead, the floats it keeps, and, when the row is
    staged (cache smem or global), the loads it has in flight (two bytes a register at least)."""
    need = register_overhead(block) + register_floats(block, hidden, config, target)
    if config.cache != "registers":
        need += first_phase_load_bytes(block, hidden, config) // 4
    return need


def first_phase_load_bytes(block: Block, hidden: int, config: LaunchConfig) -> int:
    """Bytes of row input one thread has in flight in the first phase: its loads of every input
    that phase reads, over the chunks it unrolls (cost.loads_in_flight, before a plan exists)."""
    first = row_cache(block, config).phases[0].inputs
    per_chunk = sum(int(p.dtype.value_bytes * config.vec) for p in block.params_of("input") if p.name in first)
    return per_chunk * _unroll(block, hidden, config)


def _unroll(block: Block, hidden: int, config: LaunchConfig) -> int:
    """Chunks the phase loops unroll: all of them when the row is cached in registers (or the
    kernel sums columns), else STAGED_UNROLL."""
    iters = chunks_per_thread(hidden, config)
    if config.cache == "registers" or col_sum_count(block):
        return iters
    return min(iters, STAGED_UNROLL[has_dropout(block)])


def _candidates(vectors: int, tpr: int, rows_per_cta: int, vec: int, target: Arch) -> Iterator[LaunchConfig]:
    """The heuristic's configs, best first: the row on chip in one CTA (registers, then shared
    memory); on sm_90+, split over a cluster of 2, 4, 8 CTAs that each keep their share on chip;
    and only then a row re-read from global memory."""
    for cache in ("registers", "smem"):
        yield LaunchConfig(tpr, rows_per_cta, vec, cache)
    if target.clusters and rows_per_cta == 1:
        for cluster in (2, 4, 8):
            for cache in ("registers", "smem"):
                yield LaunchConfig(_cta_threads(math.ceil(vectors / cluster)), 1, vec, cache, cluster)
    yield LaunchConfig(tpr, rows_per_cta, vec, "global")


#: Values `_fit` tries for each field it may change.
_SPACE = {"threads_per_row": (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024), "rows_per_cta": (1, 2, 4, 8, 16, 32, 64, 128),
          "vec": (8, 4, 2, 1), "cache": ("registers", "smem", "global"), "cluster": (1, 2, 4, 8)}


def _fit(block: Block, hidden: int, target: Arch, choice: LaunchConfig, fixed: dict[str, Any]) -> LaunchConfig:
    """The config nearest `choice` that keeps the `fixed` fields and fits (PlanError when none does)."""
    base = choice.as_dict()

    def distance(values: dict[str, Any]) -> tuple:
        changed = [k for k in values if values[k] != base[k]]
        steps = sum(abs(math.log2(values[k] / base[k])) if isinstance(values[k], int) and values[k] > 0 < base[k]
                    else 1 for k in changed if not isinstance(values[k], str))
        cache = values["cache"]
        return len(changed), steps, _SPACE["cache"].index(cache) if cache in _SPACE["cache"] else 0

    free = [k for k in _SPACE if k not in fixed]
    candidates = [{**fixed, **dict(zip(free, combo, strict=True))}
                  for combo in itertools.product(*(_SPACE[k] for k in free))]
    first_error = None
    for values in sorted(candidates, key=distance):
        if values["vec"] > 1 and hidden % values["vec"] and "vec" not in fixed and not peelable(block):
            continue
        try:
            config = LaunchConfig(**values)
            check_config(block, hidden, config, target)
            return config
        except PlanError as exc:
            first_error = first_error or exc
    shown = ",".join(f"{LaunchConfig.SHORT[k]}={v}" for k, v in fixed.items())
    raise PlanError(f"no launch config with {shown} fits {block.name} at hidden={hidden} on {target.name}: "
                    f"{first_error}")


def _cta_threads(vectors: int) -> int:
    """Threads for a CTA-per-row kernel: the fewest idle lanes in the last chunk, then the chunk
    count nearest 4 (enough loads in flight, few registers), at most 8 chunks per thread."""
    def cost(tpr: int) -> tuple[float, int]:
        chunks = math.ceil(vectors / tpr)
        return round(1 - vectors / (chunks * tpr), 2), abs(chunks - 4)

    candidates = [t for t in (64, 128, 256, MAX_HEURISTIC_THREADS) if math.ceil(vectors / t) <= 8]
    return min(candidates, key=cost) if candidates else MAX_HEURISTIC_THREADS


class _Namer:
    """C names for nodes: parameters by role and name (`ident`), per-element temporaries t<i>, row
    scalars rs<i>, scalars s<i>."""

    def __init__(self, block: Block, vec: int) -> None:
        self.index = {n: i for i, n in enumerate(block.body)}
        self.vec = vec

    def array(self, node: Node) -> str:
        """A group reduction's partials in this chunk (GroupReduction), t<i>."""
        return f"t{self.index[node]}"

    def ref(self, node: Node) -> str:
        if node.op in ("input", "weight"):
            return f"{ident('values', node.name)}[j]"
        if node.op == "row_scalar":
            return ident("values", node.name)
        if node.op == "scalar":
            return ident("scalar", node.name)
        if node.op == "const":
            return c_float(float(node.attr("value")))
        if node.op in GROUP_REDUCE_OPS:
            return f"{self.array(node)}[j / {min(node.group, self.vec)}]"
        i = self.index[node]
        return {Kind.ROW: f"t{i}", Kind.GROUP: f"t{i}", Kind.COL: f"t{i}", Kind.ROWS: f"rs{i}", Kind.SCALAR: f"s{i}"}[node.kind]

    def uniforms(self, node: Node) -> str:
        return f"drop{node.attr('site')}_u"

    def expr(self, node: Node) -> str:
        a = [self.ref(x) for x in node.args]
        op = node.op
        if op in ("add", "sub", "mul", "div"):
            return f"{a[0]} {dict(add='+', sub='-', mul='*', div='/')[op]} {a[1]}"
        if op in ("maximum", "minimum"):
            return f"{'rg_fmax' if op == 'maximum' else 'rg_fmin'}({a[0]}, {a[1]})"
        if op in ("eq", "gt"):
            return f"({a[0]} {'==' if op == 'eq' else '>'} {a[1]} ? 1.0f : 0.0f)"
        if op == "neg":
            return f"-{a[0]}"
        if op in ("sqrt", "rsqrt", "abs", "round", "floor", "log2", "exp2", "exponent"):
            c = dict(sqrt="sqrtf", rsqrt="rsqrtf", abs="fabsf", round="rintf", floor="floorf", log2="log2f", exp2="exp2f",
                     exponent="rg_floor_log2")
            return f"{c[op]}({a[0]})"
        if op == "cast":
            return f"rg_round<{node.attr('dtype').c_type}>({a[0]})"
        if op == "dropout":
            p = node.attr("p")
            return f"{self.uniforms(node)}[j] >= {c_float(p)} ? {a[0]} * {c_float(dropout_scale(p))} : 0.0f"
        raise PlanError(f"codegen: no C form for op {op!r}")


def kernel_name(block: Block, hidden: int, config: LaunchConfig) -> str:
    dtype = block.params_of("input")[0].dtype
    cache = {"registers": "reg", "smem": "smem", "global": "gmem"}[config.cache]
    cluster = f"_c{config.cluster}" if config.cluster > 1 else ""
    persist = f"_p{config.persist}" if config.persist else ""
    return (f"rg_{block.name}_{dtype}_h{hidden}_t{config.threads_per_row}_r{config.rows_per_cta}"
            f"_v{config.vec}_{cache}{cluster}{persist}")


def regenerate_hint(block: Block, hidden: int, config: LaunchConfig, arch: str) -> str:
    """How to emit this kernel again: a `resgen emit` command when the block is a catalog entry
    (the same structure as `rg.catalog[name](dtype)`), else the Python call."""
    from resgen.catalog import catalog
    from resgen.passes.autodiff import grad

    dtypes = sorted({p.dtype for p in block.params if p.op != "scalar"}, key=lambda d: d.name)
    base, is_grad = (block.name[:-len("_grad")], True) if block.name.endswith("_grad") else (block.name, False)
    if base in catalog:
        for dt in dtypes:
            candidate = catalog[base](dt)
            if (grad(candidate) if is_grad else candidate).key == block.key:
                flag = " --grad" if is_grad else ""
                return (f"`resgen emit {base}{flag} --dtype {dt} --hidden {hidden} --arch {arch} "
                        f"--config {config}`")
    return f"`rg.emit(block, hidden={hidden}, arch={arch!r}, config={str(config)!r})` on the block below"


def lower(block: Block, hidden: int, config: LaunchConfig | None = None, arch: str = DEFAULT_ARCH) -> KernelPlan:
    """The KernelPlan of `block` specialized for `hidden` (the heuristic picks `config` when None)."""
    target = get_arch(arch)
    low = pipeline(block, check_hidden(hidden))
    for o in low.outputs:
        if o.node.kind is Kind.COL and o.node.op != "col_sum":
            raise PlanError(f"output {o.name!r}: a column output must be a col_sum itself (the finalize kernel "
                            f"only sums), got {o.node.op}; output the col_sum and finish the arithmetic after")
    config = config or default_config(low, hidden, arch)
    check_config(low, hidden, config, target)
    namer = _Namer(low, config.vec)
    stage = stages(low)

    inplace_of = {o.inplace: o.name for o in low.outputs if o.inplace}
    aliased = set(inplace_of) | set(inplace_of.values())
    smem = smem_layout(low, hidden, config, target)
    cache = row_cache(low, config)
    row_in = {
        p.name: RowTensor(p.name, p.dtype.c_type, p.dtype.itemsize, p.name not in aliased,
                          smem.cache_offsets.get(p.name, 0), p.name in cache.inputs, pack=p.dtype.pack)
        for p in low.params_of("input")
    }
    held = {v: Held(namer.ref(v), smem.value_offsets.get(v, 0)) for v in cache.values}
    row_out = {
        o.name: RowTensor(o.name, o.dtype.c_type, o.dtype.itemsize, o.name not in aliased, pack=o.dtype.pack,
                          group=o.node.group)
        for o in low.outputs if o.node.kind in ROW_LIKE
    }
    home = weight_home(low, hidden, config, target)
    weights = {p.name: ColTensor(p.name, p.dtype.c_type, home, smem.weight_offsets.get(p.name, 0))
               for p in low.params_of("weight")}

    reductions = [n for n in low.body if n.op in REDUCE_OPS]
    row_outputs = [o for o in low.outputs if o.node.kind is Kind.ROW]
    group_outputs = [o for o in low.outputs if o.node.kind is Kind.GROUP]

    col_sums = tuple(ColSum(i, namer.ref(o.node.args[0]), o.name, o.dtype.c_type,
                            smem.col_sums[i] if smem.col_sums else -1)
                     for i, o in enumerate(o for o in low.outputs if o.node.kind is Kind.COL))
    phases = []
    # One draw per site and row: a backward's dropout reuses its forward's mask (same site, same
    # uniforms); a later phase reads the bits the first one kept when every chunk index is static
    # (the phase loop fully unrolled), and draws again otherwise.
    iters, unroll = chunks_per_thread(hidden, config), _unroll(low, hidden, config)
    keep_bits = unroll == iters
    uses: dict[int, set[int]] = {}  # site -> the phases that need its mask
    for s, work in enumerate(cache.phases):
        for n in work.nodes:
            if n.op == "dropout":
                uses.setdefault(n.attr("site"), set()).add(s)
    first_read = {name: min(i for i, w in enumerate(cache.phases) if name in w.inputs) for name in cache.inputs}
    for s, work in enumerate(cache.phases):
        reds = [r for r in reductions if stage[r.args[0]] == s]
        stores = [o for o in row_outputs if store_phase(low, o, stage) == s]
        cols = [o for o in low.outputs if o.node.kind is Kind.COL and stage[o.node.args[0]] == s]
        nodes = work.nodes
        wanted = [t for n, t in row_in.items() if n in work.inputs]  # read from the cache after their first phase
        from_cache = tuple(t for t in wanted if t.cached and first_read[t.name] < s)
        loads = tuple(t for t in wanted if t not in from_cache)
        reads = tuple(held[v] for v in cache.values if v in work.reads)
        after_nodes = [n for n in low.body if n.kind is Kind.ROWS and stage[n] == s + 1 and n.op not in REDUCE_OPS]
        phases.append(Phase(
            index=s,
            loads=loads,
            cached=from_cache,
            weights=tuple(t for n, t in weights.items() if any(a.op == "weight" and a.name == n
                                                               for m in nodes for a in m.args)),
            dropouts=tuple(_masks(nodes, s, uses, namer, keep_bits)),
            computes=_held_reads(reads) + _assignments((n for n in nodes if n.op not in GROUP_REDUCE_OPS), namer),
            segments=_segments(nodes, reads, namer),
            group_stores=tuple(GroupStore(o.node.group, config.vec, tensor=row_out[o.name], value=namer.ref(o.node))
                               for o in group_outputs if stage[o.node] == s),
            reductions=tuple(
                Reduction(reductions.index(r), namer.ref(r), {"row_max": "max", "row_var": "var"}.get(r.op, "sum"),
                          namer.ref(r.args[0]), "rg_neg_inf()" if r.op == "row_max" else "0.0f") for r in reds),
            stores=tuple(Store(row_out[o.name], namer.ref(o.node)) for o in stores),
            after=tuple(f"const float {namer.ref(n)} = {namer.expr(n)};" for n in after_nodes),
            row_scalar_stores=tuple(
                RowScalarStore(o.name, o.dtype.c_type, namer.ref(o.node))
                for o in low.outputs if o.node.kind is Kind.ROWS and stage[o.node] == s + 1),
            col_sums=tuple(c for c in col_sums if c.out in {o.name for o in cols}),
            keeps=tuple(h for v, h in held.items() if cache.producer[v] == s),
            held=reads,
        ))

    prologue = tuple(f"const float {namer.ref(n)} = {namer.expr(n)};" for n in low.body if n.kind is Kind.SCALAR
                     and n.op != "const")
    row_prologue = tuple(f"const float {namer.ref(n)} = {namer.expr(n)};" for n in low.body
                         if n.kind is Kind.ROWS and stage[n] == 0 and n.op not in REDUCE_OPS + PARAM_OPS)
    uses_dropout = has_dropout(low)
    masks = tuple(d for phase in phases for d in phase.dropouts if d.keep)
    params = _abi(low, row_in, row_out, uses_dropout, col_sums)
    dtypes = {d for d in row_dtypes(low)} | {p.dtype for p in low.params} | {o.dtype for o in low.outputs} | {
        n.attr("dtype") for n in low.body if n.op == "cast"}
    includes = tuple(sorted({d.header for d in dtypes if d.header}))
    return KernelPlan(
        name=kernel_name(low, hidden, config),
        block_name=low.name,
        block_key=block.key,
        regenerate=regenerate_hint(block, hidden, config, target.name),
        ir_text=print_block(low),
        arch=target.name,
        config=config,
        hidden=hidden,
        iters=iters,
        tail=hidden % (config.threads_per_row * config.vec * config.cluster) != 0,
        unroll=unroll,
        smem_bytes=smem.total,
        smem_pitch=smem.pitch,
        smem_scratch=smem.scratch,
        smem_partials=smem.partials,
        includes=includes,
        params=params,
        row_inputs=tuple(row_in.values()),
        row_scalar_inputs=tuple(ColTensor(p.name, p.dtype.c_type) for p in low.params_of("row_scalar")),
        row_outputs=tuple(row_out.values()),
        prologue=prologue,
        row_prologue=row_prologue,
        phases=tuple(phases),
        uses_dropout=uses_dropout,
        reductions=len(reductions),
        entries=_entries(low, kernel_name(low, hidden, config), config.vec, hidden),
        col_sums=col_sums,
        held=tuple(held.values()),
        persistent_ctas=persistent_ctas(config) if col_sums else target.sms * config.persist // config.cluster,
        hoisted=tuple(weights.values()) if home else (),
        masks=masks,
        min_ctas=config.persist or _min_ctas(low, hidden, config, target),
        finalize=Entry(f"{kernel_name(low, hidden, config)}_colsum", False, 1) if col_sums else None,
        finalize_params=tuple(Param("workspace", c.ws, "const float* __restrict__") for c in col_sums) + tuple(
            Param("col_out", c.out, f"{c.c_type}* __restrict__") for c in col_sums) + (
            Param("parts", "parts", "long long"),) if col_sums else (),
    )


def _held_reads(reads: tuple[Held, ...]) -> tuple[str, ...]:
    """A column loop's reads of the computed values it takes from the row cache, element j."""
    return tuple(f"const float {h.var} = {h.cache}_v[j];" for h in reads)


def _assignments(nodes: Iterable[Node], namer: _Namer) -> tuple[str, ...]:
    """A column loop's per-element values, element j, in order."""
    return tuple(f"const float {namer.ref(n)} = {namer.expr(n)};" for n in nodes)


def _segments(nodes: tuple[Node, ...], reads: tuple[Held, ...], namer: _Namer) -> tuple[Segment, ...]:
    """The column loops a phase runs before its main one, one per depth of nested group reductions:
    loop k computes what the group reductions k deep need (recomputing earlier loops' values: the
    loops are unrolled, so the compiler computes each once) and ends by combining their partials."""
    depth: dict[Node, int] = {}
    for n in nodes:
        depth[n] = max((depth.get(a, 0) for a in n.args), default=0) + (n.op in GROUP_REDUCE_OPS)
    segments = []
    for level in range(1, max(depth.values(), default=0) + 1):
        reductions = [n for n in nodes if n.op in GROUP_REDUCE_OPS and depth[n] == level]
        needed: set[Node] = set()
        stack = [n.args[0] for n in reductions]
        while stack:  # what they read, up to the group reductions earlier loops finished
            n = stack.pop()
            if n in depth and n not in needed and n.op not in GROUP_REDUCE_OPS:
                needed.add(n)
                stack.extend(n.args)
        computes = _held_reads(reads) + _assignments((n for n in nodes if n in needed), namer)
        groups = tuple(GroupReduction(n.group, namer.vec, var=namer.array(n), op=n.op.removeprefix("group_"),
                                      value=namer.ref(n.args[0])) for n in reductions)
        segments.append(Segment(computes, groups))
    return tuple(segments)


def _masks(nodes: tuple[Node, ...], phase: int, uses: dict[int, set[int]], namer: _Namer,
           keep_bits: bool) -> Iterator[Dropout]:
    """The dropout masks a phase needs, one per site: drawn here (and kept as bits when a later
    phase needs the site too and `keep_bits`), or read back from the bits an earlier phase kept."""
    sites: dict[int, Node] = {}
    for n in nodes:
        if n.op == "dropout":
            sites.setdefault(n.attr("site"), n)
    for site, n in sites.items():
        p, first, last = c_float(n.attr("p")), min(uses[site]), max(uses[site])
        yield Dropout(namer.uniforms(n), site, p, keep=keep_bits and first == phase < last,
                      reuse=keep_bits and first < phase)


def _min_ctas(block: Block, hidden: int, config: LaunchConfig, target: Arch) -> int:
    """CTAs per SM to ask of `__launch_bounds__`: enough for IN_FLIGHT_TARGET bytes of first-phase
    loads in flight, no more than the threads and the registers we expect the kernel to need allow
    (so the bound never forces a spill the budget did not plan for)."""
    per_cta = config.threads * first_phase_load_bytes(block, hidden, config)
    want = math.ceil(IN_FLIGHT_TARGET / per_cta) if per_cta else 1
    registers = register_overhead(block) + register_floats(block, hidden, config, target)
    by_regs = target.regs_per_sm // (config.threads * min(255, registers))
    return max(1, min(want, target.max_threads_per_sm // config.threads, by_regs))


def _entries(block: Block, name: str, vec: int, hidden: int) -> tuple[Entry, ...]:
    """The wide entry point; a peeled one when VEC does not divide hidden (rows start unaligned,
    see Entry); and a narrow one for tensors not aligned for VEC elements."""
    widths = [p.dtype.value_bytes for p in block.params if p.op != "scalar"] + [
        o.dtype.value_bytes for o in block.outputs if o.node.kind is not Kind.GROUP]  # those: element-wise
    align = max(max(1, min(16, int(vec * width))) for width in widths)
    if vec == 1:
        return (Entry(name, True, align),)
    peel = (Entry(f"{name}_peeled", True, align, peel=True),) if hidden % vec and peelable(block) else ()
    return (Entry(name, True, align), *peel, Entry(f"{name}_narrow", False, 1))


def _abi(block: Block, row_in: dict[str, RowTensor], row_out: dict[str, RowTensor], dropout: bool,
         col_sums: tuple[ColSum, ...]) -> tuple[Param, ...]:
    """The kernel's parameters in order: inputs by declaration, outputs, the column reductions'
    workspaces, then seed/offset and rows (column outputs are the finalize kernel's)."""
    params: list[Param] = []
    for p in block.params:
        if p.op == "input":
            restrict = " __restrict__" if row_in[p.name].restrict else ""
            params += [Param("row_in", p.name, f"const {p.dtype.c_type}*{restrict}", dtype=p.dtype.name),
                       Param("stride", f"{p.name}_stride", "long long", of=p.name)]
        elif p.op == "weight":
            params.append(Param("col_in", p.name, f"const {p.dtype.c_type}* __restrict__", dtype=p.dtype.name))
        elif p.op == "row_scalar":
            params.append(Param("rowscalar_in", p.name, f"const {p.dtype.c_type}* __restrict__", dtype=p.dtype.name))
        else:
            params.append(Param("scalar", p.name, "float", dtype=p.dtype.name))
    for o in block.outputs:
        if o.node.kind in ROW_LIKE:
            restrict = " __restrict__" if row_out[o.name].restrict else ""
            params += [Param("row_out", o.name, f"{o.dtype.c_type}*{restrict}", dtype=o.dtype.name),
                       Param("stride", f"{o.name}_stride", "long long", of=o.name)]
        elif o.node.kind is Kind.ROWS:
            params.append(Param("rowscalar_out", o.name, f"{o.dtype.c_type}* __restrict__", dtype=o.dtype.name))
    params += [Param("workspace", c.ws, "float* __restrict__") for c in col_sums]
    if dropout:
        params += [Param("seed", "seed", "unsigned long long"), Param("offset", "offset", "unsigned long long")]
    params.append(Param("rows", "rows", "long long"))
    return tuple(params)
