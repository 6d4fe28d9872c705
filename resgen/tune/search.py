"""`resgen tune`: enumerate launch configs, prune statically (plan rules, NVRTC's resource report),
verify the survivors, time them, and keep the best in the tuning database."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from resgen.codegen import LaunchConfig, lower, render
from resgen.codegen.arch import DEFAULT_ARCH, get_arch
from resgen.codegen.cost import cost, occupancy
from resgen.codegen.lower import default_config, min_vec, persistent_variant, row_dtypes, widest_vec
from resgen.errors import PlanError
from resgen.ir.block import Block
from resgen.passes import pipeline
from resgen.runtime.compile import compile_for_device
from resgen.runtime.nvrtc import parse_resources

#: Candidates that cannot keep at least this fraction of an SM's thread slots busy are dropped.
MIN_OCCUPANCY = 0.25
#: Configs that leave one thread more than this many chunks of a row serialize too much to win.
MAX_CHUNKS = 32
#: Rows from this size up are also tried split across a thread-block cluster.
CLUSTER_MIN_HIDDEN = 16384
_POW2 = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


@dataclass(frozen=True)
class Candidate:
    config: LaunchConfig
    registers: int
    occupancy: float
    predicted: float = 0.0  # the cost model's fraction of copy bandwidth at the rows tuned for


def enumerate_configs(block: Block, hidden: int, arch: str = DEFAULT_ARCH) -> list[LaunchConfig]:
    """The search space: power-of-two threads per row, CTAs of 64 to 1024 threads, the two widest
    vectors of at most 16 bytes (dividing hidden, or peeled: `widest_vec`), every row cache; and for rows of at least
    CLUSTER_MIN_HIDDEN on GPUs with clusters, 2 to 8 CTAs of 256 to 1024 threads per row. Each
    register-cached config also comes persistent (`persistent_variant`) where that fits, and the
    heuristic's own choice is always in."""
    width = min(d.value_bytes for d in row_dtypes(block))
    dividing = [v for v in (8, 4, 2, 1) if v * width <= 16 and hidden % v == 0 and v >= min_vec(block)]
    vecs = list(dict.fromkeys([widest_vec(block, hidden), *dividing]))[:2]  # the widest two (peeled or not)
    configs = []
    for tpr in _POW2:
        for rows in _POW2:
            threads = tpr * rows
            if not 64 <= threads <= 1024 or (tpr > 32 and rows > 4):
                continue
            for vec in vecs:
                if -(-hidden // (tpr * vec)) > MAX_CHUNKS:
                    continue
                for cache in ("registers", "smem", "global"):
                    configs.append(LaunchConfig(tpr, rows, vec, cache))
    if get_arch(arch).clusters and hidden >= CLUSTER_MIN_HIDDEN:
        for cluster in (2, 4, 8):
            for tpr in (256, 512, 1024):
                for vec in vecs:
                    if -(-hidden // (tpr * vec * cluster)) <= MAX_CHUNKS:
                        configs += [LaunchConfig(tpr, 1, vec, cache, cluster) for cache in ("registers", "smem")]
    low, target = pipeline(block, hidden), get_arch(arch)
    persistent = []
    for config in configs:
        variant = persistent_variant(low, hidden, config, target) if config.cache == "registers" else config
        if variant != config:
            persistent.append(variant)
    chosen = default_config(low, hidden, arch)
    return [chosen] + [c for c in configs + persistent if c != chosen]


def prune(block: Block, hidden: int, arch: str, progress: Callable[[str], None] | None = None,
          budget_s: float | None = None, rows: int = 32768) -> tuple[list[Candidate], dict[str, int]]:
    """Candidates that pass the plan's rules, compile with zero spills, and reach MIN_OCCUPANCY,
    best first by the cost model's prediction at `rows` (then occupancy), so a GPU budget is spent
    on the likeliest winners.

    Returns the survivors and how many were dropped for each reason. No GPU time is spent.
    `progress` gets a line per survivor; without it a progress bar runs on stderr.
    """
    dropped = {"plan": 0, "spills": 0, "occupancy": 0, "budget": 0}
    survivors = []
    configs = enumerate_configs(block, hidden, arch)
    start = time.monotonic()
    bar = ProgressBar(len(configs), "pruning") if progress is None else None
    for i, config in enumerate(configs):
        if bar is not None:
            bar(str(config))
        if budget_s is not None and time.monotonic() - start > budget_s:
            dropped["budget"] += len(configs) - i
            break
        try:
            plan = lower(block, hidden, config, arch)
        except PlanError:
            dropped["plan"] += 1
            continue
        binary = compile_for_device(render(plan), plan.name, arch)
        resources = [parse_resources(binary.log, e.name) for e in plan.entries]
        if any(r.spills or r.stack_frame for r in resources):
            dropped["spills"] += 1
            continue
        occ = occupancy(config, resources[0].registers, plan.smem_bytes + resources[0].shared_static, arch)
        if occ < MIN_OCCUPANCY:
            dropped["occupancy"] += 1
            continue
        predicted = cost(plan, resources[0], rows).predicted_fraction
        survivors.append(Candidate(config, resources[0].registers, occ, predicted))
        if progress is not None:
            progress(f"[{i + 1}/{len(configs)}] {config}: {resources[0].registers} registers, occupancy {occ:.0%}, "
                     f"predicted {predicted:.0%} of copy")
    survivors.sort(key=lambda c: (-c.predicted, -c.occupancy))
    return survivors, dropped


class ProgressBar:
    """Progress on stderr, `bar(message)` per step: one redrawn line on a terminal; elsewhere (a log,
    a pipe) at most `lines` plain lines, evenly spaced, the last step always among them."""

    def __init__(self, total: int, label: str, stream: Any = None, lines: int = 20) -> None:
        import sys

        self.total, self.label, self.done = total, label, 0
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.every = max(1, -(-total // lines))

    def __call__(self, message: str) -> None:
        self.done += 1
        width = 30
        filled = width * min(self.done, self.total) // max(1, self.total)
        line = f"{self.label} [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} {message}"
        if self.tty:
            self.stream.write("\r" + line[:150].ljust(150))
            if self.done >= self.total:
                self.stream.write("\n")
        elif self.done % self.every == 0 or self.done >= self.total:
            self.stream.write(line + "\n")
        else:
            return
        self.stream.flush()


def measure(block: Block, hidden: int, rows: int, candidates: list[Candidate],
            progress: Callable[[str], None] | None = None, budget_s: float | None = None) -> list[dict[str, Any]]:
    """Verify each candidate once against the reference, then time it on the GPU."""
    import torch

    from resgen.runtime.kernel import compile
    from resgen.tune.timing import buffer_sets, copy_bandwidth_gbps, plan_bytes, time_cuda
    from resgen.verification import random_inputs, verify

    device = torch.device("cuda", torch.cuda.current_device())
    copy_gbps = copy_bandwidth_gbps(device)
    nbytes = plan_bytes(block, rows, hidden)
    sets = [random_inputs(block, (rows,), hidden, seed=i, device=device) for i in range(buffer_sets(nbytes, device))]
    results = []
    start = time.monotonic()
    progress = progress or ProgressBar(len(candidates), "timing")
    for i, cand in enumerate(candidates):
        if budget_s is not None and time.monotonic() - start > budget_s:
            progress(f"budget spent after {i} of {len(candidates)} candidates")
            break
        report = verify(block, hidden, min(rows, 257), backend="cuda", config=cand.config)
        if not report.ok:
            progress(f"[{i + 1}/{len(candidates)}] {cand.config}: FAILED verification, dropped\n{report.table()}")
            continue
        kernel = compile(block, hidden, backend="cuda", config=cand.config)
        timing = time_cuda(lambda j, k=kernel: k(**sets[j % len(sets)]))
        gbps = nbytes / (timing.median_us * 1e-6) / 1e9
        results.append({"config": str(cand.config), "time_us": round(timing.median_us, 3), "gbps": round(gbps, 1),
                        "frac_copy": round(gbps / copy_gbps, 4), "registers": cand.registers,
                        "occupancy": round(cand.occupancy, 3), "predicted_fraction": cand.predicted,
                        "copy_gbps": round(copy_gbps, 1)})
        progress(f"[{i + 1}/{len(candidates)}] {cand.config}: {timing.median_us:.1f} us, {gbps:.0f} GB/s "
                 f"({100 * gbps / copy_gbps:.0f}% of copy)")
    return sorted(results, key=lambda r: r["time_us"])


def results_table(results: list[dict[str, Any]], top: int = 10) -> str:
    lines = [f"{'config':<42} {'time us':>9} {'GB/s':>7} {'% copy':>7} {'regs':>5}"]
    for r in results[:top]:
        lines.append(f"{r['config']:<42} {r['time_us']:>9.1f} {r['gbps']:>7.0f} {100 * r['frac_copy']:>6.1f}% "
                     f"{r['registers']:>5}")
    return "\n".join(lines)
