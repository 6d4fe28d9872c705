"""From checked call arguments to a launch: outputs, row strides, alignment, the ABI argument list.

Shared by every backend, so `emu` and `cuda` marshal arguments identically.
"""

from __future__ import annotations

import ctypes
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from resgen.codegen.plan import POINTER_ROLES, Entry, KernelPlan, Param
from resgen.errors import LaunchError
from resgen.ir.block import Block
from resgen.ir.nodes import ROW_LIKE, Kind
from resgen.signature import BoundCall, value_shape

#: ABI C type -> marshalling kind: a device pointer, a 64-bit signed or unsigned int, a float.
_KINDS = {"long long": "i64", "unsigned long long": "u64", "float": "f32"}
_CTYPES = {"ptr": ctypes.c_void_p, "i64": ctypes.c_longlong, "u64": ctypes.c_ulonglong, "f32": ctypes.c_float}


@dataclass(frozen=True)
class Launch:
    """Everything a backend needs to run one call."""

    entry: Entry
    args: tuple[tuple[str, int | float], ...]  # (kind, value) in ABI order; kind: ptr, i64, u64, f32
    grid: int
    threads: int
    smem_bytes: int
    outputs: dict[str, torch.Tensor]
    strides_aligned: bool = True
    finalize: tuple[tuple[str, int | float], ...] | None = None  # the column reductions' second kernel
    scratch: dict[str, torch.Tensor] = field(default_factory=dict)  # their workspaces, alive for the call
    peel_strides: bool = False  # the row strides agree modulo VEC (choose_entry)

    def kernel_params(self) -> tuple[ctypes.Array, list[ctypes._SimpleCData]]:
        """The `void* args[]` array both backends launch with, and the values it points to (keep alive)."""
        return marshal(self.args)

    def finalize_params(self) -> tuple[ctypes.Array, list[ctypes._SimpleCData]]:
        assert self.finalize is not None
        return marshal(self.finalize)


def marshal(args: tuple[tuple[str, int | float], ...]) -> tuple[ctypes.Array, list[ctypes._SimpleCData]]:
    values = [_CTYPES[kind](value) for kind, value in args]
    return param_array(values), values


def param_array(values: list[ctypes._SimpleCData]) -> ctypes.Array:
    """The `void* args[]` array pointing at `values` (which must outlive every launch using it)."""
    return (ctypes.c_void_p * len(values))(*(ctypes.addressof(v) for v in values))


def row_stride(name: str, t: torch.Tensor) -> int:
    """The element stride between consecutive rows of `t` viewed as [rows, columns]."""
    if t.shape[-1] > 1 and t.stride(-1) != 1:
        raise LaunchError(f"argument {name!r}: the last (hidden) dimension must be contiguous (stride 1), "
                          f"got stride {t.stride(-1)}; call .contiguous()")
    lead = [(size, stride) for size, stride in zip(t.shape[:-1], t.stride()[:-1], strict=True) if size != 1]
    for (_, outer), (inner_size, inner) in itertools.pairwise(lead):
        if outer != inner * inner_size:
            raise LaunchError(f"argument {name!r}: leading dimensions {list(t.shape[:-1])} with strides "
                              f"{list(t.stride()[:-1])} do not form one row stride; call .contiguous()")
    return lead[-1][1] if lead else t.shape[-1]


def byte_span(t: torch.Tensor) -> tuple[int, int]:
    """[first, last) byte addresses a tensor's elements occupy (its gaps included)."""
    span = 1 + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride(), strict=True)) if t.numel() else 0
    return t.data_ptr(), t.data_ptr() + span * t.element_size()


def _overlaps(a: torch.Tensor, b: torch.Tensor) -> bool:
    (a0, a1), (b0, b1) = byte_span(a), byte_span(b)
    return a0 < b1 and b0 < a1


def overlap_pairs(block: Block) -> list[tuple[str, str]]:
    """(output, other) pairs that must not share memory: each output against every input it does
    not overwrite in place, and the outputs against each other."""
    inplace = {o.name: o.inplace for o in block.outputs if o.inplace}
    reads = [p.name for p in block.params if p.op != "scalar"]
    written = [o.name for o in block.outputs]
    return [(w, r) for w in written for r in reads if r != inplace.get(w)] + [
        (a, b) for i, a in enumerate(written) for b in written[i + 1:]]


