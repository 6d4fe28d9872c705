"""The residual and norm work of a Llama decoder stack: resgen's fused layers against torch.compile of
Hugging Face's code, and what one call costs on the host through each path.

Each sublayer of a decoder layer (attention, then the MLP) ends with `residual = residual + out`, and the
next one starts with RMSNorm(residual): two adds and two norms per layer. The sublayers themselves are
left out (their outputs are fixed random tensors), so what is timed is exactly the work resgen fuses:

- `compile`: LlamaRMSNorm's forward and the adds as Hugging Face writes them, torch.compile'd (inductor
  fuses each add into its norm);
- `resgen`: the same sequence as `resgen.hf.patch` leaves a layer, FusedAddRMSNorm(rounding="hf") modules
  called eagerly;
- `resgen-compiled`: that resgen sequence torch.compile'd (the op inside inductor's graph).

The host cost per call at one row: the raw kernel call, the module, and `torch.ops.resgen.run` (what a
compiled graph calls), as wall-clock microseconds with the launch included.

    python -m resgen.tune.stack --hidden 4096 --rows 8192 --layers 4 --json stack.json [--dry-run]

A dry run needs no GPU: the stacks run once on the emu backend at a few rows and are compared, nothing
is timed.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from resgen.nn import FusedAddRMSNorm
from resgen.runtime import ops
from resgen.tune.bench import _predicted, failure, setting
from resgen.tune.timing import plan_bytes, time_cuda, wall_per_call_us

#: The issue's bar: resgen's stack at least this many times faster than torch.compile's.
TARGET_SPEEDUP = 1.3
EPS = 1e-6
DRY_RUN_ROWS = 3


def hf_rms_norm(hidden_states: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """LlamaRMSNorm.forward, as transformers writes it."""
    input_dtype = hidden_states.dtype
    hidden_states = hidden_states.to(torch.float32)
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    hidden_states = hidden_states * torch.rsqrt(variance + eps)
    return weight * hidden_states.to(input_dtype)


def hf_stack(residual: torch.Tensor, outs: Sequence[torch.Tensor], weights: Sequence[torch.Tensor],
             eps: float = EPS) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Every sublayer's `residual = residual + out` and the next norm, as an unpatched model runs them."""
    normed = []
    for out, weight in zip(outs, weights, strict=True):
        residual = residual + out
        normed.append(hf_rms_norm(residual, weight, eps))
    return normed, residual


