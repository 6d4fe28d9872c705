"""`LaunchConfig` (the tunable choices) and `KernelPlan` (everything the template needs, as plain values)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from resgen.errors import PlanError

CACHES = ("registers", "smem", "global")
_POW2 = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


@dataclass(frozen=True)
class LaunchConfig:
    """How a kernel maps rows and columns onto threads.

    threads_per_row: threads that share one row (1..32: a warp holds several rows; 64..1024:
    several warps per row). rows_per_cta: rows one CTA processes side by side. vec: consecutive
    elements per thread per access (16-byte accesses when vec * itemsize allows). cache: where
    the row's inputs wait between reduction phases: registers, shared memory, or nowhere (the
    later phase reads them again from global memory). cluster: CTAs that share one row as a
    thread-block cluster (sm_90+), meeting in distributed shared memory for the reductions, so a
    row too large for one CTA's shared memory still stays on chip. persist: 0 runs a CTA (cluster)
    per row group; k > 0 runs k CTAs per SM of the target (`KernelPlan.persistent_ctas`), each
    looping over row groups with its weights kept in registers and the next row group prefetched
    into L2 while it reduces the current one.
    """

    threads_per_row: int
    rows_per_cta: int
    vec: int
    cache: str = "registers"
    cluster: int = 1
    persist: int = 0

    SHORT = {"threads_per_row": "tpr", "rows_per_cta": "rows", "vec": "vec", "cache": "cache", "cluster": "cluster",
             "persist": "persist"}
    #: Fields printed only when they differ from their default (older configs read the same).
    QUIET = {"persist": 0}

    def __post_init__(self) -> None:
        if self.threads_per_row not in _POW2:
            raise PlanError(f"config: threads_per_row must be a power of two in 1..1024, got {self.threads_per_row}")
        if not isinstance(self.rows_per_cta, int) or self.rows_per_cta < 1:
            raise PlanError(f"config: rows_per_cta must be an int >= 1, got {self.rows_per_cta!r}")
        if self.vec not in (1, 2, 4, 8):
            raise PlanError(f"config: vec must be 1, 2, 4 or 8, got {self.vec}")
        if self.cache not in CACHES:
            raise PlanError(f"config: cache must be one of {', '.join(CACHES)}, got {self.cache!r}")
        if self.threads > 1024:
            raise PlanError(f"config: threads_per_row * rows_per_cta = {self.threads} exceeds 1024 threads per CTA")
        if self.threads % 32:
            raise PlanError(f"config: threads_per_row * rows_per_cta = {self.threads} must be a multiple of 32 "
                            f"(whole warps; warp shuffles use every lane)")
        if self.cluster not in (1, 2, 4, 8):
            raise PlanError(f"config: cluster must be 1, 2, 4 or 8 CTAs, got {self.cluster}")
        if self.cluster > 1 and self.rows_per_cta != 1:
            raise PlanError(f"config: a cluster of {self.cluster} CTAs shares one row; rows_per_cta must be 1")
        if isinstance(self.persist, bool) or not isinstance(self.persist, int) or not 0 <= self.persist <= 8:
            raise PlanError(f"config: persist must be an int in 0..8 (CTAs per SM that loop over rows; 0: none), "
                            f"got {self.persist!r}")
        if self.persist and self.persist * self.threads > 2048:
            raise PlanError(f"config: persist={self.persist} CTAs of {self.threads} threads exceed an SM's 2048 threads")

    @property
    def threads(self) -> int:
        return self.threads_per_row * self.rows_per_cta

    @property
    def family(self) -> str:
        """warp-per-row (several rows per warp or a warp each), cta-per-row, or smem-staged/global-staged."""
        if self.cluster > 1:
            return f"cluster-{self.cache}"
        if self.cache != "registers":
            return f"{self.cache}-staged"
        return "warp-per-row" if self.threads_per_row <= 32 else "cta-per-row"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return ",".join(f"{self.SHORT[f.name]}={getattr(self, f.name)}" for f in fields(self)
                        if self.QUIET.get(f.name, object()) != getattr(self, f.name))

    @classmethod
    def fields_of(cls, text: str) -> dict[str, Any]:
        """The fields `tpr=256,cache=smem` sets, by LaunchConfig field name (validated one by one)."""
        values: dict[str, Any] = {}
        longs = {v: k for k, v in cls.SHORT.items()} | {k: k for k in cls.SHORT}
        for item in filter(None, (s.strip() for s in text.split(","))):
            key, sep, value = item.partition("=")
            if not sep or key.strip() not in longs:
                raise PlanError(f"--config: cannot parse {item!r}; expected key=value with keys {', '.join(cls.SHORT.values())}")
            name = longs[key.strip()]
            values[name] = value.strip() if name == "cache" else _int(name, value)
        return values

    @classmethod
    def parse(cls, text: str, base: LaunchConfig | None = None) -> LaunchConfig:
        """Parse `tpr=256,rows=1,vec=8,cache=registers,cluster=1` (missing keys come from `base`, and
        cluster defaults to 1). To fill missing keys with values that fit, use `default_config`'s `fixed`."""
        values: dict[str, Any] = base.as_dict() if base else {}
        values.update(cls.fields_of(text))
        values.setdefault("cluster", 1)
        values.setdefault("persist", 0)
        missing = [cls.SHORT[f.name] for f in fields(cls) if f.name not in values]
        if missing:
            raise PlanError(f"--config: missing {', '.join(missing)}")
        return cls(**values)