def prepare(block: Block, plan: KernelPlan, call: BoundCall, device_type: str) -> Launch:
    """Check devices, layouts and aliasing, allocate missing outputs, and build the ABI arguments."""
    hidden, lead = plan.hidden, call.lead
    for name, t in call.tensors.items():
        if t.device.type != device_type:
            raise LaunchError(f"argument {name!r} is on {t.device}, but this kernel runs on {device_type} "
                              f"(backend {'emu' if device_type == 'cpu' else 'cuda'})")
    device = next(iter(call.tensors.values())).device
    inputs = {p.name: call.tensors[p.name] for p in block.params_of("input")}
    weights = {p.name: call.tensors[p.name] for p in block.params_of("weight")}
    for name, w in weights.items():
        if hidden > 1 and w.stride(-1) != 1:
            raise LaunchError(f"argument {name!r} must be contiguous, got stride {w.stride(-1)}")
    for p in block.params_of("row_scalar"):
        if not call.tensors[p.name].is_contiguous():
            raise LaunchError(f"argument {p.name!r} (a row scalar) must be contiguous; call .contiguous()")

    outputs: dict[str, torch.Tensor] = {}
    for o in block.outputs:
        given = call.outs.get(o.name)
        if o.inplace:
            target = inputs[o.inplace]
            if given is not None and (given.data_ptr(), given.stride()) != (target.data_ptr(), target.stride()):
                raise LaunchError(f"output argument {o.name!r} is written in place into input {o.inplace!r}; "
                                  f"pass that tensor or nothing")
            outputs[o.name] = target
        elif given is not None:
            if given.device != device:
                raise LaunchError(f"output argument {o.name!r} is on {given.device}, inputs are on {device}")
            if o.node.kind is Kind.ROWS and not given.is_contiguous():
                raise LaunchError(f"output argument {o.name!r} (a row scalar) must be contiguous")
            outputs[o.name] = given
        else:
            outputs[o.name] = torch.empty(value_shape(o.node, o.dtype, lead, hidden), dtype=o.dtype.torch_dtype,
                                          device=device)

    everything = {**call.tensors, **outputs}
    for a, b in overlap_pairs(block):
        ta, tb = everything[a], everything[b]
        if ta.numel() and tb.numel() and _overlaps(ta, tb):
            if b in outputs:
                raise LaunchError(f"outputs {a!r} and {b!r} overlap")
            raise LaunchError(f"output {a!r} overlaps input {b!r}; resgen reads every input before writing, "
                              f"but only a declared in-place output may share its buffer")

    rows = call.rows
    if rows >= 2**32 and plan.uses_dropout:
        raise LaunchError(f"{rows} rows exceed dropout's 32-bit row counter")
    strides = {n: row_stride(n, t) for n, t in {**inputs, **{
        o.name: outputs[o.name] for o in block.outputs if o.node.kind in ROW_LIKE}}.items()}
    for o in block.outputs:
        if o.node.kind in ROW_LIKE and rows > 1 and strides[o.name] < outputs[o.name].shape[-1]:
            raise LaunchError(f"output {o.name!r}: rows {strides[o.name]} elements apart overlap (a row has "
                              f"{outputs[o.name].shape[-1]}); every row needs its own memory")

    wide = plan.entries[0]
    # group outputs (a value per `size` columns) are written element by element: their alignment is no matter
    group_outputs = {o.name for o in block.outputs if o.node.kind is Kind.GROUP}
    vectorised = {n: s for n, s in strides.items() if n not in group_outputs}
    row_tensors = [(inputs | outputs)[n] for n in vectorised]
    strides_aligned = rows <= 1 or all(
        (s * t.element_size()) % wide.align == 0 for s, t in zip(vectorised.values(), row_tensors, strict=True))
    peel_strides = len({s % plan.config.vec for s in vectorised.values()}) == 1
    entry = choose_entry(plan, strides_aligned, peel_strides, any_bits(t.data_ptr() for t in row_tensors),
                         any_bits(t.data_ptr() for t in weights.values()))

    workspaces = {c.ws: torch.empty((plan.partials(rows), hidden), dtype=torch.float32, device=device)
                  for c in plan.col_sums}
    pointers = {**call.tensors, **outputs, **workspaces}

    def value(p: Param) -> tuple[str, int | float]:
        if p.role in POINTER_ROLES:
            return "ptr", pointers[p.name].data_ptr()
        if p.role == "stride":
            return "i64", strides[p.of]
        if p.role == "scalar":
            return "f32", call.scalars[p.name]
        if p.role in ("seed", "offset"):
            return "u64", getattr(call, p.role)
        if p.role == "rows":
            return "i64", rows
        if p.role == "parts":
            return "i64", plan.partials(rows)
        raise AssertionError(f"unknown ABI role {p.role}")

    args = tuple(value(p) for p in plan.params)
    if plan.grid(rows) >= 2**31:
        raise LaunchError(f"{rows} rows need {plan.grid(rows)} CTAs, over CUDA's 2**31 - 1")
    finalize = tuple(value(p) for p in plan.finalize_params) if plan.finalize else None
    return Launch(entry, args, plan.grid(rows), plan.threads, plan.smem_bytes, outputs, strides_aligned,
                  finalize, workspaces, peel_strides)


