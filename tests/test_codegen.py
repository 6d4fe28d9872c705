"""Lowering, rendering and NVRTC compilation: every catalog kernel compiles without spills."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings

import resgen as rg
from resgen.codegen import LaunchConfig, default_config, emit, lower, plan_and_source
from resgen.codegen.arch import get_arch
from resgen.errors import CompileError, PlanError
from resgen.runtime.compile import compile_for_device
from resgen.runtime.nvrtc import compile_cubin, global_access_bits, parse_resources
from tests.conftest import CATALOG, DTYPES, TRAINABLE, fit
from tests.strategies import random_blocks

HIDDEN = [1, 128, 1000, 4096, 4097, 8192, 16384, 65536, 262144]


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("dt", DTYPES, ids=str)
@pytest.mark.parametrize("name", CATALOG)
def test_catalog_kernels_compile_without_spills(name, dt, hidden, arch):
    hidden = fit(name, hidden)
    plan, source = plan_and_source(rg.catalog[name](dt), hidden, arch=arch)
    binary = compile_for_device(source, plan.name, arch)
    for entry in plan.entries:
        r = parse_resources(binary.log, entry.name)
        assert (r.spill_stores, r.spill_loads, r.stack_frame) == (0, 0, 0), (entry.name, r)
        assert plan.smem_bytes + r.shared_static <= get_arch(arch).max_dynamic_smem
    if hidden % 8 == 0:  # aligned configs move 16 bytes per access
        assert binary.access_bits == {"load": 128, "store": 128}, plan.name


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(block=random_blocks())
def test_random_blocks_compile(block):
    for hidden in (96, 1001):
        plan, source = plan_and_source(block, hidden)
        compile_for_device(source, plan.name, "sm_90")


def test_heuristic_covers_every_family():
    llama = rg.catalog.llama(rg.bf16)
    assert default_config(llama, 128).family == "warp-per-row"
    assert default_config(llama, 128).threads_per_row == 4
    assert default_config(llama, 4096).family == "cta-per-row"
    assert default_config(llama, 65536, "sm_90").family == "cluster-smem"  # the row stays on chip
    assert default_config(llama, 65536, "sm_80").family == "global-staged"  # no clusters: re-read
    assert default_config(rg.catalog.parallel_residual(rg.bf16), 32768).family == "smem-staged"
    odd = default_config(llama, 4097)  # odd sizes still use vectors, through the peeled entry
    assert odd.vec == 8 and lower(llama, 4097, odd).peels
    assert default_config(rg.grad(llama), 4097).vec == 1  # column sums belong to fixed columns: no peel
    assert default_config(rg.catalog.llama(rg.f32), 4096).vec == 4  # 16 bytes of f32


@pytest.mark.parametrize("hidden, tpr", [(5120, 128), (6144, 256), (11008, 512), (2048, 64)])
def test_heuristic_avoids_idle_lanes_in_the_last_chunk(hidden, tpr):
    config = default_config(rg.catalog.llama(rg.bf16), hidden)
    assert config.threads_per_row == tpr
    report = rg.verify(rg.catalog.llama(rg.bf16), hidden, 3, backend="emu")
    assert report.ok, report.table()


@pytest.mark.parametrize("config, message", [
    (dict(threads_per_row=3, rows_per_cta=32, vec=8), "power of two"),
    (dict(threads_per_row=1024, rows_per_cta=2, vec=8), "exceeds 1024"),
    (dict(threads_per_row=8, rows_per_cta=1, vec=8), "multiple of 32"),
    (dict(threads_per_row=32, rows_per_cta=1, vec=3), "vec must be"),
    (dict(threads_per_row=32, rows_per_cta=1, vec=8, cache="l2"), "cache must be"),
    (dict(threads_per_row=0, rows_per_cta=1, vec=8), "power of two"),
])
def test_invalid_configs_are_rejected(config, message):
    with pytest.raises(PlanError, match=message):
        LaunchConfig(**config)


def test_plan_rejects_configs_that_would_spill_or_overflow_smem():
    llama = rg.catalog.llama(rg.bf16)
    with pytest.raises(PlanError, match="need [0-9]+ floats per thread in registers"):
        lower(llama, 65536, LaunchConfig(1024, 1, 8, "registers"))
    with pytest.raises(PlanError, match="needs 1049088 bytes of shared memory, over sm_80's"):
        lower(llama, 262144, LaunchConfig(1024, 1, 8, "smem"), arch="sm_80")
    with pytest.raises(PlanError, match="idle"):
        lower(llama, 64, LaunchConfig(1024, 1, 8, "registers"))


def test_clusters_need_sm90_and_one_row_per_cta():
    llama = rg.catalog.llama(rg.bf16)
    with pytest.raises(PlanError, match="clusters need sm_90"):
        lower(llama, 65536, LaunchConfig(512, 1, 8, "smem", cluster=2), arch="sm_80")
    with pytest.raises(PlanError, match="rows_per_cta must be 1"):
        LaunchConfig(32, 4, 8, "registers", cluster=2)
    with pytest.raises(PlanError, match="cluster must be"):
        LaunchConfig(256, 1, 8, "smem", cluster=3)


@pytest.mark.parametrize("name", ["llama", "gpt2", "bert"])
@pytest.mark.parametrize("hidden, config", [
    (65536, "tpr=512,rows=1,vec=8,cache=smem,cluster=2"),
    (262144, "tpr=1024,rows=1,vec=8,cache=smem,cluster=8"),
    (16384, "tpr=256,rows=1,vec=8,cache=registers,cluster=4"),
])
def test_cluster_kernels_keep_large_rows_on_chip_without_spills(name, hidden, config):
    plan, source = plan_and_source(rg.catalog[name](rg.bf16), hidden, config, arch="sm_90")
    assert "__cluster_dims__(" in source and "mapa.shared::cluster" in source
    binary = compile_for_device(source, plan.name, "sm_90")
    for entry in plan.entries:
        r = parse_resources(binary.log, entry.name)
        assert (r.spill_stores, r.spill_loads, r.stack_frame) == (0, 0, 0), (entry.name, r)
    assert plan.smem_bytes <= get_arch("sm_90").max_dynamic_smem
    assert binary.access_bits == {"load": 128, "store": 128}


def test_config_strings_parse_and_print():
    base = default_config(rg.catalog.llama(), 4096)
    c = LaunchConfig.parse("tpr=256,cache=smem", base=base)
    assert (c.threads_per_row, c.cache, c.vec) == (256, "smem", base.vec)
    assert LaunchConfig.parse(str(c)) == c
    with pytest.raises(PlanError, match="cannot parse"):
        LaunchConfig.parse("bogus")


def test_kernel_name_is_built_from_the_configuration():
    plan = lower(rg.catalog.llama(rg.bf16), 4096, LaunchConfig(256, 1, 8, "registers"))
    assert plan.name == "rg_llama_bf16_h4096_t256_r1_v8_reg"
    assert [e.name for e in plan.entries] == [plan.name, plan.name + "_narrow"]


def test_emitted_source_is_readable_on_its_own():
    source = emit(rg.catalog.gemma(rg.bf16), 4096)
    header = source.split("#include")[0]
    assert "rg_gemma_bf16_h4096" in header and "block @gemma(hidden = 4096)" in header
    assert "launch      " in header and "row cache" in header
    assert re.search(r"const float t\d+ = v_x\[j\] \+ v_residual\[j\];", source)
    assert "#include <cuda_bf16.h>" in source and "#include <cuda_fp16.h>" not in source


def test_f32_kernels_include_no_half_headers():
    assert "#include" not in emit(rg.catalog.llama(rg.f32), 1024)


def test_emit_matches_the_cli(capsys):
    from resgen.cli import main

    assert main(["emit", "llama", "--hidden", "1000", "--arch", "sm_80"]) == 0
    assert capsys.readouterr().out == emit(rg.catalog.llama(), 1000, arch="sm_80")


def test_inspect_reports_resources_and_access_width(capsys):
    from resgen.cli import main

    assert main(["inspect", "llama", "--hidden", "4096"]) == 0
    out = capsys.readouterr().out
    assert "widest load 128 bits" in out and "rg_llama_bf16_h4096" in out and "regs" in out
    assert "occupancy" in out and "KiB/SM" in out


def test_compile_error_shows_the_failing_source_lines():
    source = "\n".join(["// line 1", "// line 2", 'extern "C" __global__ void k() {', "  int x = undefined_thing;", "}"])
    with pytest.raises(CompileError) as info:
        compile_cubin(source, "k", "sm_90")
    text = str(info.value)
    assert "undefined_thing" in text and ">    4|   int x = undefined_thing;" in text


def test_resource_report_parsing():
    log = """ptxas info    : Compiling entry function 'k_narrow' for 'sm_90'
