"""`resgen bench`: resgen against PyTorch eager, torch.compile and Liger, as GB/s and as a fraction
of the device-to-device copy bandwidth measured in the same run."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from resgen.ir.block import Block
from resgen.tune.baselines import TORCH_FORMULAS, eager, liger
from resgen.tune.timing import buffer_sets, copy_bandwidth_gbps, environment, plan_bytes, time_cuda, wall_per_call_us
from resgen.verification import random_inputs

SYSTEMS = ("resgen", "resgen-heuristic", "torch", "compile", "liger")
#: Rows up to this count also get a wall-clock microseconds-per-call (host overhead included).
LATENCY_ROWS = 64

RECORD_KEYS = ("system", "block", "dtype", "rows", "hidden", "time_us", "gbps", "copy_gbps", "gpu", "driver",
               "torch", "cupy", "date")


@dataclass(frozen=True)
class Case:
    name: str  # the SPEC or catalog name the records carry
    block: Block
    dtype: str


def _systems(case: Case, hidden: int, against: list[str],
             progress: Callable[[str], None]) -> tuple[dict[str, Callable], dict[str, object]]:
    """Callables on one argument set for every system to time, and resgen's launch configs."""
    import resgen as rg
    from resgen.codegen import default_config

    params = [p.name for p in case.block.params]
    kernels = {"resgen": rg.compile(case.block, hidden, backend="cuda")}
    heuristic = default_config(case.block, hidden, kernels["resgen"].plan.arch)
    if kernels["resgen"].config != heuristic:  # the tuning database chose another: time the heuristic's too
        kernels["resgen-heuristic"] = rg.compile(case.block, hidden, backend="cuda", config=heuristic)
    runners: dict[str, Callable] = {name: (lambda a, k=k: k(**a)) for name, k in kernels.items()}
    configs = {name: k.config for name, k in kernels.items()}
    formula = TORCH_FORMULAS.get(case.block.name) or eager(case.block)
    if formula is None and any(s in against for s in ("torch", "compile")):
        progress(f"{case.name}: has dropout and no hand-written PyTorch formula; torch and compile skipped")
    elif case.block.name not in TORCH_FORMULAS:
        progress(f"{case.name}: torch and compile run the block op by op in float32 (no hand-written formula)")
    if formula is not None and "torch" in against:
        runners["torch"] = lambda a: formula(**{p: a[p] for p in params})
    if formula is not None and "compile" in against:
        compiled = torch.compile(formula, dynamic=False)
        runners["compile"] = lambda a: compiled(**{p: a[p] for p in params})
    if "liger" in against:
        fn, why = liger(case.block.name)
        if fn is None:
            progress(f"{case.name}: liger skipped: {why}")
        else:
            runners["liger"] = lambda a: fn(**{p: a[p] for p in params})
    return runners, configs


def run_bench(cases: list[Case], hiddens: list[int], rows_list: list[int], against: list[str],
              progress: Callable[[str], None] = print, device: torch.device | None = None,
              max_gb: float = 48.0) -> list[dict[str, Any]]:
    """Time every system on every (case, hidden, rows); one record per (system, block, shape).

    Shapes whose inputs and outputs together exceed `max_gb` are skipped, and said so.
    """
    device = device or torch.device("cuda", torch.cuda.current_device())
    env = environment(device)
    copy_gbps = copy_bandwidth_gbps(device)
    progress(f"{env['gpu']}: device-to-device copy {copy_gbps:.0f} GB/s (read + write)")
    records = []
    for case in cases:
        for hidden in hiddens:
            runners, configs = _systems(case, hidden, against, progress)
            for rows in rows_list:
                nbytes = plan_bytes(case.block, rows, hidden)
                if nbytes > max_gb * 1e9:
                    progress(f"{case.name} rows={rows} hidden={hidden}: skipped, {nbytes / 1e9:.0f} GB of inputs and "
                             f"outputs exceed --max-gb {max_gb:g}")
                    continue
                sets = [random_inputs(case.block, (rows,), hidden, seed=i, device=device)
                        for i in range(buffer_sets(nbytes, device))]
                for system, fn in runners.items():
                    def run(i: int, fn: Callable = fn, sets: list = sets) -> object:
                        return fn(sets[i % len(sets)])

                    try:
                        timing = time_cuda(run)
                    except Exception as exc:  # noqa: BLE001 - a failing peer must not lose the other results
                        progress(f"{system:>8} {case.name} rows={rows} hidden={hidden}: FAILED "
                                 f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
                        continue
                    record = {"system": system, "block": case.name, "dtype": case.dtype, "rows": rows,
                              "hidden": hidden, "time_us": round(timing.median_us, 3),
                              "gbps": round(nbytes / (timing.median_us * 1e-6) / 1e9, 1),
                              "copy_gbps": round(copy_gbps, 1), **env}
                    record["frac_copy"] = round(record["gbps"] / copy_gbps, 4)
                    if system in configs:
                        record["config"] = str(configs[system])
                    if rows <= LATENCY_ROWS:
                        record["call_us"] = round(wall_per_call_us(run), 2)
                    records.append(record)
                    progress(f"{system:>8} {case.name} rows={rows} hidden={hidden}: {timing.median_us:9.1f} us "
                             f"{record['gbps']:7.0f} GB/s ({100 * record['frac_copy']:.0f}% of copy)")
    return records


def table(records: list[dict[str, Any]]) -> str:
    """A text table: one line per record, grouped by block and shape."""
    lines = [f"{'block':<18} {'rows':>6} {'hidden':>7} {'system':>8} {'time us':>10} {'GB/s':>8} {'% copy':>7} "
             f"{'us/call':>8}"]
    for r in sorted(records, key=lambda r: (r["block"], r["rows"], r["hidden"], SYSTEMS.index(r["system"])
                                            if r["system"] in SYSTEMS else 99)):
        call = f"{r['call_us']:8.1f}" if "call_us" in r else f"{'':>8}"
        lines.append(f"{r['block']:<18} {r['rows']:>6} {r['hidden']:>7} {r['system']:>8} {r['time_us']:>10.1f} "
                     f"{r['gbps']:>8.0f} {100 * r['gbps'] / r['copy_gbps']:>6.1f}% {call}")
    return "\n".join(lines)


def plot(records: list[dict[str, Any]], path: Path) -> None:
    """GB/s against hidden size, one line per system, one panel per (block, rows), copy ceiling dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r["block"], r["rows"]) for r in records})
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, (block, rows) in zip(axes[0], panels, strict=True):
        mine = [r for r in records if (r["block"], r["rows"]) == (block, rows)]
        for system in sorted({r["system"] for r in mine}, key=lambda s: SYSTEMS.index(s) if s in SYSTEMS else 99):
            points = sorted((r["hidden"], r["gbps"]) for r in mine if r["system"] == system)
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=system)
        ax.axhline(max(r["copy_gbps"] for r in mine), color="gray", linestyle="--", label="device copy")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("hidden size")
        ax.set_ylabel("GB/s (bytes read + written once)")
        ax.set_title(f"{block}, {mine[0]['dtype']}, rows={rows}\n{mine[0]['gpu']}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def load(path: Path) -> list[dict[str, Any]]:
    records = json.loads(Path(path).read_text())
    missing = [k for k in RECORD_KEYS if records and k not in records[0]]
    if not isinstance(records, list) or missing:
        raise ValueError(f"{path}: not a resgen benchmark JSON (missing {missing})")
    return records