def any_bits(pointers: Iterable[int]) -> int:
    """The bitwise OR of `pointers`: a multiple of a power of two exactly when every pointer is."""
    bits = 0
    for ptr in pointers:
        bits |= ptr
    return bits


def choose_entry(plan: KernelPlan, strides_aligned: bool, peel_strides: bool, rows: int, weights: int) -> Entry:
    """The wide entry when every row start and weight is aligned; else the peeled one (if the plan
    has it) when the row tensors' bases are aligned and their strides agree modulo VEC (each row
    then shifts to an aligned chunk); else the narrow one. `rows`, `weights`: the `any_bits` of the
    row tensors' and the weights' data pointers."""
    wide = plan.entries[0]
    rows_aligned = rows % wide.align == 0
    if strides_aligned and rows_aligned and weights % wide.align == 0:
        return wide
    peel = next((e for e in plan.entries if e.peel), None)
    if peel is not None and peel_strides and rows_aligned:
        return peel
    return plan.entries[-1]


@dataclass
class ArgumentSlots:
    """One kernel's reused argument storage on the warm path: the ctypes values `params` points at
    (cuLaunchKernel copies them at launch), the layout's constants written once, and per call only
    what changes: tensor pointers, runtime scalars, seed and offset."""

    pointers: tuple[tuple[ctypes._SimpleCData, str], ...]  # (slot, tensor name)
    scalars: tuple[tuple[ctypes._SimpleCData, str], ...]  # (slot, scalar name)
    calls: tuple[tuple[ctypes._SimpleCData, str], ...]  # (slot, "seed" | "offset")
    values: list[ctypes._SimpleCData]
    params: ctypes.Array

    @classmethod
    def of(cls, params: tuple[Param, ...], args: tuple[tuple[str, int | float], ...]) -> ArgumentSlots:
        values = [_CTYPES[kind](0) for kind, _ in args]
        pointers, scalars, calls = [], [], []
        for slot, p, (_, value) in zip(values, params, args, strict=True):
            if p.role in POINTER_ROLES:
                pointers.append((slot, p.name))
            elif p.role == "scalar":
                scalars.append((slot, p.name))
            elif p.role in ("seed", "offset"):
                calls.append((slot, p.role))
            else:
                slot.value = value  # a constant of the layout: strides, rows, parts
        return cls(tuple(pointers), tuple(scalars), tuple(calls), values, param_array(values))

    def fill(self, ptr: dict[str, int], scalars: dict[str, float], call: dict[str, int]) -> None:
        for slot, name in self.pointers:
            slot.value = ptr[name]
        for slot, name in self.scalars:
            slot.value = scalars[name]
        for slot, name in self.calls:
            slot.value = call[name]