ptxas info    : Function properties for k_narrow
ptxas         .     8 bytes stack frame, 4 bytes spill stores, 8 bytes spill loads
ptxas info    : Used 40 registers, used 1 barriers, 64 bytes smem
ptxas info    : Compiling entry function 'k' for 'sm_90'
ptxas info    : Function properties for k
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 32 registers, used 1 barriers, 16 bytes smem
"""
    assert parse_resources(log, "k").as_dict() == dict(registers=32, spill_stores=0, spill_loads=0, stack_frame=0,
                                                      shared_static=16, barriers=1)
    assert parse_resources(log, "k_narrow").spills == 12
    with pytest.raises(CompileError):
        parse_resources(log, "missing")


def test_access_width_from_ptx():
    ptx = "ld.global.nc.v4.u32 {%r1,%r2,%r3,%r4}, [%rd1];\nst.global.v2.u32 [%rd2], {%r1,%r2};\nld.global.u16 %rs1, [%rd3];"
    assert global_access_bits(ptx) == {"load": 128, "store": 64}


@pytest.mark.parametrize("arch", ["sm_80", "sm_89", "sm_90", "sm_100"])
def test_compiles_for_every_supported_arch(arch):
    plan, source = plan_and_source(rg.catalog.bert(rg.bf16), 4096, arch=arch)
    assert compile_for_device(source, plan.name, arch).cubin[:4] == b"\x7fELF"


#: Names that used to meet a C keyword, a macro, a CUDA built-in, a template local or another
#: parameter's companion identifier: every user name is mangled, so all of them work.
HOSTILE_NAMES = ["INFINITY", "NAN", "NULL", "EOF", "rsqrtf", "float", "int", "threadIdx", "lane", "row", "t0",
                 "x", "x_v", "v_x", "p_x", "x_row", "rg_smem", "__x", "HIDDEN", "main"]


def hostile_block() -> rg.Block:
    b = rg.Block("hostile")
    total = None
    for i, name in enumerate(HOSTILE_NAMES):
        v = b.input(name, rg.bf16) if i % 2 else b.input(name)
        total = v if total is None else total + v
    w = b.weight("EOF_w", rg.bf16)
    b.output("errno", rg.rms_norm(total, w) * b.scalar("stdout"))
    b.output("printf", rg.row_max(total), dtype=rg.f32)
    return b


def test_any_identifier_compiles_for_the_gpu_and_the_emulator():
    block = hostile_block()
    plan, source = plan_and_source(block, 96)
    assert compile_for_device(source, plan.name, "sm_90").cubin[:4] == b"\x7fELF"
    report = rg.verify(block, 96, 5, backend="emu")
    assert report.ok, report.table()


def test_long_block_names_get_bounded_file_names():
    b = rg.Block("b" * 300)
    b.output("y", b.input("x") * 2.0)
    assert rg.verify(b, 64, 3, backend="emu").ok


def test_inspect_json_reports_the_cost_model(capsys):
    import json

    from resgen.cli import main
    from resgen.tune.timing import plan_bytes

    assert main(["inspect", "llama", "--hidden", "4096", "--rows", "32768", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    for key in ("kernel", "arch", "config", "registers", "spills", "smem_bytes", "ideal_bytes", "hbm_bytes",
                "ctas_per_sm", "bytes_in_flight_per_sm", "waves", "predicted_fraction"):
        assert key in report
    assert report["ideal_bytes"] == plan_bytes(rg.catalog.llama(rg.bf16), 32768, 4096)
    assert report["hbm_bytes"] == report["ideal_bytes"] and report["spills"] == 0  # the row stays in registers
    assert report["config"]["cache"] == "registers" and 0 < report["predicted_fraction"] <= 1


def test_the_cost_model_counts_rereads_that_miss_l2(capsys):
    import json

    from resgen.cli import main

    assert main(["inspect", "gpt2", "--hidden", "262144", "--config", "cache=global,cluster=1", "--json"]) == 0
    big = json.loads(capsys.readouterr().out)
    assert big["hbm_bytes"] > 1.4 * big["ideal_bytes"]  # x and residual read again in the store phase
    assert main(["inspect", "gpt2", "--hidden", "262144", "--config", "cache=global,cluster=1", "--rows", "4", "--json"]) == 0
    few = json.loads(capsys.readouterr().out)
    assert few["hbm_bytes"] == few["ideal_bytes"] and few["waves"] == 1  # four rows stay in L2
    assert few["predicted_fraction"] < big["predicted_fraction"]  # four CTAs cannot fill the GPU


@pytest.mark.parametrize("hidden", [4096, 8192, 16384])
@pytest.mark.parametrize("name", TRAINABLE)
def test_backward_kernels_do_not_spill_and_use_128_bit_accesses(name, hidden):
    plan, source = plan_and_source(rg.grad(rg.catalog[name](rg.bf16)), hidden, None, "sm_90")
    binary = compile_for_device(source, plan.name, "sm_90")
    r = parse_resources(binary.log, plan.entries[0].name)  # the aligned entry every aligned call takes
    assert (r.spill_stores, r.spill_loads, r.stack_frame) == (0, 0, 0), (plan.config, r)
    assert binary.access_bits == {"load": 128, "store": 128}
    if plan.col_sums_in_smem:  # column sums moved out of registers have their shared memory
        assert plan.smem_bytes >= 4 * hidden // plan.config.cluster * len(plan.col_sums)


@pytest.mark.parametrize("hidden", [1024, 2048, 4096, 8192, 16384, 32768, 65536, 262144])
@pytest.mark.parametrize("name", CATALOG)
def test_the_cost_model_sees_every_catalog_row_stay_on_chip(name, hidden):
    """The heuristic's kernels at 32768 rows on sm_90: DRAM moves the ideal bytes (no row read twice),
    nothing spills, an SM has 32 KiB of loads in flight, and LayerNorm reduces in one phase."""
    from resgen.codegen.cost import IN_FLIGHT_TARGET, cost

    plan, source = plan_and_source(rg.catalog[name](rg.bf16), hidden, arch="sm_90")
    binary = compile_for_device(source, plan.name, "sm_90")
    report = cost(plan, parse_resources(binary.log, plan.entries[0].name), 32768)
    assert report.hbm_bytes <= 1.01 * report.ideal_bytes, report
    assert report.spills == 0 and report.bytes_in_flight_per_sm >= IN_FLIGHT_TARGET, report
    # two norms in a row (the second reads the first's result), or a per-token scale (the row's
    # maximum of the normalized value): a second reduction that needs the first's result
    if name not in ("gemma2_sandwich", "llama_fp8_dynamic", "llama_int8_dynamic"):
        assert report.reduction_phases == 1, report


@pytest.mark.parametrize("hidden", [4096, 16384, 65536])
def test_a_dropout_mask_is_drawn_once_per_row(hidden):
    # bert's backward needs its forward's mask in both phases: the first draws it and keeps one bit
    # per element for the second (its phase loops are fully unrolled, so the bits stay in registers).
    plan, source = plan_and_source(rg.grad(rg.catalog.bert(rg.bf16)), hidden, None, "sm_90")
    assert source.count("rg_dropout_uniforms<VEC>(") == 1, plan.config
    assert "drop0_bits[it] |=" in source and "(drop0_bits[it] >> j) & 1u" in source


@pytest.mark.parametrize("name", CATALOG)
def test_odd_hidden_kernels_use_128_bit_accesses_without_spills(name):
    # hidden 4097 is not a multiple of 8: the peeled entry still moves rows 16 bytes at a time
    # (block-scaled entries take whole blocks: 4128, a multiple of 8 with a predicated tail chunk).
    hidden = fit(name, 4097)
    plan, source = plan_and_source(rg.catalog[name](rg.bf16), hidden, None, "sm_90")
    assert plan.config.vec == 8 and (plan.peels or hidden % 8 == 0)
    binary = compile_for_device(source, plan.name, "sm_90")
    assert binary.access_bits == {"load": 128, "store": 128}
    for entry in plan.entries:
        r = parse_resources(binary.log, entry.name)
        assert (r.spill_stores, r.spill_loads, r.stack_frame) == (0, 0, 0), (entry.name, r)


def test_the_cost_model_sees_few_rows_reach_more_sms_as_clusters():
    # 64 rows of 16384: a CTA per row keeps 64 of 132 SMs busy with one CTA each; a cluster of 4
    # per row spreads them over every SM.
    from resgen.codegen.cost import cost

    def report(config):
        plan, source = plan_and_source(rg.catalog.llama(rg.bf16), 16384, config, "sm_90", rows=64)
        binary = compile_for_device(source, plan.name, "sm_90")
        return plan, cost(plan, parse_resources(binary.log, plan.entries[0].name), 64)

    plan, few = report(None)
    assert plan.config.cluster == 4 and few.waves == 1
    _, one_per_row = report("tpr=512,rows=1,vec=8,cache=registers,cluster=1")
    assert few.predicted_fraction > 1.5 * one_per_row.predicted_fraction, (few, one_per_row)
