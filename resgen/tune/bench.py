"""`resgen bench`: resgen against PyTorch eager, torch.compile and Liger, as GB/s and as a fraction
of the device-to-device copy bandwidth measured in the same run."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from resgen.codegen.cost import cost
from resgen.errors import SpecError
from resgen.ir.block import Block
from resgen.tune.baselines import TORCH_FORMULAS, eager, liger
from resgen.tune.timing import (
    LazySets,
    Timer,
    Timing,
    buffer_sets,
    copy_bandwidth_gbps,
    environment,
    plan_bytes,
    time_cuda,
    wall_per_call_us,
)
from resgen.verification import random_inputs

SYSTEMS = ("resgen", "resgen-heuristic", "torch", "compile", "liger")
#: What one timed call does: the forward; with --grad the backward alone (of a forward run once per
#: argument set, outside the timing) and the forward plus its backward, both through torch autograd.
MODES = ("forward", "backward", "fwd+bwd")
#: Rows up to this count also get a wall-clock microseconds-per-call (host overhead included).
LATENCY_ROWS = 64
#: The copy bandwidth a dry run pretends to have measured (no device; records say dry_run).
DRY_RUN_GBPS = 1000.0

RECORD_KEYS = ("system", "block", "dtype", "rows", "hidden", "time_us", "p10_us", "p90_us", "gbps", "copy_gbps",
               "ran", "gpu", "driver", "torch", "cupy", "date")


@dataclass(frozen=True)
class Case:
    name: str  # the SPEC or catalog name the records carry
    block: Block
    dtype: str


class CompiledFormula:
    """torch.compile of a formula for one shape, compiled fresh (Dynamo's caches reset first, so
    earlier shapes never push it over the recompile limit into silent eager), noting what ran."""

    def __init__(self, formula: Callable) -> None:
        import torch._dynamo

        torch._dynamo.reset()
        for limit in ("recompile_limit", "cache_size_limit"):
            if hasattr(torch._dynamo.config, limit):
                setattr(torch._dynamo.config, limit, max(64, getattr(torch._dynamo.config, limit)))
        self.fn = torch.compile(formula, dynamic=False)
        self.ran: str | None = None

    def __call__(self, **args: Any) -> object:
        if self.ran is not None:
            return self.fn(**args)
        from torch._dynamo.utils import counters

        before = counters["stats"]["unique_graphs"]
        out = self.fn(**args)
        compiled = counters["stats"]["unique_graphs"] > before
        self.ran = "torch.compile (inductor)" if compiled else "eager (Dynamo compiled no graph)"
        return out


def _systems(case: Case, hidden: int, against: list[str], backend: str,
             progress: Callable[[str], None]) -> tuple[dict[str, Callable[[], Callable]], dict[str, object], dict]:
    """For every system to time, a factory of a callable on one argument set (called once per shape),
    resgen's launch configs, and resgen's kernels."""
    import resgen as rg
    from resgen.codegen import default_config

    params = [p.name for p in case.block.params]
    kernels = {"resgen": rg.compile(case.block, hidden, backend=backend)}
    heuristic = default_config(case.block, hidden, kernels["resgen"].plan.arch)
    if kernels["resgen"].config != heuristic:  # the tuning database chose another: time the heuristic's too
        kernels["resgen-heuristic"] = rg.compile(case.block, hidden, backend=backend, config=heuristic)
    factories: dict[str, Callable[[], Callable]] = {
        name: (lambda k=k: (lambda a: k(**a))) for name, k in kernels.items()}
    configs = {name: k.config for name, k in kernels.items()}
    formula = TORCH_FORMULAS.get(case.block.name) or eager(case.block)
    if formula is None and any(s in against for s in ("torch", "compile")):
        progress(f"{case.name}: has dropout and no hand-written PyTorch formula; torch and compile skipped")
    elif case.block.name not in TORCH_FORMULAS:
        progress(f"{case.name}: torch and compile run the block op by op in float32 (no hand-written formula)")
    if formula is not None and "torch" in against:
        factories["torch"] = lambda: (lambda a: formula(**{p: a[p] for p in params}))
    if formula is not None and "compile" in against:
        def compiled() -> Callable:
            fn = CompiledFormula(formula)
            run = lambda a: fn(**{p: a[p] for p in params})  # noqa: E731
            run.peer = fn  # type: ignore[attr-defined]
            return run
        factories["compile"] = compiled
    if "liger" in against:
        fn, why = liger(case.block.name)
        if fn is None:
            progress(f"{case.name}: liger skipped: {why}")
        else:
            factories["liger"] = lambda: (lambda a: fn(**{p: a[p] for p in params}))
    return factories, configs, kernels


def _grad_systems(case: Case, hidden: int, against: list[str], backend: str, mode: str,
                  progress: Callable[[str], None]) -> tuple[dict[str, Callable[[], Callable]], dict[str, object], dict]:
    """`_systems` for the training modes: every system's forward run through torch autograd with
    the row inputs, weights and biases requiring grad, then `torch.autograd.grad` of every output
    with fixed random cotangents (seeded: the same for every system). resgen's kernels are the
    backward kernels its autograd runs (for the configs and the cost model's prediction)."""
    import resgen as rg
    from resgen.passes.autodiff import distinct_outputs, grad

    forward, _, kernels = _systems(case, hidden, [s for s in against if s != "compile"], backend, progress)
    forward.pop("resgen-heuristic", None)
    params = [p.name for p in case.block.params]
    diff = [p.name for p in case.block.params if p.op in ("input", "weight")]
    inplace = {o.inplace for o in case.block.outputs if o.inplace}
    backward = rg.compile(distinct_outputs(grad(case.block))[0], hidden, backend=backend)  # the one autograd runs
    factories: dict[str, Callable[[], Callable]] = {}
    for system, factory in forward.items():
        if system == "resgen":
            def call(a: dict, k=kernels["resgen"]) -> tuple:  # an input the kernel overwrites is handed a copy, as torch requires
                out = k(**{n: v.clone() if n in inplace else v for n, v in a.items()})
                return tuple(out[o.name] for o in case.block.outputs)
            factories[system] = lambda call=call: _autograd_step(call, diff, mode)
        else:
            factories[system] = lambda factory=factory: _autograd_step(factory(), diff, mode)
    if "compile" in against:
        formula = TORCH_FORMULAS.get(case.block.name) or eager(case.block)
        if formula is not None:
            def compiled() -> Callable:
                fn = CompiledFormula(formula)
                run = _autograd_step(lambda a: fn(**{p: a[p] for p in params}), diff, mode)
                run.peer = fn  # type: ignore[attr-defined]
                return run
            factories["compile"] = compiled
    if inplace:
        progress(f"{case.name}: resgen's in-place input {', '.join(sorted(inplace))} is copied per call (a leaf "
                 f"that requires grad cannot be overwritten)")
    return factories, {"resgen": backward.config}, {"resgen": backward}


def _autograd_step(forward: Callable[[dict], Any], diff: list[str], mode: str) -> Callable[[dict], object]:
    """One timed training step of `forward` on an argument set: forward and backward (fwd+bwd), or
    the backward alone of a graph built once per argument set (backward; retain_graph)."""
    graphs: dict[int, tuple] = {}

    def build(a: dict) -> tuple:
        leaves = {k: v.detach().requires_grad_(True) if k in diff else v for k, v in a.items()}
        outs = tuple(o for o in _as_tuple(forward(leaves)) if o.requires_grad)
        return leaves, outs

    cotangents: dict[int, tuple] = {}

    def run(a: dict) -> object:
        key = id(a)
        if mode == "backward":
            if key not in graphs:
                graphs[key] = build(a)
            leaves, outs = graphs[key]
        else:
            leaves, outs = build(a)
        if key not in cotangents:  # the same cotangents for every system (seeded by the output's place)
            cotangents[key] = tuple(torch.randn(o.shape, generator=torch.Generator(o.device).manual_seed(i),
                                                device=o.device).to(o.dtype) for i, o in enumerate(outs))
        return torch.autograd.grad(outs, [leaves[n] for n in diff], cotangents[key],
                                   retain_graph=mode == "backward", allow_unused=True)

    return run


def _as_tuple(out: Any) -> tuple:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _what_ran(system: str, fn: Callable, configs: dict[str, object]) -> str:
    if system in configs:
        return f"resgen {configs[system]}"
    if system == "compile":
        return fn.peer.ran or "not run"  # type: ignore[attr-defined]
    return {"torch": "torch eager", "liger": "liger-kernel"}.get(system, system)


def dry_timer(nbytes: int) -> Timer:
    """A stand-in for `time_cuda` in a dry run: never calls, pretends the copy bandwidth was reached."""
    def timer(run: Callable[[int], object]) -> Timing:
        us = nbytes / (DRY_RUN_GBPS * 1e9) * 1e6
        return Timing(us, us, us, 0, "dry-run", 1)
    return timer


def setting(dry_run: bool, device: torch.device | None = None) -> tuple[torch.device, str, dict[str, str], float]:
    """Where a benchmark runs: (device, backend, the environment its records carry, the copy bandwidth
    in GB/s), measured on the GPU, or the CPU and emu with DRY_RUN_GBPS for a dry run."""
    if dry_run:
        env = {"gpu": "none (dry run)", "driver": "none", "torch": torch.__version__, "cupy": "unused",
               "date": "dry run"}
        return torch.device("cpu"), "emu", env, DRY_RUN_GBPS
    device = device or torch.device("cuda", torch.cuda.current_device())
    return device, "cuda", environment(device), copy_bandwidth_gbps(device)


def failure(exc: Exception) -> str:
    """A failed system's line in a benchmark's log: the exception's type and first line."""
    return f"FAILED {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def run_bench(cases: list[Case], hiddens: list[int], rows_list: list[int], against: list[str],
              progress: Callable[[str], None] = print, device: torch.device | None = None,
              max_gb: float = 48.0, checkpoint: Callable[[list[dict[str, Any]], bool], None] | None = None,
              dry_run: bool = False, modes: tuple[str, ...] = ("forward",)) -> list[dict[str, Any]]:
    """Time every system on every (case, hidden, rows, mode); one record per (system, block, shape, mode).

    modes: "forward", and for training "backward" and "fwd+bwd" (MODES). Bytes are counted the same
    way for every system: the forward's inputs and outputs once; the backward's (`rg.grad`'s
    inputs: the forward inputs it needs, saved statistics, cotangents; its distinct gradients) once; fwd+bwd
    the training forward's (saved statistics included) plus the backward's. Training modes are
    timed as back-to-back calls between events (the autograd engine is not graph-captured).

    Shapes whose inputs and outputs together exceed `max_gb` are skipped, and said so.
    `checkpoint(records, block_done)` runs after every record and after each block, so a run
    killed halfway keeps what it measured. `dry_run` needs no GPU: kernels are generated and
    built for the emulator, bytes are counted and records written, but nothing is run or timed
    (times are what the copy bandwidth DRY_RUN_GBPS would give, and records say dry_run).
    """
    device, backend, env, copy_gbps = setting(dry_run, device)
    progress(f"{env['gpu']}: device-to-device copy {copy_gbps:.0f} GB/s (read + write)")
    records: list[dict[str, Any]] = []
    for case, hidden, mode in ((c, h, m) for c in cases for h in hiddens for m in modes):
        if mode == "forward":
            factories, configs, kernels = _systems(case, hidden, against, backend, progress)
        else:
            factories, configs, kernels = _grad_systems(case, hidden, against, backend, mode, progress)
        predictions = {name: partial(_predicted, k) for name, k in kernels.items()}
        for rows in rows_list:
            nbytes = mode_bytes(case.block, mode, rows, hidden)
            if nbytes > max_gb * 1e9:
                progress(f"{case.name} {mode} rows={rows} hidden={hidden}: skipped, {nbytes / 1e9:.0f} GB of inputs "
                         f"and outputs exceed --max-gb {max_gb:g}")
                continue
            count = 1 if dry_run else buffer_sets(nbytes, device)
            sets = LazySets(count, lambda i, b=case.block, h=hidden, r=rows: random_inputs(b, (r,), h, seed=i,
                                                                              device=device))
            timer = dry_timer(nbytes) if dry_run else (
                time_cuda if mode == "forward" else partial(time_cuda, use_graph=False))
            for system, factory in {**factories, **_few_rows_system(case, hidden, rows, mode, backend, kernels,
                                                                     configs, predictions)}.items():
                fn = factory()

                def run(i: int, fn: Callable = fn, sets: LazySets = sets) -> object:
                    return fn(sets[i % len(sets)])

                try:
                    timing = timer(run)
                    call_us = (timing.median_us if dry_run else wall_per_call_us(run)) \
                        if rows <= LATENCY_ROWS else None
                except Exception as exc:  # noqa: BLE001 - a failing peer must not lose the other results
                    progress(f"{system:>8} {case.name} {mode} rows={rows} hidden={hidden}: {failure(exc)}")
                    continue
                gbps = nbytes / (timing.median_us * 1e-6) / 1e9
                record = {"system": system, "block": case.name, "dtype": case.dtype, "rows": rows,
                          "hidden": hidden, "mode": mode, **timing.as_record(), "gbps": round(gbps, 1),
                          "copy_gbps": round(copy_gbps, 1), "frac_copy": round(gbps / copy_gbps, 4),
                          "bytes": nbytes, "ran": "not run (dry run)" if dry_run else _what_ran(system, fn, configs),
                          **env}
                if system in configs:
                    record["config"] = str(configs[system])
                    if mode != "fwd+bwd":  # the model predicts one kernel: the forward's, or the backward's
                        record["predicted_fraction"] = predictions[system](rows)
                if call_us is not None:
                    record["call_us"] = round(call_us, 2)
                if dry_run:
                    record["dry_run"] = True
                records.append(record)
                if checkpoint is not None:
                    checkpoint(records, False)
                progress(f"{system:>8} {case.name} {mode} rows={rows} hidden={hidden}: {timing.median_us:9.1f} us "
                         f"{record['gbps']:7.0f} GB/s ({100 * record['frac_copy']:.0f}% of copy) "
                         f"[{record['timing']} x{record['batch']}, {record['ran']}]")
        if checkpoint is not None and (hidden, mode) == (hiddens[-1], modes[-1]):
            checkpoint(records, True)
    return records