@dataclass
class LaunchTemplate:
    """A launch with the pointers left out. A later call with the same shapes, strides, dtypes and
    devices reuses it: it only reads pointers, allocates outputs, checks alignment and overlap."""

    plan: KernelPlan
    strides_aligned: bool
    peel_strides: bool
    arguments: ArgumentSlots
    allocate: tuple[tuple[str, tuple[int, ...], torch.dtype], ...]
    aliases: tuple[tuple[str, str], ...]  # in-place output -> its input
    outputs: tuple[str, ...]
    rows: tuple[str, ...]  # row tensors, whose pointers decide the entry (choose_entry)
    weights: tuple[str, ...]  # and weights
    pairs: tuple[tuple[str, str, int, int], ...]  # (written, other, their byte extents) that must not overlap
    grid: int
    threads: int
    smem_bytes: int
    device: torch.device
    workspaces: tuple[tuple[str, tuple[int, ...]], ...] = ()  # column reductions' float32 partials, per call
    finalize: ArgumentSlots | None = None  # the column reductions' second kernel

    @classmethod
    def of(cls, block: Block, plan: KernelPlan, launch: Launch, tensors: dict[str, torch.Tensor]) -> LaunchTemplate:
        inplace = {o.name: o.inplace for o in block.outputs if o.inplace}
        everything = {**tensors, **launch.outputs}
        fresh = {o.name for o in block.outputs if o.name not in tensors and not o.inplace}

        def extent(t: torch.Tensor) -> int:
            lo, hi = byte_span(t)
            return hi - lo

        return cls(
            plan=plan,
            strides_aligned=launch.strides_aligned,
            peel_strides=launch.peel_strides,
            arguments=ArgumentSlots.of(plan.params, launch.args),
            allocate=tuple((o.name, tuple(launch.outputs[o.name].shape), o.dtype.torch_dtype)
                           for o in block.outputs if o.name not in tensors and not o.inplace),
            aliases=tuple(inplace.items()),
            outputs=tuple(o.name for o in block.outputs),
            rows=tuple(p.name for p in block.params if p.op == "input") + tuple(
                o.name for o in block.outputs if o.node.kind is Kind.ROW and not o.inplace),
            weights=tuple(p.name for p in block.params if p.op == "weight"),
            # an output the template allocates is fresh memory: it overlaps nothing, so only the
            # pairs of tensors the caller passes are checked per call
            pairs=tuple((a, b, extent(everything[a]), extent(everything[b])) for a, b in overlap_pairs(block)
                        if not {a, b} & fresh),
            grid=launch.grid,
            threads=launch.threads,
            smem_bytes=launch.smem_bytes,
            device=next(iter(tensors.values())).device,
            workspaces=tuple((n, tuple(t.shape)) for n, t in launch.scratch.items()),
            finalize=ArgumentSlots.of(plan.finalize_params, launch.finalize) if launch.finalize else None,
        )

    def fill(self, tensors: dict[str, torch.Tensor], scalars: dict[str, float], seed: int,
             offset: int) -> tuple[Entry, dict[str, torch.Tensor]] | None:
        """Write this call's arguments into the argument slots; None when the slow path must decide (overlap)."""
        # size= by keyword: torch parses it faster than a positional tuple (0.8 us of 2.4 per call)
        for name, shape, dtype in self.allocate:
            tensors[name] = torch.empty(size=shape, dtype=dtype, device=self.device)
        for name, shape in self.workspaces:  # torch's caching allocator: no cudaMalloc once warm
            tensors[name] = torch.empty(size=shape, dtype=torch.float32, device=self.device)
        for out, source in self.aliases:
            given = tensors.get(out)
            if given is not None and given.data_ptr() != tensors[source].data_ptr():
                return None  # not the input it overwrites: the checked path says so
            tensors[out] = tensors[source]
        ptr = {n: t.data_ptr() for n, t in tensors.items()}
        for a, b, extent_a, extent_b in self.pairs:
            if ptr[a] < ptr[b] + extent_b and ptr[b] < ptr[a] + extent_a:
                return None
        entry = choose_entry(self.plan, self.strides_aligned, self.peel_strides, any_bits(ptr[n] for n in self.rows),
                             any_bits(ptr[n] for n in self.weights))
        call = {"seed": seed, "offset": offset}
        for slots in (self.arguments, self.finalize):
            if slots is not None:
                slots.fill(ptr, scalars, call)
        return entry, {n: tensors[n] for n in self.outputs}
