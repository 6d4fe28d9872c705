"""`rg.verify`: run a kernel and the reference on fresh random inputs and compare every output."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch

from resgen.codegen import LaunchConfig
from resgen.errors import BackendUnavailableError, LaunchError
from resgen.ir.block import Block
from resgen.ir.dtypes import DType, bf16, e8m0, f4e2m1, f8e4m3, f8e5m2, f16, f32, from_storage, i8, to_storage
from resgen.reference import reference
from resgen.signature import value_shape

if TYPE_CHECKING:
    from resgen.runtime.kernel import Kernel

#: Per storage dtype: (tolerance on ||out - ref|| / ||ref||, tolerance on max |out - ref| / max(1, max |ref|)).
#: Outputs are compared after rounding, so a one-ulp difference of the storage dtype must pass.
TOLERANCES: dict[DType, tuple[float, float]] = {f32: (1e-5, 1e-5), f16: (1e-3, 1e-3), bf16: (8e-3, 8e-3),
                                                 # quantized outputs: a value that sits on a rounding
                                                 # boundary may land one step away (an e4m3 step is 1/8
                                                 # of the value, an i8 step 1/127 of the row's range)
                                                 f8e4m3: (2e-2, 0.125), f8e5m2: (4e-2, 0.25), i8: (1e-2, 1 / 64),
                                                 # a block scale one step off is twice or half; an e2m1
                                                 # step is up to a third of the value (4 -> 6)
                                                 e8m0: (1e-2, 1.0), f4e2m1: (5e-2, 0.5)}
#: The same for gradients: a norm's backward multiplies float32 rounding error by rstd (up to
#: 1/sqrt(eps) for a constant row) and differences two row sums, so ten times the forward's.
GRAD_TOLERANCES: dict[DType, tuple[float, float]] = {d: (10 * r, 10 * a) for d, (r, a) in TOLERANCES.items()}


@dataclass(frozen=True)
class OutputCheck:
    name: str
    dtype: DType
    max_abs: float
    rel_norm: float
    max_abs_tol: float
    rel_norm_tol: float
    guard_ok: bool = True  # nothing was written outside the output's elements

    @property
    def ok(self) -> bool:
        return self.guard_ok and self.max_abs <= self.max_abs_tol and self.rel_norm <= self.rel_norm_tol


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of one verification: a check per output and what ran."""

    block: str
    hidden: int
    rows: int
    backend: str
    kernel: str
    config: LaunchConfig
    outputs: tuple[OutputCheck, ...]
    hazards: tuple[str, ...] = ()  # what the sanitizer found (sanitize=True), each a readable paragraph
    schedules: tuple[str, ...] = ()  # the emulator schedules the kernel ran under (sanitize=True)

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.outputs) and not self.hazards

    def __getitem__(self, name: str) -> OutputCheck:
        return next(o for o in self.outputs if o.name == name)

    def table(self) -> str:
        lines = [f"{self.kernel} on {self.backend}: {self.rows} rows x hidden {self.hidden}, config {self.config}",
                 f"{'output':<16} {'dtype':<5} {'max |err|':>11} {'tol':>9} {'rel ||err||':>12} {'tol':>9}  result"]
        for o in self.outputs:
            verdict = "ok" if o.ok else "FAIL" if o.guard_ok else "FAIL (wrote outside the output)"
            lines.append(f"{o.name:<16} {o.dtype.name:<5} {o.max_abs:>11.3e} {o.max_abs_tol:>9.1e} "
                         f"{o.rel_norm:>12.3e} {o.rel_norm_tol:>9.1e}  {verdict}")
        if self.schedules:
            lines.append(f"sanitizer: ran under the {', '.join(self.schedules)} schedules; "
                         f"{len(self.hazards) or 'no'} hazard(s)")
            lines += [f"  {h}" for h in self.hazards]
        lines.append("PASS" if self.ok else "FAIL")
        return "\n".join(lines)