def _predicted(kernel: object, rows: int) -> float:
    """The cost model's fraction of copy bandwidth for `kernel` (its aligned entry) at `rows`."""
    return cost(kernel.plan, kernel.resources[kernel.plan.entries[0].name], rows).predicted_fraction


def _few_rows_system(case: Case, hidden: int, rows: int, mode: str, backend: str, kernels: dict, configs: dict,
                     predictions: dict) -> dict[str, Callable[[], Callable]]:
    """`resgen-rows`: the forward kernel `rg.compile(..., rows=rows)` builds when the heuristic plans
    for these few rows (clusters spreading each row, `default_config`), where that differs from
    the per-hidden kernel the other rows use. Its config and prediction join `configs` and
    `predictions` under that name (each rows value replaces the last)."""
    import resgen as rg

    if mode != "forward" or "resgen" not in kernels:
        return {}
    kernel = rg.compile(case.block, hidden, backend=backend, rows=rows)
    if kernel.config == kernels["resgen"].config:
        return {}
    configs["resgen-rows"] = kernel.config
    predictions["resgen-rows"] = partial(_predicted, kernel)
    return {"resgen-rows": lambda k=kernel: (lambda a: k(**a))}


def mode_bytes(block: Block, mode: str, rows: int, hidden: int) -> int:
    """Bytes one call of `mode` moves at best (see `run_bench`)."""
    from resgen.passes.autodiff import distinct_outputs, grad, with_saved_statistics

    if mode == "forward":
        return plan_bytes(block, rows, hidden)
    backward = plan_bytes(distinct_outputs(grad(block))[0], rows, hidden)  # a gradient two inputs share: once
    return backward if mode == "backward" else plan_bytes(with_saved_statistics(block), rows, hidden) + backward