def _int(name: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise PlanError(f"--config: {name} must be an integer, got {value!r}") from None


#: The one-letter prefix of each role a user-named value plays in the emitted source. Every such
#: identifier is `<prefix>_<name>`: no two roles or names can collide, and no user name can meet a C
#: keyword, a macro (NAN, EOF, ...) or a template local (none has `_` as its second character).
ROLES = {"ptr": "p", "stride": "s", "row": "r", "cache": "c", "values": "v", "scalar": "a"}


#: ABI roles whose argument is a tensor's data pointer (workspace: a column reduction's partial sums).
POINTER_ROLES = ("row_in", "row_out", "col_in", "rowscalar_in", "rowscalar_out", "col_out", "workspace")


def ident(role: str, name: str) -> str:
    """The C identifier of the user-named value `name` in `role` (see ROLES)."""
    return f"{ROLES[role]}_{name}"


@dataclass(frozen=True)
class RowTensor:
    """A row input or output, by its user name; its C identifiers come from `ident`."""

    name: str
    c_type: str
    itemsize: int
    restrict: bool
    smem_offset: int = 0  # byte offset of this input's cache in dynamic shared memory
    cached: bool = False  # kept on chip (registers or shared memory) for a later phase
    pack: int = 1  # values per storage element (f4e2m1: 2)
    group: int = 0  # a group output: one value per `group` columns of the row

    @property
    def bytes_per_value(self) -> float:
        """Bytes this tensor holds per value of the row (a group output: per column it covers)."""
        return self.itemsize / self.pack / max(1, self.group)

    @property
    def ptr(self) -> str:
        return ident("ptr", self.name)

    @property
    def stride(self) -> str:
        return ident("stride", self.name)

    @property
    def row(self) -> str:
        return ident("row", self.name)

    @property
    def cache(self) -> str:
        return ident("cache", self.name)

    @property
    def var(self) -> str:  # the per-chunk array of floats
        return ident("values", self.name)


@dataclass(frozen=True)
class ColTensor:
    name: str
    c_type: str
    hoisted: str = ""  # a persistent kernel's weight, loaded once for all its rows into "registers" or "smem"
    smem_offset: int = 0  # byte offset of its copy in dynamic shared memory (hoisted == "smem")

    @property
    def cache(self) -> str:
        return ident("cache", self.name)

    @property
    def ptr(self) -> str:
        return ident("ptr", self.name)

    @property
    def var(self) -> str:
        return ident("values", self.name)


@dataclass(frozen=True)
class Reduction:
    index: int  # which scratch slot in shared memory
    var: str
    op: str  # "sum" | "max" | "var" (one-pass variance: rg_welford)
    value: str  # the expression accumulated per element
    init: str


@dataclass(frozen=True)
class Store:
    tensor: RowTensor
    value: str  # the per-element expression stored


@dataclass(frozen=True)
class GroupShape:
    """How groups of `size` consecutive columns lie on chunks of `vec`: a chunk holds `slots` =
    max(1, vec / size) of them (element j in slot j / width), or one spans `lanes` = size / vec
    neighbouring lanes."""

    size: int
    vec: int

    @property
    def width(self) -> int:
        return min(self.size, self.vec)

    @property
    def slots(self) -> int:
        return self.vec // self.width

    @property
    def lanes(self) -> int:
        return max(1, self.size // self.vec)


@dataclass(frozen=True)
class GroupReduction(GroupShape):
    """A reduction over groups inside the column loop: each thread combines its chunk's elements into
    its slots, then the group's lanes combine theirs with shuffles (no shared memory, no barrier)."""

    var: str  # the array of partials, t<i>
    op: str  # "max" | "sum"
    value: str  # the per-element expression combined

    @property
    def init(self) -> str:
        return "rg_neg_inf()" if self.op == "max" else "0.0f"

    @property
    def combine(self) -> str:
        acc = f"{self.var}[j / {self.width}]"
        return f"rg_fmax({acc}, {self.value})" if self.op == "max" else f"{acc} + {self.value}"


@dataclass(frozen=True)
class Segment:
    """A column loop of a phase that ends in group reductions the rest of the phase reads."""

    computes: tuple[str, ...]  # C statements, per element j
    groups: tuple[GroupReduction, ...]


@dataclass(frozen=True)
class GroupStore(GroupShape):
    """A group output: a value per group, written by the first lane of each group."""

    tensor: RowTensor
    value: str  # the per-element expression (equal over the group)


@dataclass(frozen=True)
class Dropout:
    """One dropout site's mask in a phase: drawn from Philox, or (reuse) read back from the bits an
    earlier phase kept, as uniforms of 1.0 (kept: >= p) and 0.0 (dropped: < p, as p > 0)."""

    var: str  # array of uniforms
    site: int
    p: str = "0.0f"  # the C literal the mask compares with
    keep: bool = False  # this phase draws the mask and keeps its bits for a later phase
    reuse: bool = False  # this phase reads the kept bits instead of drawing again

    @property
    def bits(self) -> str:
        return f"drop{self.site}_bits"


@dataclass(frozen=True)
class RowScalarStore:
    name: str
    c_type: str
    value: str

    @property
    def ptr(self) -> str:
        return ident("ptr", self.name)


@dataclass(frozen=True)
class ColSum:
    """A column reduction (col_sum): each thread adds its columns of every row it sees into
    `acc` (registers, or its own columns of shared memory), writes them to its row of the float32
    workspace `ws`, and the finalize kernel sums the workspace's rows in order into the output
    `out` (deterministic, no atomics)."""

    index: int
    value: str  # the per-element expression accumulated
    out: str  # the output's user name
    c_type: str  # the output's storage type
    smem_offset: int = -1  # byte offset of the accumulators in dynamic shared memory; -1: registers

    @property
    def acc(self) -> str:
        return f"k{self.index}"

    @property
    def ws(self) -> str:
        return f"rg_ws{self.index}"

    @property
    def ptr(self) -> str:
        return ident("ptr", self.out)


@dataclass(frozen=True)
class Held:
    """A computed row value kept on chip, as the float32 it was computed as, from the phase that
    computes it to the later phases that read it (resgen.codegen.liveness)."""

    var: str  # its per-element C name, t<i>
    smem_offset: int = 0  # byte offset of its cache in dynamic shared memory (cache=smem)

    @property
    def cache(self) -> str:
        return "h" + self.var[1:]


@dataclass(frozen=True)
class Phase:
    """One pass over the row's columns; ends with its reductions and the row scalars they unlock."""

    index: int
    loads: tuple[RowTensor, ...]  # row inputs read from global memory in this phase
    cached: tuple[RowTensor, ...]  # row inputs read from the cache (registers or shared memory)
    weights: tuple[ColTensor, ...]
    dropouts: tuple[Dropout, ...]
    computes: tuple[str, ...]  # C statements, per element j
    reductions: tuple[Reduction, ...]
    stores: tuple[Store, ...]
    after: tuple[str, ...]  # C statements computing row scalars once the reductions are done
    row_scalar_stores: tuple[RowScalarStore, ...]
    col_sums: tuple[ColSum, ...] = ()  # column reductions whose value this phase computes
    keeps: tuple[Held, ...] = ()  # computed values this phase leaves in the row cache
    held: tuple[Held, ...] = ()  # computed values this phase reads from the row cache
    segments: tuple[Segment, ...] = ()  # column loops before `computes`' that finish group reductions
    group_stores: tuple[GroupStore, ...] = ()


@dataclass(frozen=True)
class Param:
    """One kernel argument, in ABI order. role: row_in, row_out, stride, col_in, rowscalar_out, scalar,
    seed, offset, rows. `of` names the tensor a stride belongs to."""

    role: str  # row_in, row_out, stride, col_in, rowscalar_in, rowscalar_out, scalar, seed, offset, rows
    name: str  # the call's argument name (a user name, or seed / offset / rows)
    c_type: str
    of: str = ""
    dtype: str = ""

    @property
    def c_name(self) -> str:
        if self.role == "workspace":
            return self.name
        if self.role in POINTER_ROLES:
            return ident("ptr", self.name)
        if self.role == "stride":
            return ident("stride", self.of)
        if self.role == "scalar":
            return ident("scalar", self.name)
        return self.name

    @property
    def c_decl(self) -> str:
        return f"{self.c_type} {self.c_name}"


@dataclass(frozen=True)
class Entry:
    """A __global__ entry point: `wide` ones need every row and weight aligned for VEC-element access;
    a `peel` one (hidden not a multiple of VEC) needs only aligned row bases and row strides equal
    modulo VEC, and shifts each row's chunks to aligned addresses."""

    name: str
    wide: bool
    align: int  # bytes every pointer and row stride must be a multiple of
    peel: bool = False


@dataclass(frozen=True)
class KernelPlan:
    """Everything the template renders, as plain values; built only by `lower`."""

    name: str
    block_name: str
    block_key: str
    regenerate: str  # how to emit this source again (a CLI command for catalog blocks)
    ir_text: str
    arch: str
    config: LaunchConfig
    hidden: int
    iters: int
    tail: bool
    unroll: int
    smem_bytes: int  # dynamic shared memory: the row cache, reduction scratch, cluster partials
    smem_pitch: int  # elements of one row this CTA caches
    smem_scratch: int  # byte offset of the reductions' per-warp partials
    smem_partials: int  # byte offset of the slots the cluster's CTAs push their partials into
    includes: tuple[str, ...]
    params: tuple[Param, ...]
    row_inputs: tuple[RowTensor, ...]
    row_scalar_inputs: tuple[ColTensor, ...]  # one value per row, read once (`var` holds it)
    row_outputs: tuple[RowTensor, ...]
    prologue: tuple[str, ...]
    row_prologue: tuple[str, ...]  # C statements for row scalars that need no reduction (from row-scalar inputs)
    phases: tuple[Phase, ...]
    uses_dropout: bool
    reductions: int
    entries: tuple[Entry, ...]
    col_sums: tuple[ColSum, ...] = ()
    held: tuple[Held, ...] = ()  # computed values kept between phases
    persistent_ctas: int = 0  # > 0: CTAs (clusters) loop over row groups, at most this many of them
    hoisted: tuple[ColTensor, ...] = ()  # weights a persistent kernel loads once, before its row loop
    masks: tuple[Dropout, ...] = ()  # dropout masks drawn once and kept as bits (one word per chunk)
    min_ctas: int = 1  # __launch_bounds__' CTAs per SM: what the loads in flight (or `persist`) want
    finalize: Entry | None = None  # the kernel that sums the column reductions' partials
    finalize_params: tuple[Param, ...] = ()

    @property
    def threads(self) -> int:
        return self.config.threads

    @property
    def peels(self) -> bool:
        """The kernel has a _peeled entry (see Entry)."""
        return any(e.peel for e in self.entries)

    @property
    def trailing_barrier(self) -> bool:
        """A persistent kernel's row group must end at a barrier before the next one reduces into
        the same shared memory: only with a single reduction that goes through the CTA's scratch
        (more than a warp per row). With two or more, the next row group's first barrier comes
        between a slot's last read and its next write; a warp's own reduction uses shuffles. A
        cluster's partials need none: they alternate between two sets on alternate turns of the loop
        (a peer's push on turn k + 2 follows its barrier on turn k + 1, which follows this CTA's
        reads on turn k)."""
        return self.reductions == 1 and self.config.threads_per_row > 32

    @property
    def persistent(self) -> bool:
        """CTAs (clusters) loop over row groups: column reductions, or `config.persist`."""
        return self.persistent_ctas > 0

    def grid(self, rows: int) -> int:
        groups = math.ceil(rows / self.config.rows_per_cta)
        if self.persistent_ctas:
            groups = min(groups, self.persistent_ctas)
        return groups * self.config.cluster

    def partials(self, rows: int) -> int:
        """Rows of each column reduction's workspace: one per CTA slot that looped over row groups."""
        return self.grid(rows) // self.config.cluster * self.config.rows_per_cta

    FINALIZE_THREADS = 256
    #: Floats of one reduction's slot in shared memory, per warp and per CTA of a cluster: a row
    #: variance's rg_welford (count, shift, offset, m2); the other reductions use the first.
    SLOT_FLOATS = 4

    @property
    def col_sums_in_smem(self) -> bool:
        """The column accumulators live in shared memory (each ColSum's smem_offset), not registers."""
        return any(c.smem_offset >= 0 for c in self.col_sums)

    def finalize_grid(self) -> int:
        return math.ceil(self.hidden / self.FINALIZE_THREADS)

    def _kept(self) -> list[str]:
        """What the row cache holds: inputs by name, computed values by their IR number (%<i>)."""
        return [t.name for t in self.row_inputs if t.cached] + [f"%{h.var[1:]}" for h in self.held]

    def _smem_parts(self) -> str:
        parts = (["row cache"] if self.config.cache == "smem" and self._kept() else []) + (
            ["weights"] if self.hoisted and self.hoisted[0].hoisted == "smem" else []) + (
            ["column sums"] if self.col_sums_in_smem else []) + (["reduction partials"] if self.reductions else [])
        return ", ".join(parts) or "none used"

    def _groups(self) -> list[str]:
        """Each group reduction: what it combines, and where (a thread's chunk, or lanes' shuffles)."""
        return [f"{g.op} over {g.size} columns (" + ("in a chunk" if g.lanes == 1 else f"{g.lanes} lanes' shuffles") + ")"
                for phase in self.phases for segment in phase.segments for g in segment.groups]

    def summary(self) -> list[str]:
        c = self.config
        return [
            f"kernel      {self.name}",
            f"arch        {self.arch}",
            f"hidden      {self.hidden} ({self.iters} chunk(s) of {c.vec} per thread{', predicated tail' if self.tail else ''})",
            f"launch      {c.threads} threads/CTA = {c.rows_per_cta} row(s) x {c.threads_per_row} threads"
            + (f", {c.cluster} CTAs per row (cluster)" if c.cluster > 1 else "") + f" ({c.family})",
            f"row cache   {c.cache}" + (f" ({', '.join(self._kept())} kept between phases)" if self._kept() else ""),
            *([f"col sums    {len(self.col_sums)} accumulated in "
               + ("shared memory" if self.col_sums_in_smem else "registers")
               + f", {self.persistent_ctas} persistent CTAs, then a finalize kernel"] if self.col_sums else []),
            *([f"persistent  {self.persistent_ctas} CTAs loop over row groups, prefetching the next into L2"
               + (f"; {', '.join(w.name for w in self.hoisted)} kept in {self.hoisted[0].hoisted}" if self.hoisted else "")]
              if self.persistent_ctas and not self.col_sums else []),
            *(["groups      " + "; ".join(self._groups())] if self._groups() else []),
            f"shared mem  {self.smem_bytes} bytes dynamic ({self._smem_parts()})",
            f"phases      {len(self.phases)} ({self.reductions} reduction(s))",
        ]
