"""Regression tests for hostile and odd input: sizes, NaN and overflow, the warm path, the cache,
gradients, and every CLI subcommand's errors."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import resgen as rg
from resgen.codegen.lower import MAX_HIDDEN
from resgen.verification import random_inputs

ROOT = Path(__file__).resolve().parents[1]


# ---- hidden sizes the index arithmetic cannot hold ----

def test_hidden_limit_holds_both_ways():
    block = rg.catalog.llama(rg.bf16)
    source = rg.emit(block, MAX_HIDDEN)
    assert f"constexpr int HIDDEN = {MAX_HIDDEN};" in source
    for bad in (MAX_HIDDEN + 1, 2**31, 0, -4, None, 4096.0, True):
        with pytest.raises(rg.PlanError, match=r"hidden must be an int in \[1, 1073741824\]"):
            rg.emit(block, bad)
    with pytest.raises(rg.PlanError, match="hidden must be an int"):
        rg.compile(block, hidden=None, backend="emu")


# ---- NaN and overflow ----

def max_block() -> rg.Block:
    b = rg.Block("maxima")
    x = b.input("x")
    b.output("y", rg.maximum(x, 0.5))
    b.output("amax", rg.row_max(rg.abs(x)))
    return b


@pytest.mark.parametrize("config", ["tpr=32,rows=4,vec=4", "tpr=128,rows=1,vec=4"])
def test_maxima_propagate_nan_like_torch(config):
    block = max_block()
    x = torch.randn(4, 512)
    x[1, 17] = float("nan")
    x[3, 500] = float("nan")
    got = rg.compile(block, 512, backend="emu", config=config)(x=x)
    want = rg.reference(block, x=x)
    assert torch.equal(got.y.isnan(), want.y.isnan()) and torch.equal(got.y.isnan(), x.isnan())
    assert torch.equal(got.amax.isnan(), torch.tensor([False, True, False, True]))
    finite = ~want.amax.isnan()
    assert torch.equal(got.amax[finite], want.amax[finite])


def test_the_fp8_scale_of_a_nan_row_is_nan():
    b = rg.Block("fp8_scale")
    h = b.input("x", rg.bf16) + b.input("residual", rg.bf16)
    y = rg.rms_norm(h, b.weight("weight", rg.bf16), eps=1e-6)
    b.output("scale", rg.maximum(rg.row_max(rg.abs(y)) / 448.0, 1e-12), dtype=rg.f32)
    args = random_inputs(b, (3,), 256)
    args["x"][1, 3] = float("nan")
    scale = rg.compile(b, 256, backend="emu")(**args).scale
    assert scale[1].isnan() and not scale[0].isnan() and not scale[2].isnan()


def row_sum_block() -> rg.Block:
    b = rg.Block("sums")
    b.output("total", rg.row_sum(b.input("x")), dtype=rg.f32)
    return b


def test_row_sums_accumulate_in_float32_and_may_overflow_where_the_exact_sum_does_not():
    # The documented guarantee: float32 partial sums in a fixed order. [3e38, 3e38, -3e38] overflows
    # in float32 (the first partial sum is inf) although the exact sum, 3e38, is finite; the reference
    # (float64 accumulation) gives the exact sum.
    block = row_sum_block()
    x = torch.tensor([[3e38, 3e38, -3e38]])
    assert math.isinf(rg.compile(block, 3, backend="emu")(x=x).total.item())
    assert rg.reference(block, x=x).total.item() == pytest.approx(3e38, rel=1e-6)


@pytest.mark.parametrize("hidden", [1, 1000, 4097])
def test_row_sums_stay_within_the_float32_accumulation_bound(hidden):
    block = row_sum_block()
    x = torch.randn(37, hidden) * torch.logspace(-3, 3, hidden)
    got = rg.compile(block, hidden, backend="emu")(x=x).total.double()
    exact = x.double().sum(-1)
    bound = max(hidden - 1, 1) * 2.0**-24 * x.double().abs().sum(-1) + 1e-30
    assert bool(((got - exact).abs() <= bound).all())


# ---- the warm call path enforces what the cold one does ----

def outcome(kernel: rg.Kernel, call: dict) -> str:
    try:
        kernel(**call)
        return "ran"
    except rg.LaunchError as exc:
        return f"LaunchError: {exc}"


def same_layout(call: dict) -> dict:
    """A good call with the layout of `call` (shapes, strides, dtypes), in memory of its own."""
    fresh = {k: torch.empty_strided(v.shape, v.stride(), dtype=v.dtype).copy_(v) if isinstance(v, torch.Tensor) else v
             for k, v in call.items()}
    if "residual_out" in fresh:
        fresh["residual_out"] = fresh["residual"]
    return fresh


def test_warm_and_cold_paths_accept_and_reject_the_same_calls():
    block = rg.catalog.llama_fp32_residual(rg.bf16)
    args = random_inputs(block, (6,), 256, seed=3)
    cases = {
        "residual_out is not the residual it overwrites": {**args, "residual_out": args["residual"].clone()},
        "y overlaps x": {**args, "y": args["x"]},
        "residual_out overlaps x": {**args, "x": args["residual"].view(torch.bfloat16)[:, :256]},
    }
    for what, call in cases.items():
        cold, warm = (rg.compile(block, 256, backend="emu") for _ in range(2))
        assert outcome(warm, same_layout(call)) == "ran", what  # now `call` takes the warm path
        expected = outcome(cold, call)
        assert expected.startswith("LaunchError"), what
        assert outcome(warm, call) == expected, what


def test_in_place_output_passed_as_another_tensor_is_rejected_on_the_warm_path():
    block = rg.catalog.llama_fp32_residual(rg.bf16)
    k = rg.compile(block, 128, backend="emu")
    args = random_inputs(block, (4,), 128)
    k(**args, residual_out=args["residual"])
    with pytest.raises(rg.LaunchError, match="written in place into input 'residual'"):
        k(**args, residual_out=args["residual"].clone())


# ---- gradients are never silently dropped ----

def test_inputs_that_require_grad_get_gradients_on_both_paths():
    block = rg.catalog.llama(rg.f32)
    k = rg.compile(block, 64, backend="emu")
    args = random_inputs(block, (2,), 64)
    k(**args)  # a warm layout first: the autograd call must not take the plain warm path
    weight = args["weight"].clone().requires_grad_(True)
    out = k(**{**args, "weight": weight})
    assert out.y.grad_fn is not None and out.residual_out.grad_fn is not None
    (out.y.sum()).backward()
    w2 = args["weight"].clone().requires_grad_(True)
    rg.reference(block, **{**args, "weight": w2}).y.sum().backward()
    torch.testing.assert_close(weight.grad, w2.grad, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        assert k(**{**args, "weight": weight}).y.grad_fn is None


def test_double_backward_is_a_clear_error():
    block = rg.catalog.llama(rg.f32)
    k = rg.compile(block, 64, backend="emu")
    args = random_inputs(block, (2,), 64)
    x = args["x"].requires_grad_(True)
    (g,) = torch.autograd.grad(k(**args).y.square().sum(), [x], create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate"):
        torch.autograd.grad(g.sum(), [x])


# ---- the cache ----

def test_a_truncated_emulator_library_is_rebuilt_not_loaded(tmp_path):
    # Another process left a truncated library (the crash this guards against gave SIGBUS on load).
    env = {**os.environ, "RESGEN_CACHE_DIR": str(tmp_path)}
    build = ("import resgen as rg; k = rg.compile(rg.catalog.llama(rg.f32), 96, backend='emu', "
             "config='tpr=32,rows=4,vec=4'); print(k._backend.path)")
    first = subprocess.run([sys.executable, "-c", build], env=env, capture_output=True, text=True, timeout=300)
    path = Path(first.stdout.strip())
    path.write_bytes(path.read_bytes()[:4096])
    check = ("import resgen as rg; print(rg.verify(rg.catalog.llama(rg.f32), 96, 3, backend='emu', "
             "config='tpr=32,rows=4,vec=4').ok)")
    again = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stdout.strip() == "True", again.stderr[-2000:]
    assert path.stat().st_size > 4096


def test_a_truncated_precompiled_header_is_rebuilt(tmp_path, monkeypatch):
    from resgen.runtime import emu

    monkeypatch.setenv("RESGEN_CACHE_DIR", str(tmp_path))
    folder = emu.precompiled_header_dir(emu.HOST_FLAGS)
    emu._precompiled_header.cache_clear()
    gch = folder / "simt_runtime.h.gch"
    gch.write_bytes(gch.read_bytes()[:1000])
    assert emu.precompiled_header_dir(emu.HOST_FLAGS) == folder
    assert gch.stat().st_size > 1000
    assert rg.verify(rg.catalog.gpt2(rg.f32), 80, 2, backend="emu", config="tpr=16,rows=8,vec=4").ok


@pytest.mark.parametrize("kind", ["a file", "read-only"])
def test_an_unusable_cache_folder_warns_once_and_falls_back(tmp_path, kind):
    if kind == "a file":
        cache = tmp_path / "cache"
        cache.write_text("not a folder")
    else:
        cache = Path("/proc/resgen-cache")  # read-only even for root
    env = {**os.environ, "RESGEN_CACHE_DIR": str(cache)}
    code = "import resgen as rg; r = rg.verify(rg.catalog.llama(), 64, 2, backend='emu'); print(r.ok)"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "True", result.stderr
    warnings = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(warnings) == 1 and "RESGEN_CACHE_DIR" in warnings[0] and "temporary cache" in warnings[0]


# ---- the modules follow their settings ----

def test_module_eps_changes_after_the_first_call_take_effect():
    from resgen.nn import FusedAddRMSNorm

    m = FusedAddRMSNorm(64, eps=1e-6, dtype=torch.float32)
    x, r = torch.randn(3, 64) * 1e-3, torch.randn(3, 64) * 1e-3
    with torch.no_grad():
        first, _ = m(x, r)
        m.eps = 1.0
        second, _ = m(x, r)
    want = torch.nn.functional.rms_norm(x + r, (64,), eps=1.0)
    torch.testing.assert_close(second, want, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(first, second)


# ---- every CLI subcommand: bad arguments give one line and exit 2, never a traceback ----

BAD_CALLS = [
    ["bench", "--from-json", "/nonexistent.json"],
    ["bench", "--from-json", "{garbage}"],
    ["bench", "--from-json", "{wrong_shape}"],
    ["bench", "--from-json", "{dir}"],
    ["tune", "--show", "--db", "{dir}"],
    ["tune", "--show", "--db", "{wrong_shape}"],
    ["tune", "--show", "--db", "{garbage}"],
    ["tune", "llama"],
    ["verify", "llama", "--hidden", "64", "--rows", "-5"],
    ["verify", "llama", "--hidden", "0"],
    ["verify", "llama", "--hidden", "64", "--config", "tpr=3"],
    ["verify", "llama", "--hidden", "64", "--backend", "cuda", "--sanitize"],
    ["ir", ":blk"],
    ["ir", "llama.py:"],
    ["ir", "{dir}"],
    ["ir", "{dir_rgir}"],
    ["ir", "no_such_module:blk"],
    ["ir", "{garbage_rgir}"],
    ["emit", "llama", "--hidden", "64", "-o", "/proc/nope/x.cu"],
    ["emit", "llama", "--hidden", "2147483648"],
    ["emit", "llama", "--hidden", "64", "--arch", "sm_1"],
    ["emit", "nope", "--hidden", "64"],
    ["inspect", "llama", "--hidden", "64", "--config", "cache=nowhere"],
    ["generate", "--check", "--out", "{garbage}"],
]


def bad_call_files(tmp_path: Path) -> dict[str, str]:
    files = {
        "garbage": tmp_path / "garbage.json", "wrong_shape": tmp_path / "shape.json", "dir": tmp_path / "d",
        "dir_rgir": tmp_path / "d.rgir", "garbage_rgir": tmp_path / "g.rgir",
    }
    files["garbage"].write_text("{not json")
    files["wrong_shape"].write_text("[1, 2, 3]")
    files["dir"].mkdir()
    files["dir_rgir"].mkdir()
    files["garbage_rgir"].write_text('block @b(hidden = H) {\n  %0 = const __import__("os") : scalar<f32>\n}\n')
    return {k: str(v) for k, v in files.items()}


@pytest.mark.parametrize("argv", BAD_CALLS, ids=[" ".join(a) for a in BAD_CALLS])
def test_bad_cli_calls_give_one_line_and_exit_2(argv, tmp_path, capsys, monkeypatch):
    from resgen.cli import main

    monkeypatch.chdir(tmp_path)
    files = bad_call_files(tmp_path)
    argv = [a.format(**files) for a in argv]
    assert main(argv) == 2  # an exception escaping main would be the traceback
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"resgen {argv[0]}: error:"), lines


@pytest.mark.parametrize("argv", [BAD_CALLS[0], ["ir", "{garbage_rgir}"]], ids=["bench", "ir"])
def test_a_bad_call_prints_no_traceback_from_the_command_line(argv, tmp_path):
    files = bad_call_files(tmp_path)
    argv = [a.format(**files) for a in argv]
    result = subprocess.run([sys.executable, "-m", "resgen.cli", *argv], capture_output=True, text=True,
                            timeout=300, cwd=tmp_path)
    assert "Traceback" not in result.stderr and result.returncode == 2, result.stderr
    assert len([ln for ln in result.stderr.splitlines() if ln.strip()]) == 1


def test_compile_refuses_a_dict_config():
    with pytest.raises(rg.PlanError, match="LaunchConfig"):
        rg.compile(rg.catalog.llama(), 64, backend="emu", config={"tpr": 32})