def table(records: list[dict[str, Any]]) -> str:
    """A text table: one line per record, grouped by block and shape; `pred` is the cost model's
    fraction of copy bandwidth for resgen's kernels, beside the measured `% copy`."""
    lines = [f"{'block':<18} {'mode':<8} {'rows':>6} {'hidden':>7} {'system':>8} {'time us':>10} {'p10-p90 us':>15} "
             f"{'GB/s':>8} {'% copy':>7} {'pred':>5} {'us/call':>8}  timing"]
    for r in sorted(records, key=lambda r: (r["block"], MODES.index(_mode(r)), r["rows"], r["hidden"],
                                            SYSTEMS.index(r["system"]) if r["system"] in SYSTEMS else 99)):
        call = f"{r['call_us']:8.1f}" if "call_us" in r else f"{'':>8}"
        pred = f"{100 * r['predicted_fraction']:4.0f}%" if "predicted_fraction" in r else f"{'':>5}"
        spread = f"{r['p10_us']:.1f}-{r['p90_us']:.1f}"
        how = f"{r.get('timing', 'events')} x{r.get('batch', 1)}"
        lines.append(f"{r['block']:<18} {_mode(r):<8} {r['rows']:>6} {r['hidden']:>7} {r['system']:>8} {r['time_us']:>10.1f} "
                     f"{spread:>15} {r['gbps']:>8.0f} {100 * r['gbps'] / r['copy_gbps']:>6.1f}% {pred} {call}  {how}")
    return "\n".join(lines)