def random_inputs(block: Block, lead: tuple[int, ...], hidden: int, *, seed: int = 0,
                  device: str | torch.device = "cpu") -> dict[str, object]:
    """Fresh random arguments for every parameter (normal row inputs and row scalars, weights near 1,
    scalars in [0.5, 1.5)), drawn on `device` itself."""
    device = torch.device(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    args: dict[str, object] = {}
    for p in block.params:
        if p.op == "scalar":
            args[p.name] = 0.5 + torch.rand((), generator=gen, device=device).item()
            continue
        shape = value_shape(p, p.dtype, lead, hidden)
        shape = (*shape[:-1], shape[-1] * p.dtype.pack)  # a packed tensor's values, before packing
        values = torch.randn(shape, generator=gen, device=device)
        if p.op == "weight":
            values = 1.0 + 0.5 * values
        if not p.dtype.is_float:
            values = 32 * values  # integer inputs: spread over many codes, not just -1, 0, 1
        args[p.name] = to_storage(values, p.dtype)
    return args


#: Elements `compare` widens to float64 at a time: small enough to stay in cache, so a 16M-element
#: output costs no 128 MB temporaries.
COMPARE_CHUNK = 1 << 18


def compare(name: str, dtype: DType, out: torch.Tensor, ref: torch.Tensor,
            tolerances: dict[DType, tuple[float, float]] = TOLERANCES) -> OutputCheck:
    """Errors of `out` against `ref`; NaN anywhere `ref` is finite (a poisoned, unwritten element) fails."""
    rel_tol, abs_tol = tolerances[dtype]
    if dtype.pack > 1:  # packed: compare the values
        out, ref = from_storage(out.detach().cpu(), dtype), from_storage(ref.detach().cpu(), dtype)
    out_flat, ref_flat = out.detach().cpu().reshape(-1), ref.detach().cpu().reshape(-1)
    max_abs = err_sq = ref_sq = ref_max = 0.0
    for lo in range(0, out_flat.numel(), COMPARE_CHUNK):
        got, want = out_flat[lo:lo + COMPARE_CHUNK].double(), ref_flat[lo:lo + COMPARE_CHUNK].double()
        diff = (got - want).abs()
        peak = want.abs().max().item()  # inf or NaN when some element is
        if not math.isfinite(peak):  # equal infinities and NaN for NaN are no error; the rest are
            finite = torch.isfinite(want)
            diff = diff.masked_fill(~finite & (got == want) | (want.isnan() & got.isnan()), 0.0)
            want = want.masked_fill(~finite, 0.0)
            peak = want.abs().max().item()
        worst = diff.max().item()  # NaN when any is
        if math.isnan(worst):
            return OutputCheck(name, dtype, math.inf, math.inf, abs_tol, rel_tol)
        max_abs = max(max_abs, worst)
        err_sq += torch.dot(diff, diff).item()
        ref_sq += torch.dot(want, want).item()
        ref_max = max(ref_max, peak)
    # Relative to ||ref||, but never to less than abs_tol per element: an output that is all but zero
    # (a gradient that cancels out) is judged by its absolute error.
    norm = max(math.sqrt(ref_sq), abs_tol * math.sqrt(max(1, ref_flat.numel())))
    return OutputCheck(name, dtype, max_abs, math.sqrt(err_sq) / norm, abs_tol * max(1.0, ref_max), rel_tol)


#: Elements of poison kept before, after and (for row outputs) between the rows of every output.
GUARD = 64
ROW_GAP = 8


#: What fills an output before the kernel runs: NaN, or for outputs with no NaN (integers, packed
#: e2m1: then the value, or the byte) one of two values; a kernel runs once per value, and an element
#: that differs between the runs was never written.
INT_POISONS = (-128, 85)


def has_nan(dtype: torch.dtype) -> bool:
    return dtype.is_floating_point and dtype != torch.float4_e2m1fn_x2


def poison(dtype: torch.dtype, run: int = 0) -> float:
    return float("nan") if has_nan(dtype) else INT_POISONS[run]


def _full(shape: tuple[int, ...], fill: float, dtype: torch.dtype, device: str | torch.device) -> torch.Tensor:
    if dtype == torch.float4_e2m1fn_x2:  # torch cannot fill it: fill its bytes
        return torch.full(shape, int(fill) & 0xFF, dtype=torch.uint8, device=device).view(dtype)
    return torch.full(shape, fill, dtype=dtype, device=device)


def guarded_output(shape: tuple[int, ...], dtype: torch.dtype, device: str,
                   fill: float = float("nan")) -> tuple[torch.Tensor, torch.Tensor]:
    """(view, backing buffer): a poison-filled output carved out of a larger poisoned buffer, rows
    apart by ROW_GAP elements, so a write outside the view changes the buffer where no element lives."""
    rows, pitch = shape[0], shape[1] + ROW_GAP if len(shape) == 2 else 1
    backing = _full((2 * GUARD + rows * pitch,), fill, dtype, device)
    view = backing[GUARD:GUARD + rows * pitch].view(rows, pitch)[:, : shape[1]] if len(shape) == 2 else (
        backing[GUARD:GUARD + rows])
    return view, backing


def untouched_outside(view: torch.Tensor, backing: torch.Tensor, fill: float = float("nan")) -> bool:
    """True when every element of `backing` outside `view` still holds the poison `fill`."""
    inside = torch.zeros(backing.shape, dtype=torch.bool, device=backing.device)
    inside.as_strided(view.shape, view.stride(), view.storage_offset() - backing.storage_offset()).fill_(True)
    size = backing.element_size()
    outside = backing.view(torch.uint8).reshape(-1, size)[~inside]
    return bool((outside == _full((1,), fill, backing.dtype, backing.device).view(torch.uint8)).all())


def gradient_case(block: Block, rows: int, hidden: int, *, seed: int = 0, device: str | torch.device = "cpu"
                  ) -> tuple[dict[str, object], dict[str, torch.Tensor]]:
    """(arguments of `rg.grad(block)`, the gradients torch autograd computes through `rg.reference`).

    Fresh random forward inputs and cotangents (one `d_<output>` per output); the saved statistics
    come from the training forward's reference, as a training call would save them."""
    from resgen.passes.autodiff import saved_statistics, with_saved_statistics

    args = random_inputs(block, (rows,), hidden, seed=seed, device=device)
    diff = [p.name for p in block.params if p.op in ("input", "weight")]
    leaves = {k: v.clone().requires_grad_(k in diff) if isinstance(v, torch.Tensor) else v for k, v in args.items()}
    with torch.enable_grad():
        out = reference(block, **leaves, seed=seed)
        gen = torch.Generator(device=torch.device(device)).manual_seed(seed + 1)
        cotangents = {f"d_{o.name}": torch.randn(out[o.name].shape, generator=gen, device=device).to(out[o.name].dtype)
                      for o in block.outputs}
        grads = torch.autograd.grad([out[o.name] for o in block.outputs], [leaves[n] for n in diff],
                                    [cotangents[f"d_{o.name}"] for o in block.outputs], allow_unused=True)
    want = {f"d_{n}": torch.zeros_like(args[n]) if g is None else g for n, g in zip(diff, grads, strict=True)}
    stats = reference(with_saved_statistics(block), **args, seed=seed)
    saved = {f"saved_{k}": stats[f"saved_{k}"] for k in range(len(saved_statistics(block)))}
    return {**args, **saved, **cotangents}, want


def verify(block: Block, hidden: int, rows: int, backend: str = "auto", seed: int = 0,
           config: LaunchConfig | str | None = None, arch: str | None = None,
           sanitize: bool = False, grad: bool = False) -> VerifyReport:
    """Compile `block`, run it and the reference on fresh random inputs, and compare every output.

    grad: verify the backward kernel (`rg.grad(block)`, compiled with `config`) instead: every
    gradient it computes is compared with torch autograd through `rg.reference(block)` within
    GRAD_TOLERANCES, on fresh inputs and cotangents, its outputs poisoned the same way.

    Outputs are preallocated, poisoned with NaN and surrounded by poisoned guards (row outputs with
    a gap between rows): an element the kernel never writes fails, and so does any write outside
    the output. Dropout runs with its real p, keyed by `seed`.

    sanitize (emu backend): the kernel is built with the emulator's sanitizer, which reports
    out-of-bounds and misaligned accesses, shared-memory races, shuffles naming exited lanes,
    barriers some threads never reach and reads of an exited cluster CTA's shared memory, each at
    its line of the emitted source; and it runs under three schedules (in order, reversed, random
    with eager barrier release), whose outputs must be bitwise equal.
    """
    from resgen.runtime.kernel import compile

    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
        raise LaunchError(f"verify: argument 'rows' must be an int >= 0, got {rows!r}")
    if sanitize and backend not in ("auto", "emu"):
        raise BackendUnavailableError(f"verify: sanitize=True runs on the emu backend, not {backend!r}")
    if grad:
        from resgen.passes.autodiff import grad as derive

        kernel = compile(derive(block), hidden, backend="emu" if sanitize else backend, config=config, arch=arch,
                         sanitize=sanitize)
        device = "cuda" if kernel.backend == "cuda" else "cpu"
        args, want = gradient_case(block, rows, hidden, seed=seed, device=device)
        args = {p.name: args[p.name] for p in kernel.block.params}
        return verify_kernel(kernel, rows, seed=seed, cases=(args, want), tolerances=GRAD_TOLERANCES)
    kernel = compile(block, hidden, backend="emu" if sanitize else backend, config=config, arch=arch,
                     sanitize=sanitize)
    return verify_kernel(kernel, rows, seed=seed)


def verify_kernel(kernel: Kernel, rows: int, seed: int = 0,
                  cases: tuple[dict[str, object], dict[str, torch.Tensor]] | None = None,
                  tolerances: dict[DType, tuple[float, float]] = TOLERANCES) -> VerifyReport:
    """`verify` for an already built kernel (sanitized when its emu backend was built so); `cases`
    gives the arguments and expected outputs instead of random inputs and the kernel's reference."""
    block, hidden = kernel.block, kernel.hidden
    sanitize = getattr(kernel._backend, "sanitize", False)
    device = "cuda" if kernel.backend == "cuda" else "cpu"
    if cases is None:
        args = random_inputs(block, (rows,), hidden, seed=seed, device=device)
        want = reference(block, **args, seed=seed)
    else:
        args, want = cases

    def run(fill: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        call = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in args.items()}
        backings = {}
        for o in block.outputs:
            if not o.inplace:
                call[o.name], backings[o.name] = guarded_output(value_shape(o.node, o.dtype, (rows,), hidden),
                                                                o.dtype.torch_dtype, device,
                                                                poison(o.dtype.torch_dtype, fill))
        got = kernel(**call, seed=seed)
        return {o.name: got[o.name] for o in block.outputs}, backings

    got, backings = run()
    checks = tuple(
        replace(compare(o.name, o.dtype, got[o.name], want[o.name], tolerances),
                guard_ok=o.name not in backings or untouched_outside(got[o.name], backings[o.name],
                                                                     poison(o.dtype.torch_dtype)))
        for o in block.outputs)
    integers = [k for k, o in enumerate(block.outputs) if not has_nan(o.dtype.torch_dtype) and o.name in backings]
    if integers:  # no NaN to poison with: run again over the other poison; an unwritten element differs
        again, backings = run(1)
        for k in integers:
            name = block.outputs[k].name
            written = torch.equal(_bits(again[name]), _bits(got[name])) and untouched_outside(
                again[name], backings[name], poison(block.outputs[k].dtype.torch_dtype, 1))
            checks = (*checks[:k], replace(checks[k], guard_ok=checks[k].guard_ok and written), *checks[k + 1:])
    hazards: list[str] = []
    schedules: tuple[str, ...] = ()
    if sanitize:
        hazards, schedules = _sanitize(kernel, got, run, seed)
    return VerifyReport(block.name, hidden, rows, kernel.backend, kernel.name, kernel.config, checks,
                        tuple(hazards), schedules)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().view(torch.uint8)


def _sanitize(kernel: Kernel, first: dict[str, torch.Tensor], run: Callable[[], tuple[dict, dict]],
              seed: int) -> tuple[list[str], tuple[str, ...]]:
    """Hazards of the forward run, then of a reversed and a random schedule, plus every output that
    is not bitwise equal across schedules (a race the instrumentation did not see)."""
    backend = kernel._backend
    hazards = [str(h) for h in backend.hazards()]
    schedules = ("forward", "reverse", "random")
    for schedule in schedules[1:]:
        backend.set_schedule(schedule, seed)
        try:
            outputs, _ = run()
        finally:
            backend.set_schedule("forward")
        hazards += [str(h) for h in backend.hazards() if str(h) not in hazards]
        for name, value in outputs.items():
            if not torch.equal(_bits(value), _bits(first[name])):
                differ = _bits(value) != _bits(first[name])
                hazards.append(f"schedule-dependent result: output {name!r} differs in {int(differ.sum())} byte(s) "
                               f"between the forward and {schedule} schedules (a race)")
    return hazards, schedules
