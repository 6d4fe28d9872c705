"""The emulator's sanitizer: each hazard class a GPU would show (and the emulator's friendly schedule
hides) is reported by `sanitize=True` at its emitted-source line, and plain verification misses it."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

import resgen as rg
from resgen.codegen import LaunchConfig, plan_and_source
from resgen.runtime.emu import EmuBackend
from resgen.runtime.kernel import Kernel
from resgen.verification import random_inputs, verify_kernel
from tests.conftest import fit


def variant(block: rg.Block, hidden: int, config: str, edit: Callable[[str], str],
            sanitize: bool) -> Kernel:
    """A kernel built from the emitted source with `edit` applied (a deliberately broken template)."""
    plan, source = plan_and_source(block, hidden, config)
    edited = edit(source)
    assert edited != source, "the edit must change the source"
    return Kernel(block, hidden, plan, edited, EmuBackend(plan, edited, sanitize=sanitize))


def replace(old: str, new: str, count: int = -1) -> Callable[[str], str]:
    return lambda source: source.replace(old, new, count)


SHARED_SCRATCH = replace("scratch + (1 * ROWS_PER_CTA", "scratch + (0 * ROWS_PER_CTA")
NO_START_WAIT = replace("    rg_cluster_wait();  // every CTA of the cluster has started: its shared memory may be written\n", "")
ONE_SET_OF_PARTIALS = replace("(int)(turn & 1) *", "0 *")
PHASE_EXCHANGE = "    rg_cluster_sync();  // every CTA's partials of this phase have arrived: one exchange for all of them\n"
RELAXED_PUSH = replace(PHASE_EXCHANGE, "    rg_cluster_arrive_relaxed();\n    rg_cluster_wait();\n")

EXTRA_WAIT = replace(PHASE_EXCHANGE, PHASE_EXCHANGE + "    rg_cluster_wait();\n")
KERNEL_END = "\n}\n\nextern \"C\" __global__"
ONE_CTA_SYNCS_AT_THE_END = replace(KERNEL_END, "\n    if (crank == 0) rg_cluster_sync();" + KERNEL_END, 1)
# a store into a peer's (no longer read) reduction scratch after the last cluster barrier: it may have exited
STRAY_PUSH = replace(KERNEL_END, "\n    rg_cluster_store(scratch, (crank + 1) % CLUSTER, 0.0f);" + KERNEL_END, 1)


EXIT_PAST_LAST_ROW = replace("    const long long src_row", "    if (!in_row) return;\n    const long long src_row")
NO_TRAILING_BARRIER = replace("    __syncthreads();  // the next row group reuses the reduction scratch\n", "")
UNPREDICATED_TAIL_LOAD = replace(
    "            const bool inside = (unsigned)(col0 + j) < (unsigned)HIDDEN;\n"
    "            if (inside) RG_CHECK(row + col0 + j, sizeof(T), false, line);\n"
    "            out[j] = inside ? rg_io<T>::to_float(row[col0 + j]) : 0.0f;",
    "            RG_CHECK(row + col0 + j, sizeof(T), false, line);\n"
    "            out[j] = rg_io<T>::to_float(row[col0 + j]);")

#: (block, hidden, config, rows) of the two small clusters the cluster hazards break
GPT2_CLUSTER_4 = (rg.catalog.gpt2(rg.f32), 2048, "tpr=64,rows=1,vec=4,cache=smem,cluster=4", 2)
LLAMA_CLUSTER_2 = (rg.catalog.llama(rg.f32), 2048, "tpr=64,rows=1,vec=4,cache=registers,cluster=2", 2)

#: (hazard kind, block, hidden, config, rows, the broken edit)
HAZARDS = [
    ("race (write after read)", rg.catalog.gemma2_sandwich(rg.f32), 2048, "tpr=128,rows=1,vec=4", 3, SHARED_SCRATCH),
    ("write to a CTA not known to have started", *GPT2_CLUSTER_4, NO_START_WAIT),
    ("write to an exited CTA's shared memory", *GPT2_CLUSTER_4, STRAY_PUSH),
    ("cluster barrier arrival without a wait", *GPT2_CLUSTER_4, NO_START_WAIT),
    ("cluster barrier wait without an arrival", *LLAMA_CLUSTER_2, EXTRA_WAIT),
    ("barrier reached by part of a cluster", *LLAMA_CLUSTER_2, ONE_CTA_SYNCS_AT_THE_END),
    ("relaxed cluster arrival after shared-memory accesses", *LLAMA_CLUSTER_2, RELAXED_PUSH),
    # a persistent cluster's next turn pushes into the slots a peer may still be reading
    ("race (write after read)", rg.catalog.llama(rg.f32), 512, "tpr=64,rows=1,vec=4,cache=registers,cluster=2,persist=1",
     140, ONE_SET_OF_PARTIALS),
    ("shuffle mask names an exited lane", rg.catalog.llama(rg.f32), 64, "tpr=8,rows=16,vec=4", 5, EXIT_PAST_LAST_ROW),
    ("barrier reached by part of a CTA", rg.catalog.llama(rg.f32), 256, "tpr=64,rows=2,vec=4", 3, EXIT_PAST_LAST_ROW),
    ("out-of-bounds global access", rg.catalog.llama(rg.f32), 1000, "tpr=32,rows=4,vec=4", 5, UNPREDICATED_TAIL_LOAD),
    # a persistent CTA's next row group reduces into the scratch its warps may still be reading
    ("race (write after read)", rg.catalog.llama(rg.f32), 512, "tpr=128,rows=1,vec=4,persist=1", 134,
     NO_TRAILING_BARRIER),
]


@pytest.mark.parametrize("kind, block, hidden, config, rows, edit", HAZARDS, ids=[h[0] for h in HAZARDS])
def test_each_hazard_is_reported_where_plain_verify_passes(kind, block, hidden, config, rows, edit):
    plain = verify_kernel(variant(block, hidden, config, edit, sanitize=False), rows, seed=1)
    assert plain.ok, plain.table()
    report = verify_kernel(variant(block, hidden, config, edit, sanitize=True), rows, seed=1)
    assert not report.ok
    found = [h for h in report.hazards if h.startswith(kind)]
    assert found, report.table()
    assert " at line " in found[0] and ("thread" in found[0] or "threads" in found[0])


def test_hazards_point_at_the_emitted_source_line():
    kind, block, hidden, config, rows, edit = HAZARDS[0]
    kernel = variant(block, hidden, config, edit, sanitize=True)
    report = verify_kernel(kernel, rows)
    hazard = next(h for h in report.hazards if h.startswith(kind))
    line = int(hazard.split(" at line ")[1].split(":")[0])
    assert "scratch[lane / 32] = v;" in kernel.source.splitlines()[line - 1]
    assert "scratch[lane / 32] = v;" in hazard


def test_a_misaligned_wide_access_is_reported():
    block = rg.catalog.llama(rg.bf16)
    kernel = variant(block, 256, "tpr=32,rows=4,vec=8", replace("_body<false, false>(", "_body<true, false>("), sanitize=True)
    big = random_inputs(block, (4,), 264, seed=2)
    args = {"x": big["x"][:, 4:260], "residual": big["residual"][:, :256], "weight": big["weight"][:256]}
    assert kernel.prepare(**args).entry.name.endswith("_narrow")  # which now makes 16-byte accesses
    kernel(**args)
    hazards = kernel._backend.hazards()
    assert any(h.kind == "misaligned access" and "16 bytes vector access" in h.detail for h in hazards), hazards


def test_schedules_expose_a_race_the_instrumentation_cannot_see():
    def blind(source: str) -> str:  # the broken kernel, its scratch accesses hidden from the instrumentation
        source = SHARED_SCRATCH(source).replace("RG_CHECK(scratch + lane / 32, 4, true, __LINE__); ", "")
        return source.replace("RG_CHECK(scratch, 4 * WARPS, false, __LINE__); ", "")

    kernel = variant(rg.catalog.gemma2_sandwich(rg.f32), 2048, "tpr=128,rows=1,vec=4", blind, sanitize=True)
    report = verify_kernel(kernel, 3, seed=1)
    assert not any(h.startswith("race") for h in report.hazards), report.table()
    assert any(h.startswith("schedule-dependent result") for h in report.hazards), report.table()


SIZES = [1, 4097]  # the degenerate row and an odd size with a predicated tail
FAMILY = {"registers": "cache=registers", "smem": "cache=smem", "global": "cache=global",
          "warp": "tpr=32,rows=4,cache=smem", "cluster": "tpr=64,rows=1,cache=smem,cluster=2"}


@pytest.mark.parametrize("family", list(FAMILY))
@pytest.mark.parametrize("dt", [rg.f32, rg.bf16], ids=str)
@pytest.mark.parametrize("name", list(rg.catalog))
def test_the_catalog_is_clean_under_the_sanitizer(name, dt, family):
    block = rg.catalog[name](dt)
    ran = 0
    for hidden in (fit(name, h) for h in SIZES):
        try:
            report = rg.verify(block, hidden, 3, backend="emu", config=FAMILY[family], sanitize=True, seed=hidden)
        except rg.PlanError:
            continue  # this family does not fit this size
        ran += 1
        assert report.ok, report.table()
    if not ran:
        pytest.skip(f"{family} fits none of {SIZES}")


@pytest.mark.parametrize("config, rows", [("tpr=64,rows=1,vec=4,cache=smem,persist=1", 140),
                                          ("tpr=32,rows=1,vec=4,cache=registers,cluster=2,persist=1", 70),
                                          ("tpr=64,rows=1,vec=2,cache=smem,cluster=2,persist=1", 70),
                                          ("tpr=256,rows=1,vec=1,cache=global,persist=4", 3)],
                         ids=["loop", "cluster-loop", "cluster-cta-loop", "smem-weights"])
@pytest.mark.parametrize("name", ["llama", "gpt2", "bert", "gemma2_sandwich"])
def test_persistent_kernels_are_clean_under_the_sanitizer(name, config, rows):
    report = rg.verify(rg.catalog[name](rg.f32), 256, rows, backend="emu", config=config, sanitize=True, seed=rows)
    assert report.ok, report.table()


def test_sanitize_needs_the_emu_backend():
    with pytest.raises(rg.BackendUnavailableError, match="emu"):
        rg.verify(rg.catalog.llama(), 64, 2, backend="cuda", sanitize=True)


def test_sanitize_cli(capsys):
    from resgen.cli import main

    assert main(["verify", "llama", "--hidden", "300", "--rows", "3", "--sanitize"]) == 0
    assert "no hazard" in capsys.readouterr().out


def test_schedules_agree_on_a_correct_kernel():
    block = rg.catalog.gemma2_sandwich(rg.f32)
    kernel = rg.compile(block, 2048, backend="emu", config=LaunchConfig(128, 1, 4, "registers"))
    args = random_inputs(block, (3,), 2048)
    outs = []
    for schedule in ("forward", "reverse", "random"):
        kernel._backend.set_schedule(schedule, 7)
        outs.append(kernel(**args).y)
    kernel._backend.set_schedule("forward")
    assert all(torch.equal(o, outs[0]) for o in outs)
