"""The timing harness shared by `resgen tune` and `resgen bench`.

What it measures is device time per call: warm-up for a fixed amount of work first (the SM clock
idles low after a compile), then CUDA events around each sample. Large calls are timed one per
sample with their inputs rotated across enough buffer sets to overflow L2. Small calls, whose
device time is below what one Python call costs on the host, are timed as a CUDA graph replaying
a batch of back-to-back calls (or, where capture fails, a batch of launches), so the host never
sets the pace. A device-to-device copy measured in the same process is the bandwidth ceiling.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from resgen.ir.block import Block
from resgen.ir.dtypes import DType
from resgen.ir.nodes import Node
from resgen.signature import value_shape

#: Timed samples per measurement; also the most rotated input sets worth building.
REPS = 50
#: Seconds of work before timing: enough to bring the SM clock up from idle.
WARMUP_S = 0.1
#: A sample shorter than this (microseconds) is dominated by launch cost: batch calls in a graph.
BATCH_TARGET_US = 200.0
MAX_BATCH = 256


@dataclass(frozen=True)
class Timing:
    """Device microseconds per call: median, 10th and 90th percentile over `reps` samples."""

    median_us: float
    p10_us: float
    p90_us: float
    reps: int
    method: str = "events"  # events: one call per sample; graph: a CUDA graph of `batch` calls; batch: launches
    batch: int = 1

    def as_record(self) -> dict[str, Any]:
        return {"time_us": round(self.median_us, 3), "p10_us": round(self.p10_us, 3),
                "p90_us": round(self.p90_us, 3), "timing": self.method, "batch": self.batch}


Timer = Callable[[Callable[[int], object]], Timing]


def plan_bytes(block: Block, rows: int, hidden: int) -> int:
    """Bytes a perfect kernel moves: every input, weight and row scalar read once, every output
    written once (row tensors, row scalars and column vectors each by their own shape)."""
    def size(node: Node, dtype: DType) -> int:
        return math.prod(value_shape(node, dtype, (rows,), hidden)) * dtype.itemsize

    return (sum(size(p, p.dtype) for p in block.params if p.op != "scalar")
            + sum(size(o.node, o.dtype) for o in block.outputs))


def buffer_sets(bytes_per_set: int, device: torch.device, budget: int = 8 << 30, cap: int = REPS) -> int:
    """How many input sets to rotate through so that together they are over twice the L2 size
    (one set alone when it is over four times the L2: a pass then evicts its own beginning), and
    never more than `cap`, the calls one measurement times."""
    l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 64 << 20)
    if bytes_per_set >= 4 * l2:
        return 1
    wanted = math.ceil(2 * l2 / max(1, bytes_per_set)) + 1
    return max(2, min(wanted, cap, max(2, budget // max(1, bytes_per_set))))


class LazySets(Sequence):
    """`count` argument sets, each built on first use (a dry run that never calls builds none)."""

    def __init__(self, count: int, build: Callable[[int], dict[str, Any]]) -> None:
        self._build, self._sets = build, [None] * count

    def __len__(self) -> int:
        return len(self._sets)

    def __getitem__(self, i: int) -> dict[str, Any]:  # type: ignore[override]
        if self._sets[i] is None:
            self._sets[i] = self._build(i)
        return self._sets[i]


def warm_up(run: Callable[[int], object], seconds: float = WARMUP_S) -> int:
    """Call `run` until `seconds` of it have completed on the device (at least 3 calls); returns calls."""
    calls, start = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - start < seconds:
        for _ in range(8):
            run(calls)
            calls += 1
        torch.cuda.synchronize()
    return calls


def _percentiles(times: list[float], reps: int, method: str, batch: int) -> Timing:
    times = sorted(times)
    return Timing(statistics.median(times), times[len(times) // 10], times[(len(times) * 9) // 10], reps,
                  method, batch)


def _event_samples(sample: Callable[[int], None], reps: int) -> list[float]:
    """Microseconds of each of `reps` calls of `sample(i)`, by CUDA events on the current stream."""
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for i in range(reps):
        starts[i].record()
        sample(i)
        ends[i].record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) * 1000.0 for s, e in zip(starts, ends, strict=True)]


def time_cuda(run: Callable[[int], object], *, reps: int = REPS, warmup_s: float = WARMUP_S,
              use_graph: bool = True) -> Timing:
    """Device time per call of `run(i)` (i selects the rotated buffer set), warm-up first.

    Calls that take longer than BATCH_TARGET_US are timed one per sample. Shorter ones are timed
    as a batch that long: a captured CUDA graph of back-to-back calls when capture works (the
    host then cannot set the pace), else back-to-back launches between two events.
    """
    warm_up(run, warmup_s)
    estimate = statistics.median(_event_samples(lambda i: run(i), 5))
    if estimate >= BATCH_TARGET_US:
        return _percentiles(_event_samples(lambda i: run(i), reps), reps, "events", 1)
    batch = min(MAX_BATCH, math.ceil(BATCH_TARGET_US / max(estimate, 0.5)))
    if use_graph:
        graph = _capture(run, batch)
        if graph is not None:
            graph.replay()
            torch.cuda.synchronize()
            samples = _event_samples(lambda _: graph.replay(), reps)
            return _percentiles([t / batch for t in samples], reps, "graph", batch)

    def launches(i: int) -> None:
        for j in range(batch):
            run(i * batch + j)

    return _percentiles([t / batch for t in _event_samples(launches, reps)], reps, "batch", batch)


def _capture(run: Callable[[int], object], batch: int) -> torch.cuda.CUDAGraph | None:
    """A CUDA graph of `batch` back-to-back calls, or None when the calls cannot be captured."""
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    try:
        with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
            for j in range(batch):
                run(j)
    except Exception:  # noqa: BLE001 - anything that cannot be captured is timed by launches instead
        torch.cuda.synchronize()
        return None
    torch.cuda.current_stream().wait_stream(stream)
    return graph


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
    timing = time_cuda(lambda _: dst.copy_(src), reps=30)
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
