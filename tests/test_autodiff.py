"""rg.grad: the backward block derived by reverse-mode autodiff, checked against torch autograd
through the reference, and its row-input gradients run as generated kernels on the emulator."""

from __future__ import annotations

import importlib

import pytest
import torch
from hypothesis import HealthCheck, given, settings

import resgen as rg
from resgen.cli import main
from resgen.codegen import lower
from resgen.passes.autodiff import distinct_outputs, saved_statistics, with_saved_statistics
from resgen.runtime import ops
from resgen.verification import GRAD_TOLERANCES, compare, gradient_case, random_inputs
from tests.conftest import DTYPES, FAMILIES, TRAINABLE, family_config
from tests.strategies import random_blocks

lower_module = importlib.import_module("resgen.codegen.lower")


@pytest.mark.parametrize("hidden", [1, 1000, 4097])
@pytest.mark.parametrize("dt", DTYPES, ids=str)
@pytest.mark.parametrize("name", TRAINABLE)
def test_the_backward_block_gives_torch_autograds_gradients(name, dt, hidden):
    block = rg.catalog[name](dt)
    gb = rg.grad(block)
    for rows in (1, 37):
        call, want = gradient_case(block, rows, hidden, seed=rows)
        got = rg.reference(gb, **{p.name: call[p.name] for p in gb.params}, seed=rows)
        assert set(got) == set(want)
        for key, value in want.items():
            check = compare(key, rg.ir.dtypes.as_dtype(value.dtype, what=key), got[key], value, GRAD_TOLERANCES)
            assert check.ok, (key, check)


def test_weight_gradients_over_many_rows_stay_within_float32_accumulation():
    block = rg.catalog.gpt2(rg.f32)
    call, want = gradient_case(block, 1024, 256, seed=3)
    gb = rg.grad(block)
    got = rg.reference(gb, **{p.name: call[p.name] for p in gb.params})
    for key in ("d_weight", "d_bias"):
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-4)


@pytest.mark.filterwarnings("ignore:Input #.* is not a double precision")  # the reference computes in float32
def test_the_reference_passes_gradcheck():
    block = rg.catalog.gpt2(rg.f32)
    args = random_inputs(block, (3,), 8)
    names = ["x", "residual", "weight", "bias"]

    def fn(*tensors):
        out = rg.reference(block, **dict(zip(names, tensors, strict=True)))
        return out.y, out.residual_out

    inputs = tuple(args[n].clone().requires_grad_(True) for n in names)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-2, atol=2e-2, rtol=2e-2, nondet_tol=1e-5)


def test_layer_norm_backward_is_one_kernel_with_one_reduction_phase():
    for name in ("gpt2", "llama", "bert", "parallel_residual"):
        block = rg.catalog[name](rg.bf16)
        rows_in = [p.name for p in block.params if p.op == "input"]
        plan = lower(rg.grad(block, wrt=rows_in), 4096)
        assert sum(1 for p in plan.phases if p.reductions) == 1, name
        assert saved_statistics(block), name  # mean/rstd are read, not reduced again


def test_norms_save_their_statistics_and_the_training_forward_writes_them():
    assert len(saved_statistics(rg.catalog.gpt2())) == 2  # mean and rstd
    assert len(saved_statistics(rg.catalog.llama())) == 1  # rstd
    fwd = with_saved_statistics(rg.catalog.llama(rg.bf16))
    assert [o.name for o in fwd.outputs] == ["residual_out", "y", "saved_0"]
    assert rg.verify(fwd, 1000, 5, backend="emu").ok


def check_gradient_kernel(block: rg.Block, hidden: int, config=None, rows_list=(1, 37)) -> None:
    """The backward kernel (emu) against torch autograd through the reference, at each row count."""
    gb = rg.grad(block)
    kernel = rg.compile(gb, hidden, backend="emu", config=config)
    for rows in rows_list:
        call, want = gradient_case(block, rows, hidden, seed=rows)
        got = kernel(**{p.name: call[p.name] for p in gb.params}, seed=rows)
        for key, value in want.items():
            check = compare(key, rg.ir.dtypes.as_dtype(value.dtype, what=key), got[key], value, GRAD_TOLERANCES)
            assert check.ok, (key, kernel.config, check)


@pytest.mark.parametrize("hidden", [1, 1000, 4096, 4097])
@pytest.mark.parametrize("dt", DTYPES, ids=str)
@pytest.mark.parametrize("name", TRAINABLE)
def test_gradient_kernels_match_torch_autograd_on_emu(name, dt, hidden):
    check_gradient_kernel(rg.catalog[name](dt), hidden)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("hidden", [1000, 4097])
@pytest.mark.parametrize("name", TRAINABLE)
def test_gradient_kernels_of_every_config_family(name, hidden, family):
    block = rg.catalog[name](rg.bf16)
    config = family_config(rg.grad(block), hidden, family)
    if config is None:
        pytest.skip(f"no {family} config fits hidden={hidden}")
    check_gradient_kernel(block, hidden, config)


@settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(block=random_blocks(max_ops=6))
def test_random_blocks_gradient_kernels_match_torch_autograd(block):
    check_gradient_kernel(block, 96, rows_list=(5,))


def test_column_accumulators_in_shared_memory_give_the_bits_of_registers(monkeypatch):
    gb = rg.grad(rg.catalog.gpt2(rg.bf16))
    args = random_inputs(gb, (41,), 256, seed=3)
    config = "tpr=32,rows=4,vec=8,cache=registers"
    results = {}
    for limit in (0, 1000):  # every accumulator in shared memory, then every one in registers
        monkeypatch.setattr(lower_module, "MAX_REGISTER_COL_FLOATS", limit)
        kernel = rg.compile(gb, 256, backend="emu", config=config)
        results[kernel.plan.col_sums_in_smem] = kernel(**args)
    assert set(results) == {True, False}
    for name in ("d_x", "d_weight", "d_bias"):
        assert torch.equal(results[True][name], results[False][name]), name


def test_verify_grad_compares_the_backward_kernel_with_torch_autograd(capsys):
    report = rg.verify(rg.catalog.bert(rg.f32), 1000, 37, backend="emu", grad=True)
    assert report.ok, report.table()
    assert report.kernel.startswith("rg_bert_grad_f32") and {o.name for o in report.outputs} == {
        "d_x", "d_residual", "d_weight", "d_bias", "d_ln_bias"}
    assert 0 < report["d_x"].max_abs < report["d_x"].max_abs_tol  # a real comparison, not a copy
    assert main(["verify", "gpt2", "--grad", "--hidden", "1000", "--rows", "3", "--backend", "emu"]) == 0
    assert "d_bias" in capsys.readouterr().out


@pytest.mark.parametrize("config", ["tpr=32,rows=4,cache=smem", "tpr=128,rows=1,cache=global",
                                    "tpr=64,rows=1,cache=smem,cluster=2"])