def _mode(record: dict[str, Any]) -> str:
    return record.get("mode", "forward")  # records written before --grad existed are forward ones


def plot(records: list[dict[str, Any]], path: Path) -> None:
    """GB/s against hidden size, one line per system, one panel per (block, rows), copy ceiling dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r["block"], MODES.index(_mode(r)), r["rows"]) for r in records})
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, (block, mode, rows) in zip(axes[0], panels, strict=True):
        mine = [r for r in records if (r["block"], MODES.index(_mode(r)), r["rows"]) == (block, mode, rows)]
        for system in sorted({r["system"] for r in mine}, key=lambda s: SYSTEMS.index(s) if s in SYSTEMS else 99):
            points = sorted((r["hidden"], r["gbps"]) for r in mine if r["system"] == system)
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=system)
        ax.axhline(max(r["copy_gbps"] for r in mine), color="gray", linestyle="--", label="device copy")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("hidden size")
        ax.set_ylabel("GB/s (bytes read + written once)")
        ax.set_title(f"{block} {MODES[mode]}, {mine[0]['dtype']}, rows={rows}\n{mine[0]['gpu']}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def load(path: Path) -> list[dict[str, Any]]:
    """Records stored by `resgen bench --json`; SpecError says what is wrong with any other file."""
    from resgen.spec import read_user_file

    text = read_user_file(path, "a resgen benchmark JSON file")
    try:
        records = json.loads(text)
    except ValueError as exc:
        raise SpecError(f"{path}: not a resgen benchmark JSON ({exc})") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise SpecError(f"{path}: not a resgen benchmark JSON (expected a list of records)")
    for i, r in enumerate(records):
        missing = [k for k in RECORD_KEYS if k not in r]
        if missing:
            raise SpecError(f"{path}: record {i} is not a resgen benchmark record (missing {', '.join(missing)})")
    return records
