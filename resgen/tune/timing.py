"""The timing harness shared by `resgen tune` and `resgen bench`.

CUDA events around each launch, warm-up first, the median of many repetitions, inputs rotated
across enough buffer sets to overflow L2 (so no repetition reads what the previous one left in
cache), and a device-to-device copy measured in the same process as the bandwidth ceiling.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from resgen.ir.block import Block
from resgen.ir.nodes import Kind


@dataclass(frozen=True)
class Timing:
    median_us: float
    p10_us: float
    p90_us: float
    reps: int


def plan_bytes(block: Block, rows: int, hidden: int) -> int:
    """Bytes a perfect kernel moves: every input read once, every output written once."""
    total = 0
    for p in block.params:
        if p.op == "input":
            total += rows * hidden * p.dtype.itemsize
        elif p.op == "weight":
            total += hidden * p.dtype.itemsize
    for o in block.outputs:
        total += (rows * hidden if o.node.kind is Kind.ROW else rows) * o.dtype.itemsize
    return total


def buffer_sets(bytes_per_set: int, device: torch.device, budget: int = 8 << 30) -> int:
    """How many input sets to rotate through so that together they are over twice the L2 size
    (one set alone when it is over four times the L2: a pass then evicts its own beginning)."""
    l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 64 << 20)
    if bytes_per_set >= 4 * l2:
        return 1
    wanted = math.ceil(2 * l2 / max(1, bytes_per_set)) + 1
    return max(2, min(wanted, max(2, budget // max(1, bytes_per_set))))


def time_cuda(run: Callable[[int], object], *, warmup: int = 10, reps: int = 50) -> Timing:
    """Median device time of `run(i)` (i selects the rotated buffer set), by CUDA events."""
    for i in range(warmup):
        run(i)
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for i in range(reps):
        starts[i].record()
        run(warmup + i)
        ends[i].record()
    torch.cuda.synchronize()
    times = sorted(s.elapsed_time(e) * 1000.0 for s, e in zip(starts, ends, strict=True))
    return Timing(statistics.median(times), times[len(times) // 10], times[(len(times) * 9) // 10], reps)


def wall_per_call_us(run: Callable[[int], object], *, calls: int = 200) -> float:
    """Wall-clock microseconds per call, host overhead included (one synchronize at the end)."""
    for i in range(10):
        run(i)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(calls):
        run(i)
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / calls * 1e6


def copy_bandwidth_gbps(device: torch.device, nbytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth in GB/s, counting bytes read plus bytes written."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).random_(0, 255)
    dst = torch.empty_like(src)
    timing = time_cuda(lambda _: dst.copy_(src), warmup=5, reps=30)
    return 2 * nbytes / (timing.median_us * 1e-6) / 1e9


def environment(device: torch.device) -> dict[str, str]:
    """GPU name, driver and library versions for benchmark records."""
    import datetime

    try:
        import cupy

        cupy_version = cupy.__version__
        driver = cupy.cuda.runtime.driverGetVersion()
        driver_text = f"CUDA driver API {driver // 1000}.{(driver % 1000) // 10}"
    except Exception:  # noqa: BLE001 - versions are informative only
        cupy_version, driver_text = "unavailable", "unknown"
    try:
        import subprocess

        smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20).stdout.strip().splitlines()
        if smi:
            driver_text = f"{smi[0]} ({driver_text})"
    except Exception:  # noqa: BLE001
        pass
    return {
        "gpu": torch.cuda.get_device_name(device),
        "driver": driver_text,
        "torch": torch.__version__,
        "cupy": cupy_version,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
