"""The cost model: what a kernel's plan and NVRTC's resource report predict about its memory traffic
and how close it can come to the device-copy bandwidth, without running it.

Memory-bound kernels are judged by three things, each computed here from plain values:
  * traffic: `ideal_bytes` (every input read once, every output written once) against `hbm_bytes`
    (what the plan makes DRAM move: phases that re-read a row from global memory count again,
    unless the rows resident on the whole GPU at once fit in L2, where the re-read hits);
  * parallelism: `bytes_in_flight_per_sm` (Little's law: a memory-bound SM needs about
    IN_FLIGHT_TARGET bytes of loads outstanding to keep its share of HBM busy);
  * quantization: `waves` (a last, partial wave leaves SMs idle).
`predicted_fraction` (of the copy bandwidth) multiplies the three. The constants are a model, to be
corrected by every GPU run: `resgen bench` records the prediction beside the measurement.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from resgen.codegen.arch import get_arch
from resgen.codegen.plan import KernelPlan, LaunchConfig
from resgen.runtime.nvrtc import Resources

#: Bytes of loads in flight per SM that keep HBM busy (H100/H200: about 3-4 TB/s x 700 ns / 132 SMs,
#: rounded up); below it the prediction scales down linearly.
IN_FLIGHT_TARGET = 32 * 1024
#: Each reduction costs a barrier round trip per row while no loads are issued; what it takes off.
PHASE_PENALTY = 0.05
#: What a byte read again from L2 costs, in bytes of DRAM time: a kernel that loads its weights for
#: every row group (they hit L2, but share its bandwidth and the SM's load slots with the rows) pays
#: a tenth of their bytes again per row group. A guess until GPU runs measure it (bench --sweep
#: with persist=0 against the persistent default).
L2_REREAD_COST = 0.1


def occupancy(config: LaunchConfig, registers: int, smem_bytes: int, arch: str) -> float:
    """Fraction of the SM's thread slots the config can fill, from registers, smem and threads."""
    return ctas_per_sm(config, registers, smem_bytes, arch) * config.threads / get_arch(arch).max_threads_per_sm


def ctas_per_sm(config: LaunchConfig, registers: int, smem_bytes: int, arch: str) -> int:
    """CTAs one SM can hold at once, limited by threads, registers, shared memory and 32 CTAs."""
    target = get_arch(arch)
    by_threads = target.max_threads_per_sm // config.threads
    by_regs = target.regs_per_sm // max(1, registers * config.threads)
    by_smem = (target.max_dynamic_smem // smem_bytes) if smem_bytes else by_threads
    return min(by_threads, by_regs, by_smem, 32)


def loads_in_flight(plan: KernelPlan) -> int:
    """Bytes of row input one thread can have in flight in the first phase (its loads are issued
    before their first use across `plan.unroll` chunks)."""
    per_chunk = sum(t.bytes_per_value * plan.config.vec for t in plan.phases[0].loads)
    return int(per_chunk * plan.unroll)


def traffic(plan: KernelPlan, rows: int) -> tuple[int, int]:
    """(ideal_bytes, re-read bytes) of one call at `rows` rows, before L2 is considered."""
    h = plan.hidden
    inputs = round(sum(t.bytes_per_value for t in plan.row_inputs) * rows * h)
    outputs = round(sum(t.bytes_per_value for t in plan.row_outputs) * rows * h)
    weights = weight_bytes(plan)
    scalars = sum(_itemsize(p.dtype) for p in plan.params if p.role == "rowscalar_out") * rows
    seen: set[str] = set()
    reread = 0
    for phase in plan.phases:  # a phase reading an input an earlier phase read (cache=global) reads it again
        reread += round(sum(t.bytes_per_value for t in phase.loads if t.name in seen) * rows * h)
        seen |= {t.name for t in phase.loads}
    return inputs + outputs + weights + scalars, reread


def weight_bytes(plan: KernelPlan) -> int:
    """Bytes of every weight (column input), read once."""
    return sum(_itemsize(p.dtype) for p in plan.params if p.role == "col_in") * plan.hidden


def _itemsize(dtype: str) -> int:
    from resgen.ir.dtypes import DTYPES

    return DTYPES[dtype].itemsize


@dataclass(frozen=True)
class CostReport:
    """What `resgen inspect --json` prints (DESIGN.md, the cost model)."""

    kernel: str
    arch: str
    config: dict[str, Any]
    rows: int
    registers: int
    spills: int
    smem_bytes: int
    ideal_bytes: int
    hbm_bytes: int
    ctas_per_sm: int
    bytes_in_flight_per_sm: int
    waves: int
    reduction_phases: int
    predicted_fraction: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def cost(plan: KernelPlan, resources: Resources, rows: int) -> CostReport:
    """The model's report for `plan` (compiled with `resources`) at `rows` rows."""
    target = get_arch(plan.arch)
    smem = plan.smem_bytes + resources.shared_static
    per_sm = ctas_per_sm(plan.config, resources.registers, smem, plan.arch)
    ideal, reread = traffic(plan, rows)
    slots = max(1, per_sm * target.sms)
    resident_rows = min(rows, slots // plan.config.cluster * plan.config.rows_per_cta)
    reread_set = sum(t.bytes_per_value for t in plan.row_inputs) * plan.hidden * resident_rows
    hbm = ideal + (reread if reread and reread_set > target.l2_bytes else 0)
    grid = plan.grid(rows)
    groups = math.ceil(rows / plan.config.rows_per_cta)
    if grid <= slots:  # one wave: the CTAs spread over the SMs, ceil(grid / SMs) on the busiest
        resident = max(1, min(per_sm, math.ceil(grid / target.sms)))
        waves = 1
        busy = min(1.0, grid / (resident * target.sms))
        if plan.persistent and grid:  # each CTA loops over its row groups; the last round may be partial
            clusters = grid // plan.config.cluster
            busy *= groups / (math.ceil(groups / clusters) * clusters)
    else:  # several waves: every SM busy but in the last, partial one
        resident = per_sm
        waves = math.ceil(grid / slots)
        busy = 1 - (1 - grid / (waves * slots)) / waves
    in_flight = resident * plan.threads * loads_in_flight(plan)
    phases = sum(1 for p in plan.phases if p.reductions)
    fraction = (ideal / hbm if hbm else 0.0) * min(1.0, in_flight / IN_FLIGHT_TARGET) * busy
    fraction /= 1 + PHASE_PENALTY * phases
    weight_loads = grid // plan.config.cluster if plan.hoisted else groups  # once per CTA, or per row group
    l2_reread = weight_bytes(plan) * max(0, weight_loads - 1)
    fraction /= 1 + L2_REREAD_COST * l2_reread / hbm if hbm else 1
    return CostReport(
        kernel=plan.name, arch=plan.arch, config=plan.config.as_dict(), rows=rows,
        registers=resources.registers, spills=resources.spills + resources.stack_frame, smem_bytes=smem,
        ideal_bytes=ideal, hbm_bytes=hbm, ctas_per_sm=resident, bytes_in_flight_per_sm=in_flight, waves=waves,
        reduction_phases=phases, predicted_fraction=round(fraction, 4))