def resgen_stack(residual: torch.Tensor, outs: Sequence[torch.Tensor],
                 norms: Sequence[FusedAddRMSNorm]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The same sequence as a patched model runs it: one fused add and norm per sublayer."""
    normed = []
    for out, norm in zip(outs, norms, strict=True):
        y, residual = norm(out, residual)
        normed.append(y)
    return normed, residual


def host_costs(hidden: int, device: torch.device) -> dict[str, float]:
    """Wall-clock microseconds per call at one row (launch included): the raw kernel, the module, the op."""
    norm = FusedAddRMSNorm(hidden, EPS, rounding="hf", dtype=torch.bfloat16, device=device)
    x, residual = (torch.randn(1, hidden, dtype=torch.bfloat16, device=device) for _ in range(2))
    weight = norm.weight.detach()
    kernel = norm.kernel_for(device)
    tensors = [x, residual, weight]
    with torch.no_grad():
        return {
            "raw_us": wall_per_call_us(lambda _: kernel(x=x, residual=residual, weight=weight)),
            "module_us": wall_per_call_us(lambda _: norm(x, residual)),
            "op_us": wall_per_call_us(lambda _: ops.run(kernel.op.text, kernel.op_kernel, tensors, [], 0, 0, False)),
        }


def run_stack_bench(hidden: int, rows: int, layers: int, dry_run: bool = False,
                    progress: Callable[[str], None] = print,
                    checkpoint: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Time the three stacks (module docstring); a record per system, the speedup over torch.compile, the
    host costs, and how far resgen's outputs are from the unpatched code's. A system that fails is
    reported and left out; `checkpoint(result)` runs after every record, so a killed run keeps them."""
    device, _backend, env, copy_gbps = setting(dry_run)
    rows = DRY_RUN_ROWS if dry_run else rows
    norms = [FusedAddRMSNorm(hidden, EPS, rounding="hf", dtype=torch.bfloat16, device=device)
             for _ in range(2 * layers)]
    generator = torch.Generator(device=device).manual_seed(0)
    for norm in norms:
        with torch.no_grad():
            norm.weight.normal_(1.0, 0.1, generator=generator)
    weights = [norm.weight.detach() for norm in norms]
    residual = torch.randn(rows, hidden, dtype=torch.bfloat16, device=device, generator=generator)
    outs = [torch.randn(rows, hidden, dtype=torch.bfloat16, device=device, generator=generator) for _ in norms]

    backend = "aot_eager" if dry_run else "inductor"  # a dry run does not wait for inductor's C++ builds
    compiled_hf = torch.compile(hf_stack, dynamic=False, backend=backend)
    compiled_resgen = torch.compile(resgen_stack, dynamic=False, fullgraph=True, backend=backend)
    systems: dict[str, Callable[[], tuple[list[torch.Tensor], torch.Tensor]]] = {
        "compile": lambda: compiled_hf(residual, outs, weights),
        "resgen": lambda: resgen_stack(residual, outs, norms),
        "resgen-compiled": lambda: compiled_resgen(residual, outs, norms),
    }
    kernel = norms[0].kernel_for(device)
    nbytes = len(norms) * plan_bytes(kernel.block, rows, hidden)
    predicted = _predicted(kernel, rows)  # both resgen stacks run this kernel
    records: list[dict[str, Any]] = []
    result: dict[str, Any] = {**env, "copy_gbps": round(copy_gbps, 1), "target_speedup": TARGET_SPEEDUP,
                              "records": records}
    with torch.no_grad():
        normed, last = hf_stack(residual, outs, weights)
        expected = [*normed, last]
        for system, run in systems.items():
            try:
                got, got_residual = run()
                timing = None if dry_run else time_cuda(lambda _, run=run: run())
            except Exception as exc:  # noqa: BLE001 - a failing system must not lose the others' records
                progress(f"{system:>16}: {failure(exc)}")
                continue
            flips = sum(int((g != e).sum()) for g, e in zip([*got, got_residual], expected, strict=True))
            record: dict[str, Any] = {"system": system, "rows": rows, "hidden": hidden, "layers": layers,
                                      "norms": len(norms), "bytes": nbytes, "elements_not_bitwise": flips,
                                      "elements": (len(norms) + 1) * rows * hidden}
            if timing is not None:
                gbps = nbytes / (timing.median_us * 1e-6) / 1e9
                record.update(timing.as_record(), gbps=round(gbps, 1), copy_gbps=round(copy_gbps, 1),
                              frac_copy=round(gbps / copy_gbps, 4))
            if system.startswith("resgen"):
                record["predicted_fraction"] = predicted
            records.append(record)
            if checkpoint is not None:
                checkpoint(result)
            progress(f"{system:>16}: " + (f"{record['time_us']:9.1f} us, {100 * record['frac_copy']:.0f}% of copy, "
                                          if timing is not None else "") + f"{flips} elements not bitwise HF's")
    if not dry_run:
        by = {r["system"]: r["time_us"] for r in records}
        result["speedup"] = {s: round(by["compile"] / by[s], 3) for s in ("resgen", "resgen-compiled")
                             if s in by and "compile" in by}
        result["host"] = {k: round(v, 2) for k, v in host_costs(hidden, device).items()}
        progress(f"speedup over torch.compile: {result['speedup']} (target {TARGET_SPEEDUP}); host per call at one "
                 f"row: {result['host']}")
    if checkpoint is not None:
        checkpoint(result)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--rows", type=int, default=8192)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--dry-run", action="store_true", help="no GPU: run the stacks once on emu, time nothing")
    args = parser.parse_args(argv)

    def write(result: dict[str, Any]) -> None:
        args.json.write_text(json.dumps(result, indent=1) + "\n")

    result = run_stack_bench(args.hidden, args.rows, args.layers, args.dry_run, checkpoint=write)
    if len(result["records"]) < 3:
        raise SystemExit("a stack failed (see above)")


if __name__ == "__main__":
    main()