def test_column_reductions_are_deterministic_and_clean_under_the_sanitizer(config):
    gb = rg.grad(rg.catalog.gpt2(rg.bf16))
    report = rg.verify(gb, 1000, 301, backend="emu", config=config, sanitize=True)
    assert report.ok, report.table()
    kernel = rg.compile(gb, 1000, backend="emu", config=config)
    args = random_inputs(gb, (301,), 1000, seed=5)
    first, second = kernel(**args), kernel(**args)
    assert torch.equal(first.d_weight, second.d_weight) and torch.equal(first.d_bias, second.d_bias)
    plan = kernel.plan  # CTAs loop over row groups: partials per CTA slot, never more than a fixed count
    assert plan.partials(301) == min(-(-301 // plan.config.rows_per_cta), plan.persistent_ctas) * plan.config.rows_per_cta
    assert plan.partials(10**6) == plan.persistent_ctas * plan.config.rows_per_cta


def test_dropout_backward_regenerates_the_forward_mask_bit_for_bit():
    b = rg.Block("drop")
    b.output("y", rg.dropout(b.input("x"), 0.3))
    x, dy = torch.rand(37, 1000) + 0.5, torch.ones(37, 1000)
    kept = rg.compile(b, 1000, backend="emu")(x=x, seed=42, offset=7).y != 0
    gb = rg.grad(b)
    assert [p.name for p in gb.params] == ["d_y"]  # nothing stored: the mask is drawn again
    dx = rg.compile(gb, 1000, backend="emu")(d_y=dy, seed=42, offset=7).d_x
    assert torch.equal(dx != 0, kept)
    assert torch.equal(dx, rg.reference(gb, d_y=dy, seed=42, offset=7).d_x)


def test_rows_zero_give_zero_weight_gradients():
    gb = rg.grad(rg.catalog.llama(rg.f32))
    out = rg.compile(gb, 256, backend="emu")(**random_inputs(gb, (0,), 256))
    assert torch.equal(out.d_weight, torch.zeros(256))


def test_grad_errors_name_what_is_wrong():
    with pytest.raises(rg.VerifyError, match="'wrt' names \\['nope'\\]"):
        rg.grad(rg.catalog.llama(), wrt=["nope"])
    b = rg.Block("clash")
    b.output("y", b.input("x") * b.input("d_y"))
    with pytest.raises(rg.VerifyError, match="d_y"):
        rg.grad(b)


def test_the_backward_block_prints_and_parses_like_any_block(capsys):
    from resgen.cli import main
    from resgen.ir.parser import parse_block
    from resgen.ir.printer import print_block

    gb = rg.grad(rg.catalog.gemma2_sandwich(rg.bf16))
    assert print_block(parse_block(print_block(gb))) == print_block(gb)
    assert main(["ir", "llama", "--grad"]) == 0
    assert "block @llama_grad" in capsys.readouterr().out


@pytest.mark.parametrize("dt", [rg.f32, rg.bf16], ids=str)
@pytest.mark.parametrize("name", TRAINABLE)
def test_kernel_calls_are_autograd_ops_matching_the_reference(name, dt):
    block = rg.catalog[name](dt)
    kernel = rg.compile(block, 1000, backend="emu")
    case, want = gradient_case(block, 9, 1000, seed=4)
    args = {p.name: case[p.name] for p in block.params}
    cotangents = {k: v for k, v in case.items() if k.startswith("d_")}
    diff = [p.name for p in block.params if p.op in ("input", "weight")]
    leaves = {k: v.clone().requires_grad_(k in diff) if isinstance(v, torch.Tensor) else v for k, v in args.items()}
    call = dict(leaves)
    if any(o.inplace for o in block.outputs):  # torch's rule: a leaf that requires grad is not overwritten
        call = {k: v * 1 if isinstance(v, torch.Tensor) and v.requires_grad else v for k, v in leaves.items()}
    out = kernel(**call, seed=4)
    targets = [leaves[n] for n in diff]
    got = torch.autograd.grad([out[o.name] for o in block.outputs], targets,
                              [cotangents[f"d_{o.name}"] for o in block.outputs])
    for n, g in zip(diff, got, strict=True):
        check = compare(f"d_{n}", rg.ir.dtypes.as_dtype(g.dtype, what=n), g, want[f"d_{n}"], GRAD_TOLERANCES)
        assert check.ok, (n, check)


def test_cotangents_of_the_wrong_dtype_or_shape_name_the_argument():
    block = rg.catalog.llama(rg.bf16)
    gb = rg.grad(block)
    kernel = rg.compile(gb, 64, backend="emu")
    args = random_inputs(gb, (3,), 64)
    with pytest.raises(rg.LaunchError, match="'d_y' must have dtype torch.bfloat16"):
        kernel(**{**args, "d_y": args["d_y"].float()})
    with pytest.raises(rg.LaunchError, match="d_y"):
        kernel(**{**args, "d_y": args["d_y"][:2]})  # two rows where x has three
    with pytest.raises(rg.LaunchError, match="d_y"):
        kernel(**{**args, "d_y": torch.zeros(3, 65, dtype=torch.bfloat16)})  # hidden 65, compiled for 64


def test_column_reduction_kernels_take_the_warm_path_with_fresh_workspaces():
    gb = rg.grad(rg.catalog.gpt2(rg.bf16))
    kernel = rg.compile(gb, 1000, backend="emu")
    args = random_inputs(gb, (37,), 1000, seed=8)
    cold = kernel(**args)
    assert len(kernel._templates) == 1  # the layout is remembered, workspace and finalize kernel included
    warm = kernel(**args)
    other = random_inputs(gb, (37,), 1000, seed=9)
    for name in ("d_x", "d_residual", "d_weight", "d_bias"):
        assert torch.equal(cold[name], warm[name]), name  # bitwise: the same partials in the same order
    d_weight = torch.full((1000,), float("nan"), dtype=torch.bfloat16)
    again = kernel(**other, d_weight=d_weight)  # preallocated column output (as under CUDA graph capture)
    assert again.d_weight is d_weight
    want = rg.reference(gb, **other)
    for name in ("d_x", "d_weight", "d_bias"):
        check = compare(name, rg.bf16, again[name], want[name], GRAD_TOLERANCES)
        assert check.ok, (name, check)


def test_a_gradient_two_inputs_share_is_written_once():
    block = rg.catalog.parallel_residual(rg.bf16)  # h = residual + attn + mlp: one gradient for all three
    kernel = rg.compile(block, 256, backend="emu")
    args = random_inputs(block, (6,), 256, seed=1)
    leaves = {k: v.clone().requires_grad_(True) if isinstance(v, torch.Tensor) else v for k, v in args.items()}
    out = kernel(**leaves)
    (out.y.float().sum() + out.residual_out.float().square().sum()).backward()
    text, same = ops.backward_of(kernel.op.text, ("residual", "attn", "mlp", "weight", "bias"))
    assert same == {"d_attn": "d_residual", "d_mlp": "d_residual"}
    assert [o.name for o in ops.block_of(text).outputs] == ["d_residual", "d_weight", "d_bias"]
    assert torch.equal(leaves["attn"].grad, leaves["residual"].grad) and torch.equal(leaves["mlp"].grad,
                                                                                    leaves["residual"].grad)
    fp32 = rg.compile(rg.catalog.llama_fp32_residual(rg.bf16), 256, backend="emu")  # bf16 d_x, f32 d_residual
    assert distinct_outputs(rg.grad(fp32.block))[1] == {}


def test_two_weights_with_one_gradient_each_get_their_own_accumulators():
    b = rg.Block("twins")
    b.output("y", b.input("x") + b.weight("w0") + b.weight("w1"))  # d_w0 and d_w1: one col_sum node
    report = rg.verify(b, 1000, 37, backend="emu", grad=True, sanitize=True)
    assert report.ok, report.table()
    assert lower(rg.grad(b), 1000).col_sums_in_smem  # both in shared memory, each its own columns
