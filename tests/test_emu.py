"""The emu backend runs the exact emitted CUDA on the CPU and matches the reference."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings

import resgen as rg
from resgen.codegen import LaunchConfig, default_config, lower
from resgen.verification import random_inputs
from tests.conftest import CATALOG, DTYPES, FAMILIES, family_config, fit
from tests.strategies import random_blocks

HIDDEN = [1, 128, 1000, 4096, 4097]
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("dt", DTYPES, ids=str)
@pytest.mark.parametrize("name", CATALOG)
def test_catalog_verifies_on_emu(name, dt, hidden, family):
    block, hidden = rg.catalog[name](dt), fit(name, hidden)
    config = family_config(block, hidden, family)
    if config is None:
        pytest.skip(f"no {family} config fits hidden={hidden}")
    for rows in (1, 37):
        report = rg.verify(block, hidden, rows, backend="emu", seed=rows, config=config)
        assert report.ok, report.table()


#: Persistent configs, each with its dtype: weights in registers (warp-per-row), weights in shared
#: memory (4 CTAs of 256 threads leave no registers for them), and a cluster. `{vec}` is the widest vector
#: hidden allows.
PERSISTENT = [("tpr=32,rows=4,vec={vec},cache=registers,persist=1", rg.bf16, "registers"),
              ("tpr=256,rows=1,vec={vec},cache=global,persist=4", rg.f32, "smem"),
              ("tpr=64,rows=1,vec={vec},cache=smem,cluster=2,persist=1", rg.f16, None)]


@pytest.mark.parametrize("hidden", [1000, 4097])
@pytest.mark.parametrize("config,dt,home", PERSISTENT, ids=["registers", "smem-weights", "cluster"])
@pytest.mark.parametrize("name", CATALOG)
def test_persistent_kernels_loop_over_more_rows_than_ctas(name, config, dt, home, hidden):
    block, hidden = rg.catalog[name](dt), fit(name, hidden)
    config = LaunchConfig.parse(config.format(vec=next(v for v in (8, 4, 2, 1) if hidden % v == 0 and v * dt.itemsize <= 16)))
    try:
        plan = lower(block, hidden, config)
    except rg.PlanError as exc:  # warp-per-row at 4097 (vec 1) needs more registers than it may have
        pytest.skip(str(exc))
    weights = block.params_of("weight")
    if home == "smem" and weights or home == "registers" and len(weights) == 1:  # (three weights need smem)
        assert {w.hoisted for w in plan.hoisted} == {home}
    rows = plan.persistent_ctas * config.rows_per_cta + 3  # every CTA runs a second row group, a few a third
    assert plan.grid(rows) // config.cluster == plan.persistent_ctas
    report = rg.verify(block, hidden, rows, backend="emu", seed=hidden, config=config)
    assert report.ok, report.table()


def test_every_family_is_exercised_somewhere():
    llama = rg.catalog.llama(rg.bf16)
    assert all(family_config(llama, 1000, f) is not None for f in FAMILIES)


@settings(max_examples=20, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(block=random_blocks())
def test_random_blocks_verify_on_emu(block):
    for hidden, rows in ((96, 5), (1001, 3)):
        report = rg.verify(block, hidden, rows, backend="emu", seed=hidden)
        assert report.ok, report.table()


def dropout_block(p: float) -> rg.Block:
    b = rg.Block("drop")
    x = b.input("x")
    b.output("y", rg.dropout(x, p))
    b.output("z", rg.dropout(x * 2.0, p))
    return b


@pytest.mark.parametrize("vec", [1, 2, 8])
def test_dropout_masks_are_bit_identical_to_the_reference(vec):
    block, hidden = dropout_block(0.3), 1000
    x = torch.rand(37, hidden) + 0.5
    k = rg.compile(block, hidden, backend="emu", config=LaunchConfig(32, 4, vec, "registers"))
    for seed, offset in ((0, 0), (12345, 7), (2**40 + 3, 2**33)):
        got, want = k(x=x, seed=seed, offset=offset), rg.reference(block, x=x, seed=seed, offset=offset)
        assert torch.equal(got.y == 0, want.y == 0) and torch.equal(got.z == 0, want.z == 0)
        assert torch.equal(got.y, want.y)


def test_strided_and_3d_inputs():
    block = rg.catalog.gpt2(rg.bf16)
    k = rg.compile(block, 512, backend="emu")
    base = random_inputs(block, (4, 6), 1024, seed=1)
    args = {"x": base["x"][:, ::2, :512], "residual": base["residual"][:, 1::2, 512:],
            "weight": base["weight"][:512], "bias": base["bias"][512:]}
    assert k.prepare(**args).args[1] == ("i64", 2 * 1024)  # x's row stride, passed to the kernel
    got, want = k(**args), rg.reference(block, **args)
    assert got.y.shape == got.residual_out.shape == (4, 3, 512)
    for name in want:
        torch.testing.assert_close(got[name].float(), want[name].float(), rtol=8e-3, atol=8e-3)


def test_misaligned_rows_take_the_narrow_entry_point():
    block = rg.catalog.llama(rg.bf16)
    k = rg.compile(block, 256, backend="emu")
    big = random_inputs(block, (9,), 257, seed=2)
    args = {"x": big["x"][:, 1:], "residual": big["residual"][:, :256], "weight": big["weight"][1:]}
    assert k.prepare(**args).entry.name.endswith("_narrow")
    got, want = k(**args), rg.reference(block, **args)
    for name in want:
        torch.testing.assert_close(got[name].float(), want[name].float(), rtol=8e-3, atol=8e-3)
    aligned = random_inputs(block, (9,), 256, seed=2)
    assert k.prepare(**aligned).entry.name == k.plan.name


@pytest.mark.parametrize("dt", [rg.f32, rg.bf16], ids=str)
@pytest.mark.parametrize("name", ["llama", "bert", "gpt2"])
def test_odd_hidden_rows_take_the_peeled_entry_cold_and_warm(name, dt):
    # hidden 4097: contiguous rows start at every residue modulo VEC; the peeled entry shifts each
    # row's chunks to aligned addresses (16-byte accesses) and predicates the ends. Row strides that
    # disagree modulo VEC, or a misaligned base, fall back to the narrow entry; all stay right.
    block = rg.catalog[name](dt)
    k = rg.compile(block, 4097, backend="emu")
    assert k.config.vec > 1 and [e.name for e in k.plan.entries][1].endswith("_peeled")
    args = random_inputs(block, (11,), 4097, seed=7)
    want = rg.reference(block, **args, seed=7)
    assert k.prepare(**args, seed=7).entry.peel
    for _ in range(2):  # cold, then the warm path's own entry choice
        got = k(**args, seed=7)
        for o in want:
            assert rg.verification.compare(o, dt, got[o], want[o]).ok, o
    one = random_inputs(block, (1,), 4097, seed=7)  # a single row starts aligned: the wide entry
    assert k.prepare(**one, seed=7).entry.name == k.plan.name
    wide = random_inputs(block, (11,), 4104, seed=7)
    mixed = {**args, "x": wide["x"][:, 1:4098]}  # x's rows 4104 apart (residue 0), the rest 4097 (residue 1)
    assert k.prepare(**mixed, seed=7).entry.name.endswith("_narrow")
    got, want = k(**mixed, seed=7), rg.reference(block, **mixed, seed=7)
    for o in want:
        assert rg.verification.compare(o, dt, got[o], want[o]).ok, o


@pytest.mark.parametrize("cache", ["registers", "smem", "global"])
def test_in_place_output_overwrites_its_input(cache):
    block = rg.catalog.llama_fp32_residual(rg.bf16)
    k = rg.compile(block, 1024, backend="emu", config=LaunchConfig(128, 1, 8, cache))
    args = random_inputs(block, (2, 5), 1024, seed=3)
    want = rg.reference(block, **args)
    residual = args["residual"]
    got = k(**args)
    assert got.residual_out.data_ptr() == residual.data_ptr()
    torch.testing.assert_close(residual, want.residual_out)
    torch.testing.assert_close(got.y.float(), want.y.float(), rtol=8e-3, atol=8e-3)


def test_row_scalar_outputs_and_preallocated_outputs():
    b = rg.Block("stats")
    x = b.input("x", rg.bf16)
    b.output("mean", rg.row_mean(x), dtype=rg.f32)
    b.output("amax", rg.row_max(rg.abs(x)))
    b.output("y", x * rg.rsqrt(rg.row_mean(x * x) + 1e-6))
    k = rg.compile(b, 700, backend="emu")
    x_t = torch.randn(3, 4, 700).bfloat16()
    y = torch.empty(3, 4, 700, dtype=torch.bfloat16)
    got, want = k(x=x_t, y=y), rg.reference(b, x=x_t)
    assert got.y is y and got.mean.shape == (3, 4)
    torch.testing.assert_close(got.mean, want.mean, rtol=1e-5, atol=1e-5)
    assert torch.equal(got.amax, want.amax)


def test_zero_rows_launch_nothing():
    block = rg.catalog.llama(rg.f32)
    k = rg.compile(block, 64, backend="emu")
    got = k(**random_inputs(block, (0,), 64))
    assert got.y.shape == (0, 64)


@pytest.mark.parametrize("mutate, message", [
    (lambda a: a.update(x=a["x"][:, :32]), "compiled for hidden=64"),
    (lambda a: a.update(x=a["x"].t().contiguous().t()), "last .hidden. dimension must be contiguous"),
    (lambda a: a.update(x=a["x"].double()), "'x' must have dtype"),
    (lambda a: a.update(y=torch.empty(8, 32)), "output argument 'y' must have shape"),
    (lambda a: a.update(y=torch.empty(8, 64, dtype=torch.float16)), "'y' must have dtype"),
    (lambda a: a.update(weight=torch.randn(128)[::2]), "'weight' must be contiguous"),
    (lambda a: a.update(y=a["x"]), "overlaps input 'x'"),
    (lambda a: a.update(y=(o := torch.empty(8, 64)), residual_out=o), "outputs 'residual_out' and 'y' overlap"),
    (lambda a: a.update(x=torch.randn(2, 4, 64).transpose(0, 1), residual=torch.randn(4, 2, 64)),
     "'x': leading dimensions .* do not form one row stride"),
    (lambda a: a.update(y=torch.empty(1, 64).expand(8, 64)), "output 'y': rows 0 elements apart overlap"),
    (lambda a: a.update(nope=1), "unknown argument"),
    (lambda a: a.pop("residual"), "missing argument"),
])
def test_call_errors_name_the_argument(mutate, message):
    block = rg.catalog.llama(rg.f32)
    k = rg.compile(block, 64, backend="emu")
    args = random_inputs(block, (8,), 64)
    mutate(args)
    with pytest.raises(rg.LaunchError, match=message):
        k(**args)


def test_cuda_backend_without_a_gpu_says_so_and_names_emu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(rg.BackendUnavailableError, match="emu"):
        rg.compile(rg.catalog.llama(), 4096, backend="cuda")
    assert rg.compile(rg.catalog.llama(), 64, backend="auto").backend == "emu"


def test_kernel_exposes_source_config_and_resources():
    k = rg.compile(rg.catalog.llama(), 4096, backend="emu")
    assert k.source == rg.emit(rg.catalog.llama(), 4096)
    assert k.config == default_config(rg.catalog.llama(), 4096)
    assert all(r.spills == 0 for r in k.resources.values())


def test_verify_cli_prints_a_table_and_exit_code(capsys):
    from resgen.cli import main

    assert main(["verify", "llama", "--hidden", "256", "--rows", "5", "--backend", "emu"]) == 0
    out = capsys.readouterr().out
    assert "residual_out" in out and "PASS" in out


def test_warm_calls_reuse_the_layout_and_still_check_alignment_and_overlap():
    block = rg.catalog.llama(rg.bf16)
    k = rg.compile(block, 256, backend="emu")
    args = random_inputs(block, (9,), 256, seed=5)
    want = rg.reference(block, **args)
    for _ in range(2):  # cold, then warm
        got = k(**args)
        torch.testing.assert_close(got.y.float(), want.y.float(), rtol=8e-3, atol=8e-3)
    assert len(k._templates) == 1
    shifted = {**args, "x": torch.empty(9 * 256 + 1, dtype=torch.bfloat16)[1:].view(9, 256).copy_(args["x"])}
    got = k(**shifted)  # same layout key, misaligned pointer: must take the narrow entry and stay right
    torch.testing.assert_close(got.y.float(), want.y.float(), rtol=8e-3, atol=8e-3)
    out = torch.empty(9, 256, dtype=torch.bfloat16)
    k(**args, y=out)
    with pytest.raises(rg.LaunchError, match="overlaps input 'x'"):
        k(**{**args, "x": out}, y=out)


def test_bare_inputs_as_outputs_and_reduction_arguments():
    b = rg.Block("bare")
    x = b.input("x", rg.f16)
    b.output("copy", x)
    b.output("total", rg.row_sum(x), dtype=rg.f32)
    b.output("scaled", x * rg.row_max(x))
    for config in (None, "cache=global", "cache=smem"):
        report = rg.verify(b, 515, 7, backend="emu", config=config)
        assert report.ok, report.table()


def test_guards_catch_writes_outside_an_output():
    from resgen.codegen import plan_and_source
    from resgen.runtime.emu import EmuBackend
    from resgen.runtime.kernel import Kernel
    from resgen.verification import guarded_output, untouched_outside

    block = rg.catalog.llama(rg.f32)
    plan, source = plan_and_source(block, 1000, "tpr=32,rows=4,vec=4")
    predicated = "            if ((unsigned)(col0 + j) < (unsigned)HIDDEN) {\n                RG_CHECK(row + col0 + j, sizeof(T), true, line);"
    broken = source.replace(predicated, "            {\n                RG_CHECK(row + col0 + j, sizeof(T), true, line);")
    # the tail store, unpredicated
    assert predicated in source and broken != source
    args = random_inputs(block, (5,), 1000)
    for text, clean in ((source, True), (broken, False)):
        kernel = Kernel(block, 1000, plan, text, EmuBackend(plan, text))
        outs = {n: guarded_output((5, 1000), torch.float32, "cpu") for n in ("y", "residual_out")}
        kernel(**args, **{n: view for n, (view, _) in outs.items()})
        assert all(untouched_outside(view, backing) for view, backing in outs.values()) is clean


def test_broadcast_inputs_with_row_stride_zero_are_read_correctly():
    block = rg.catalog.gpt2(rg.f32)
    k = rg.compile(block, 128, backend="emu")
    args = random_inputs(block, (6,), 128, seed=8)
    args["residual"] = args["residual"][:1].expand(6, 128)  # the same residual row for every row
    got, want = k(**args), rg.reference(block, **args)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["gpt2", "bert", "parallel_residual", "deepnorm"])
def test_layer_norm_blocks_reduce_in_one_phase(name):
    plan = lower(rg.catalog[name](rg.bf16), 4096)
    assert sum(1 for p in plan.phases if p.reductions) == 1  # mean and row_var side by side
    assert {r.op for r in plan.phases[0].reductions} == {"sum", "var"}


@pytest.mark.parametrize("config", [None, "tpr=32,rows=4,cache=smem", "tpr=64,rows=1,cache=smem,cluster=2"])
@pytest.mark.parametrize("hidden", [1000, 4096])
def test_one_pass_variance_is_as_accurate_as_two_passes_on_adversarial_rows(hidden, config):
    """Large means and small spreads: float32 loses the mean's low bits in every method, so the
    one-pass kernel's y must do no worse than the two-pass float32 form it replaced, and its rstd
    (the saved statistic) must match float64 to float32 rounding (the two-pass form is off by 5e-4
    at mean 3000, std 0.01)."""
    from resgen.passes.autodiff import with_saved_statistics

    block = with_saved_statistics(rg.catalog.gpt2(rg.f32))
    kernel = rg.compile(block, hidden, backend="emu", config=config)
    for mean, std in ((3000.0, 0.01), (1e5, 1.0), (-200.0, 0.05), (0.0, 1e-3)):
        gen = torch.Generator().manual_seed(int(mean))
        x = mean + std * torch.randn(37, hidden, generator=gen)
        args = {"x": x, "residual": torch.zeros_like(x), "weight": 1 + 0.5 * torch.randn(hidden, generator=gen),
                "bias": torch.randn(hidden, generator=gen)}
        got, want = kernel(**args), rg.reference(block, **args)  # the reference reduces in float64
        centered = x - x.sum(-1, keepdim=True) / hidden
        two_pass = centered * torch.rsqrt((centered * centered).sum(-1, keepdim=True) / hidden + 1e-5)
        two_pass = two_pass * args["weight"] + args["bias"]

        exact_y = want.y.double()

        def error(t: torch.Tensor, exact_y: torch.Tensor = exact_y) -> float:
            return (t.double() - exact_y).norm().item() / exact_y.norm().item()

        assert error(got.y) <= 1.5 * error(two_pass) + 1e-7, (mean, std, error(got.y), error(two_pass))
        exact = torch.rsqrt(x.double().var(-1, unbiased=False) + 1e-5)
        rstd = next(o.name for o in block.outputs if o.name.startswith("saved_")
                    and torch.allclose(want[o.name].double(), exact, rtol=1e-6))
        rel = ((got[rstd].double() - exact).abs() / exact).max().item()
        assert rel < 1e-6, (mean, std, rel)  # float32 rounding of the variance, no cancellation


@pytest.mark.parametrize("hidden, rows", [(65536, 3), (262144, 2)])
@pytest.mark.parametrize("name", ["llama", "gpt2", "bert"])
def test_rows_too_large_for_a_cta_verify_as_clusters(name, hidden, rows):
    # The heuristic keeps these rows on chip across a cluster (sm_90); the emulator runs the cluster.
    report = rg.verify(rg.catalog[name](rg.bf16), hidden, rows, backend="emu", seed=rows)
    assert report.ok and LaunchConfig.parse(str(report.config)).cluster > 1, report.table()


@pytest.mark.parametrize("hidden, rows, cluster", [(16384, 1, 8), (16384, 64, 4), (65536, 5, 8), (4096, 3, 2)])
@pytest.mark.parametrize("name", ["llama", "gpt2", "bert"])
def test_few_rows_spread_over_clusters_when_compile_knows_the_rows(name, hidden, rows, cluster):
    # Decode-sized calls: one CTA per row would leave the GPU idle, so the row is split over a cluster.
    block = rg.catalog[name](rg.bf16)
    kernel = rg.compile(block, hidden, backend="emu", rows=rows)
    assert kernel.config.cluster == cluster and kernel.config.persist == 0, kernel.config
    assert rg.compile(block, hidden, backend="emu", rows=32768).config.cluster < cluster
    report = rg.verification.verify_kernel(kernel, rows, seed=rows)
    assert report.ok, report.table()
