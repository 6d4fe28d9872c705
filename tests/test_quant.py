"""Quantized outputs: float8 and int8 storage, the ops quantizers need, and the llama_* quant entries
(emu backend; every rule checked bitwise against torch or against a formula written here)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import resgen as rg
from resgen.verification import random_inputs, verify_kernel

QUANT = ["llama_fp8_static", "llama_fp8_dynamic", "llama_int8_dynamic"]
SPECIAL = [0.0, -0.0, math.inf, -math.inf, math.nan, -math.nan, 448, 449, 464, 465, 480, -464, 57344, 57345,
           61439, 61440, -61440, 65536, 2**-6, 2**-9, 2**-10, 3 * 2**-11, 2**-14, 2**-16, 2**-17, 3 * 2**-18,
           1e-40, 0.5, 1.5, 2.5, -2.5, 126.5, 127.5, -128.5, -129, 200, -3e38]


def edge_values(count: int = 1 << 16) -> torch.Tensor:
    """Random float32 bit patterns (every exponent, NaNs and infinities among them) and the edges."""
    bits = np.random.default_rng(0).integers(0, 2**32, count, dtype=np.uint64).astype(np.uint32)
    return torch.cat([torch.from_numpy(bits.view(np.float32)), torch.tensor(SPECIAL, dtype=torch.float32)])


def as_rows(values: torch.Tensor, hidden: int = 64) -> torch.Tensor:
    rows = -(-values.numel() // hidden)
    return torch.cat([values, torch.zeros(rows * hidden - values.numel())]).reshape(rows, hidden)


def int8_rule(v: torch.Tensor) -> torch.Tensor:
    """Round half to even (Python's round), saturate to [-128, 127], NaN to 0: written out here, not
    resgen's helper."""
    out = torch.empty(v.shape, dtype=torch.int8)
    for k, x in enumerate(v.flatten().tolist()):
        out.view(-1)[k] = 0 if math.isnan(x) else int(max(-128.0, min(127.0, x if math.isinf(x) else round(x))))
    return out


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


@pytest.mark.parametrize("dt", [rg.f8e4m3, rg.f8e5m2, rg.i8], ids=str)
def test_stores_round_like_torch_bit_for_bit(dt):
    x = as_rows(edge_values())
    b = rg.Block("store")
    b.output("y", b.input("x", rg.f32), dtype=dt)
    got = rg.compile(b, 64, backend="emu")(x=x).y
    want = int8_rule(x) if dt is rg.i8 else x.to(dt.torch_dtype)
    assert same_bits(got, want)
    assert same_bits(rg.reference(b, x=x).y, want)


@pytest.mark.parametrize("dt", [rg.f8e4m3, rg.f8e5m2], ids=str)
def test_float8_loads_and_casts_are_exact_and_keep_a_nans_sign(dt):
    every = torch.arange(256, dtype=torch.uint8).view(dt.torch_dtype)  # every float8 value
    b = rg.Block("load")
    xv = b.input("x", dt)
    b.output("y", xv * 1.0, dtype=rg.f32)
    b.output("z", rg.cast(xv * 1.0, dt), dtype=rg.f32)
    out = rg.compile(b, 64, backend="emu")(x=every.reshape(4, 64))
    want = every.float().reshape(4, 64)
    nan = want.isnan()
    assert torch.equal(out.y.isnan(), nan) and torch.equal(out.y[~nan], want[~nan])
    assert torch.equal(out.y[nan].signbit(), want[nan].signbit())
    assert torch.equal(out.z.nan_to_num(7.0), want.nan_to_num(7.0))


def test_int8_is_not_torchs_wrapping_cast():
    x = torch.tensor([[200.0, -200.5, 2.5, -0.5, 3.5, math.nan, 127.49, -128.6]])
    b = rg.Block("q")
    b.output("y", rg.cast(b.input("x", rg.f32), rg.i8) * 1.0, dtype=rg.i8)
    got = rg.compile(b, 8, backend="emu")(x=x).y
    assert got.tolist() == [[127, -128, 2, 0, 4, 0, 127, -128]]
    assert x.to(torch.int8).tolist()[0][:2] == [-56, 56]  # what torch would have given


OPS = {
    "minimum": (lambda v: rg.minimum(v, 0.25), lambda t: torch.minimum(t, torch.tensor(0.25))),
    "clamp": (lambda v: rg.clamp(v, -1.5, 2.0), lambda t: torch.clamp(t, -1.5, 2.0)),
    "round": (rg.round, torch.round),
    "floor": (rg.floor, torch.floor),
    "log2": (lambda v: rg.log2(rg.abs(v)), lambda t: torch.log2(t.abs())),
    "exp2": (lambda v: rg.exp2(rg.floor(v)), lambda t: torch.exp2(torch.floor(t))),
}


@pytest.mark.parametrize("op", list(OPS))
def test_new_ops_match_torch_and_propagate_nan(op):
    build, torch_op = OPS[op]
    values = torch.cat([torch.randn(4000) * 50, torch.tensor([math.nan, -math.nan, math.inf, -math.inf, 0.5, 1.5,
                                                              2.5, -2.5, 0.25, 2.0, -1.5, 1.0, 8.0, 0.0])])
    x = as_rows(values)
    b = rg.Block(op)
    b.output("y", build(b.input("x", rg.f32)))
    got, want = rg.compile(b, 64, backend="emu")(x=x).y, torch_op(x)
    assert torch.equal(got.isnan(), want.isnan())
    if op == "log2":  # libm's and torch's log2 may differ in the last place; exact at powers of two
        torch.testing.assert_close(got, want, rtol=2e-7, atol=0, equal_nan=True)
        powers = torch.tensor([2.0**k for k in range(-20, 21)])
        assert torch.equal(rg.compile(b, 41, backend="emu")(x=powers[None]).y[0], torch.arange(-20.0, 21.0))
    else:
        assert torch.equal(got.nan_to_num(0.0), want.nan_to_num(0.0))


def test_ops_print_parse_and_differentiate():
    b = rg.Block("ops")
    x = b.input("x", rg.f32)
    b.output("y", rg.exp2(rg.clamp(x, -3.0, 3.0)) + rg.log2(rg.abs(x) + 1.0) + rg.round(x) + rg.floor(x))
    from resgen.ir.parser import parse_block
    from resgen.ir.printer import print_block

    assert print_block(parse_block(print_block(b))) == print_block(b)
    report = rg.verify(b, 100, 7, backend="emu", grad=True)
    assert report.ok, report.table()


def vllm_formula(name: str, args: dict, eps: float = 1e-6) -> dict[str, torch.Tensor]:
    """The anchors' arithmetic, written with torch here (not resgen's reference)."""
    dt = args["x"].dtype
    z = (args["x"] + args["residual"]).to(dt)  # scalar_t add
    f = z.float()
    rstd = torch.rsqrt(f.pow(2).sum(-1, keepdim=True, dtype=torch.float64).float() / f.shape[-1] + eps)
    y = (f * rstd).to(dt).float() * args["weight"].float()
    out = {"residual_out": z, "y": y}
    if name == "llama_fp8_static":
        inv = torch.tensor(1.0, dtype=torch.float32) / torch.tensor(args["scale"], dtype=torch.float32)
        out["q"] = (y * inv).clamp(-448, 448).to(torch.float8_e4m3fn)
    elif name == "llama_fp8_dynamic":
        scale = torch.maximum(y.abs().amax(-1) / 448.0, torch.tensor(1 / (448 * 512), dtype=torch.float32))
        out["scale"], out["q"] = scale, (y / scale[:, None]).clamp(-448, 448).to(torch.float8_e4m3fn)
    else:
        scale = y.abs().amax(-1) / 127.0
        out["scale"], out["q"] = scale, int8_rule(y / scale[:, None])
    return out


@pytest.mark.parametrize("hidden, rows", [(4096, 64), (1000, 37), (4097, 5), (1, 3)])
@pytest.mark.parametrize("name", QUANT)
def test_quant_entries_follow_their_anchor_formula(name, hidden, rows):
    block = rg.catalog[name](rg.bf16)
    args = random_inputs(block, (rows,), hidden, seed=hidden)
    got = rg.compile(block, hidden, backend="emu")(**args)
    want = vllm_formula(name, args)
    reference = rg.reference(block, **args)  # resgen's reference, float64 sums: the same rule
    for key in reference:
        assert same_bits(reference[key], want[key] if key != "scale" else want[key].float()), key
    assert torch.equal(got.residual_out, want["residual_out"])
    # y's row sum is taken in a different float32 order than here: a rare bf16 rounding of the
    # normalized value may flip, which moves one element (and, if it is the row's maximum, the scale)
    if "scale" in want:
        same_scale = got.scale == want["scale"]
        assert same_scale.float().mean().item() >= 0.9, same_scale
        rows_ok = same_scale
    else:
        rows_ok = torch.ones(rows, dtype=torch.bool)
    q, wq = got.q[rows_ok].float(), want["q"][rows_ok].float()
    differ = q != wq
    assert differ.float().mean().item() <= 0.005, int(differ.sum())
    step = 1.0 if name == "llama_int8_dynamic" else 2.0**-3 * wq.abs().clamp_min(2**-6)
    assert bool(((q - wq).abs() <= step + 1e-12)[differ].all())  # one code apart at most


@pytest.mark.parametrize("name", QUANT)
def test_dequantized_outputs_are_within_the_formats_error_bound(name):
    block = rg.catalog[name](rg.bf16)
    args = random_inputs(block, (33,), 2048, seed=3)
    got = rg.compile(block, 2048, backend="emu")(**args)
    y = vllm_formula(name, args)["y"]
    scale = torch.tensor(args["scale"]) if name == "llama_fp8_static" else got.scale[:, None]
    error = (got.q.float() * scale - y).abs()
    if name == "llama_int8_dynamic":
        bound = scale / 2 * (1 + 1e-5)  # half a step
    else:  # e4m3: half an ulp (2^-4 relative) of normal values, 2^-10 absolute in the subnormal range
        bound = torch.maximum(y.abs() * 2.0**-4, 2.0**-10 * scale) * (1 + 1e-5) + (
            (y.abs() / scale - 448).clamp_min(0) * scale)  # static: beyond 448 it saturates
    assert bool((error <= bound).all()), (error - bound).max()


@pytest.mark.parametrize("name", QUANT)
def test_quant_entries_verify_at_odd_sizes_with_poisoned_outputs(name):
    for hidden, rows in ((1, 2), (1000, 37), (4097, 3)):
        report = rg.verify(rg.catalog[name](rg.bf16), hidden, rows, backend="emu", seed=rows)
        assert report.ok, report.table()


def test_an_unwritten_int8_element_fails_verification():
    block = rg.catalog.llama_int8_dynamic(rg.bf16)
    kernel = rg.compile(block, 256, backend="emu")
    assert verify_kernel(kernel, 5).ok
    kernel._backend.run = lambda *a, **k: None  # a kernel that writes nothing: int8 has no NaN to poison with
    report = verify_kernel(kernel, 5)
    assert not report.ok
    assert not next(c for c in report.outputs if c.name == "q").ok


@pytest.mark.parametrize("name", QUANT)
def test_quant_kernels_compile_for_every_arch_without_spills_and_move_no_extra_bytes(name):
    from resgen.codegen import cost

    block = rg.catalog[name](rg.bf16)
    for arch in ("sm_80", "sm_90", "sm_100"):
        kernel = rg.compile(block, 4096, backend="emu", arch=arch)
        for entry, resources in kernel.resources.items():
            assert resources.spill_stores == 0 and resources.spill_loads == 0, (arch, entry)
    for hidden in (2048, 16384, 65536):
        plan = rg.compile(block, hidden, backend="emu", arch="sm_90").plan
        ideal, reread = cost.traffic(plan, 32768)
        assert ideal + reread <= 1.01 * ideal, (hidden, reread / ideal)  # the row stays on chip


@pytest.mark.parametrize("quant", ["fp8_static", "fp8_dynamic", "int8_dynamic"])
def test_the_module_quantizes_like_its_catalog_entry_and_compiles(quant):
    from resgen.nn import QUANT, FusedAddRMSNorm

    module = FusedAddRMSNorm(256, eps=1e-5, quant=quant, dtype=torch.bfloat16)
    with torch.no_grad():
        module.weight.normal_(1.0, 0.2)
    x, r = torch.randn(6, 256).bfloat16(), torch.randn(6, 256).bfloat16()
    extra = (0.03,) if quant == "fp8_static" else ()
    with torch.no_grad():
        q, scale, residual = module(x, r, *extra)
        block = rg.catalog[QUANT[quant]](rg.bf16, eps=1e-5)
        want = rg.compile(block, 256, backend="emu")(x=x, residual=r, weight=module.weight,
                                                     **({"scale": 0.03} if extra else {}))
        compiled = torch.compile(lambda a, b: module(a, b, *extra), fullgraph=True, backend="aot_eager")(x, r)
    assert same_bits(q, want.q) and torch.equal(residual, want.residual_out)
    assert torch.equal(scale, torch.tensor(0.03) if extra else want.scale)
    assert all(same_bits(a.reshape(-1), b.reshape(-1)) for a, b in zip(compiled, (q, scale, residual), strict=True))


def test_quant_module_errors_name_the_argument():
    from resgen.nn import FusedAddRMSNorm

    with pytest.raises(ValueError, match="quant"):
        FusedAddRMSNorm(64, quant="nvfp8")
    module = FusedAddRMSNorm(64, quant="fp8_static", dtype=torch.bfloat16)
    x = torch.randn(2, 64).bfloat16()
    with torch.no_grad(), pytest.raises(rg.LaunchError, match="'scale'"):
        module(x, x)
    with torch.no_grad(), pytest.raises(rg.LaunchError, match="share one dtype"):
        module(x, x.float(), 1.0)
