"""Quantized outputs: float8 and int8 storage, the ops quantizers need, and the llama_* quant entries
(emu backend; every rule checked bitwise against torch or against a formula written here)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings

import resgen as rg
from resgen.verification import random_inputs, verify_kernel
from tests.strategies import random_blocks

QUANT = ["llama_fp8_static", "llama_fp8_dynamic", "llama_int8_dynamic", "llama_mxfp8", "llama_nvfp4"]
PER_TOKEN = QUANT[:3]  # a scale per tensor or per row: any hidden size
BLOCK_SCALED = {"llama_mxfp8": 32, "llama_nvfp4": 16}  # entry: columns per block scale
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
    return torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))


@pytest.mark.parametrize("dt", [rg.f8e4m3, rg.f8e5m2, rg.i8, rg.e8m0], ids=str)
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
@pytest.mark.parametrize("name", PER_TOKEN)
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


@pytest.mark.parametrize("name", PER_TOKEN)
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


@pytest.mark.parametrize("name", PER_TOKEN)
def test_quant_entries_verify_at_odd_sizes_with_poisoned_outputs(name):
    for hidden, rows in ((1, 2), (1000, 37), (4097, 3)):
        report = rg.verify(rg.catalog[name](rg.bf16), hidden, rows, backend="emu", seed=rows)
        assert report.ok, report.table()


@pytest.mark.parametrize("name", ["llama_int8_dynamic", "llama_nvfp4"])
def test_an_unwritten_element_without_nan_fails_verification(name):
    block = rg.catalog[name](rg.bf16)
    kernel = rg.compile(block, 256, backend="emu")
    assert verify_kernel(kernel, 5).ok
    # a kernel that writes nothing: int8 and e2m1 have no NaN to poison with, so they are poisoned twice
    kernel._backend.run = lambda *a, **k: None
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
            assert (resources.spill_stores, resources.spill_loads, resources.stack_frame) == (0, 0, 0), (arch, entry)
    for hidden in (2048, 16384, 65536):
        plan = rg.compile(block, hidden, backend="emu", arch="sm_90").plan
        ideal, reread = cost.traffic(plan, 32768)
        assert ideal + reread <= 1.01 * ideal, (hidden, reread / ideal)  # the row stays on chip


@pytest.mark.parametrize("quant", ["fp8_static", "fp8_dynamic", "int8_dynamic", "mxfp8", "nvfp4"])
def test_the_module_quantizes_like_its_catalog_entry_and_compiles(quant):
    from resgen.nn import QUANT, FusedAddRMSNorm

    module = FusedAddRMSNorm(256, eps=1e-5, quant=quant, dtype=torch.bfloat16)
    with torch.no_grad():
        module.weight.normal_(1.0, 0.2)
    x, r = torch.randn(6, 256).bfloat16(), torch.randn(6, 256).bfloat16()
    extra = (0.03,) if quant in ("fp8_static", "nvfp4") else ()
    scalar = {"fp8_static": "scale", "nvfp4": "global_scale"}.get(quant)
    with torch.no_grad():
        q, scale, residual = module(x, r, *extra)
        block = rg.catalog[QUANT[quant]](rg.bf16, eps=1e-5)
        want = rg.compile(block, 256, backend="emu")(x=x, residual=r, weight=module.weight,
                                                     **({scalar: 0.03} if extra else {}))
        compiled = torch.compile(lambda a, b: module(a, b, *extra), fullgraph=True, backend="aot_eager")(x, r)
    assert same_bits(q, want.q) and torch.equal(residual, want.residual_out)
    assert same_bits(scale, torch.tensor(0.03) if quant == "fp8_static" else want.scale)
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
    with torch.no_grad(), pytest.raises(rg.LaunchError, match="'scale'.*not 'mxfp8'"):
        FusedAddRMSNorm(64, quant="mxfp8", dtype=torch.bfloat16)(x, x, 2.0)
    with torch.no_grad(), pytest.raises(rg.ResgenError, match="multiple of its group size 16"):
        FusedAddRMSNorm(40, quant="nvfp4", dtype=torch.bfloat16)(x[:, :40], x[:, :40])


# ---- block-scaled formats: e8m0, packed e2m1, exponent, group reductions, llama_mxfp8, llama_nvfp4 ----

E2M1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]


def e2m1_rule(v: float) -> int:
    """The 4-bit code of v: the nearest e2m1 value, a tie to the even code, saturating at 6, NaN to
    +6 (no NaN in e2m1): written out here, not resgen's helper."""
    if math.isnan(v):
        return 7
    a = min(abs(v), 6.0)
    best = min(range(8), key=lambda c: (abs(E2M1[c] - a), c % 2))
    return best | (8 if math.copysign(1.0, v) < 0 else 0)


def packed(codes: list[int], rows: int) -> torch.Tensor:
    pairs = torch.tensor(codes, dtype=torch.uint8).reshape(rows, -1, 2)
    return (pairs[..., 0] | (pairs[..., 1] << 4)).view(torch.float4_e2m1fn_x2)


def test_e2m1_stores_round_to_nearest_even_and_pack_the_even_column_low():
    x = as_rows(torch.cat([edge_values(1 << 12), torch.tensor(
        [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 5.01, 6.0, 7.0, -0.25, -5.0, 0.2499, 4.99, 1e-45])]))
    b = rg.Block("store")
    b.output("y", b.input("x", rg.f32), dtype=rg.f4e2m1)
    got = rg.compile(b, 64, backend="emu")(x=x).y
    want = packed([e2m1_rule(v) for v in x.flatten().tolist()], x.shape[0])
    assert got.shape == (x.shape[0], 32) and got.dtype == torch.float4_e2m1fn_x2
    assert same_bits(got, want)
    assert same_bits(rg.reference(b, x=x).y, want)


def test_block_scale_formats_load_exactly():
    codes = torch.arange(256, dtype=torch.uint8)
    b = rg.Block("load")
    b.output("y", b.input("x", rg.e8m0) * 1.0, dtype=rg.f32)
    got = rg.compile(b, 64, backend="emu")(x=codes.view(torch.float8_e8m0fnu).reshape(4, 64)).y.flatten()
    assert torch.equal(got[:255], torch.tensor([2.0 ** (k - 127) for k in range(255)]))  # 2^-127 a subnormal
    assert got[255].isnan()
    b = rg.Block("load4")
    b.output("y", b.input("x", rg.f4e2m1) * 1.0, dtype=rg.f32)
    got = rg.compile(b, 512, backend="emu")(x=codes.view(torch.float4_e2m1fn_x2)[None]).y[0]
    signed = E2M1 + [-v for v in E2M1]
    assert got.tolist() == [signed[c] for byte in range(256) for c in (byte & 15, byte >> 4)]


def test_exponent_is_floor_log2_taken_exactly():
    k = torch.arange(-149, 128, dtype=torch.float64)
    just_below = torch.tensor([2.0**e * (1 - 2.0**-24) for e in range(-125, 128)], dtype=torch.float32)
    values = torch.cat([torch.pow(2.0, k).float(), just_below, torch.randn(3000).abs() * 1e3, torch.tensor(
        [0.0, -0.0, -1.0, math.inf, -math.inf, math.nan, 1e-45, 3e-39])])
    x = as_rows(values)
    b = rg.Block("exponent")
    b.output("y", rg.exponent(b.input("x", rg.f32)))
    got = rg.compile(b, 64, backend="emu")(x=x).y.flatten()[:values.numel()]

    def rule(v: float) -> float:
        if math.isnan(v) or v < 0:
            return math.nan
        if v == 0 or math.isinf(v):
            return -math.inf if v == 0 else math.inf
        return float(math.frexp(v)[1] - 1)

    want = torch.tensor([rule(v) for v in values.tolist()])
    assert torch.equal(got.nan_to_num(1234.0), want.nan_to_num(1234.0))
    assert torch.equal(rg.reference(b, x=x).y.flatten()[:values.numel()].nan_to_num(1234.0), want.nan_to_num(1234.0))
    assert torch.floor(torch.log2(just_below[-1:])).item() == 127  # what floor(log2(.)) would have said


@pytest.mark.parametrize("config", [None, "tpr=32,rows=4,vec=1,cache=registers", "tpr=64,rows=1,vec=2,cache=smem",
                                    "tpr=16,rows=2,vec=4,cache=global", "tpr=32,rows=1,vec=8,cache=registers,cluster=2"])
def test_group_reductions_match_torch_at_every_group_size(config):
    hidden, rows = 512, 37
    b = rg.Block("groups")
    x = b.input("x", rg.f16)
    for size in (1, 2, 4, 8, 16, 32):
        b.output(f"max{size}", rg.group_max(x, size), dtype=rg.f32)
        b.output(f"sum{size}", rg.group_sum(x, size), dtype=rg.f32)
    b.output("y", x - rg.group_max(x, 32), dtype=rg.f16)  # a group value broadcast back over its columns
    xs = torch.randn(rows, hidden).half()
    xs[3, 40] = math.nan  # a NaN makes its group's max NaN (torch.amax's rule)
    got = rg.compile(b, hidden, backend="emu", arch="sm_90", config=config)(x=xs)
    for size in (1, 2, 4, 8, 16, 32):
        groups = xs.float().reshape(rows, -1, size)
        assert torch.equal(got[f"max{size}"].nan_to_num(7.0), groups.amax(-1).nan_to_num(7.0)), size
        torch.testing.assert_close(got[f"sum{size}"], groups.double().sum(-1).float(), rtol=1e-6, atol=1e-5,
                                   equal_nan=True)
    want_y = (xs.float() - xs.float().reshape(rows, -1, 32).amax(-1).repeat_interleave(32, -1)).half()
    assert torch.equal(got.y.nan_to_num(7.0), want_y.nan_to_num(7.0))
    report = rg.verify(b, hidden, rows, backend="emu", arch="sm_90", config=config, sanitize=config is not None)
    assert report.ok and not report.hazards, report.table()


def test_group_errors_name_what_is_wrong():
    b = rg.Block("g")
    x = b.input("x", rg.f32)
    with pytest.raises(rg.VerifyError, match="size.*power of two"):
        rg.group_max(x, 24)
    with pytest.raises(rg.IRTypeError, match="16 and 32"):
        rg.group_max(x, 16) + rg.group_max(x, 32)
    with pytest.raises(rg.IRTypeError, match="must be a row"):
        rg.row_max(rg.group_max(x, 16))
    b.output("m", rg.group_max(x, 32))
    with pytest.raises(rg.IRTypeError, match="hidden=1000 is not a multiple of its group size 32"):
        rg.compile(b, 1000, backend="emu")
    with pytest.raises(rg.LaunchError, match="not a multiple of its group size 32"):
        rg.reference(b, x=torch.randn(2, 1000))
    with pytest.raises(rg.PlanError, match="spans 32 lanes at vec 1, over 8"):
        rg.compile(b, 256, backend="emu", config="tpr=8,rows=4,vec=1,cache=registers")
    with pytest.raises(rg.IRTypeError, match="only a row input or a row output"):
        rg.Block("w").weight("w", rg.f4e2m1)
    c = rg.Block("p")
    c.output("y", c.input("x", rg.f32), dtype=rg.f4e2m1)
    with pytest.raises(rg.IRTypeError, match="multiple of 2"):
        rg.compile(c, 7, backend="emu")
    with pytest.raises(rg.VerifyError, match="'m' is a group value, which has no gradient rule"):
        rg.grad(b)


def block_scaled_formula(name: str, args: dict) -> dict[str, torch.Tensor]:
    """MXFP8 (OCP MX v1.0, the shared exponent read from amax's float32 bits, as torchao's to_mx) and
    NVFP4 (TransformerEngine's two-level scales), written with torch here."""
    y = vllm_formula(name, args)["y"]
    rows = y.shape[0]
    if name == "llama_mxfp8":
        groups = y.reshape(rows, -1, 32)
        amax = groups.abs().amax(-1)
        exponent = (((amax.view(torch.int32) >> 23) & 0xFF) - 127 - 8).clamp(-127, 127)
        scale = (exponent + 127).to(torch.uint8).view(torch.float8_e8m0fnu)
        q = (groups / torch.pow(2.0, exponent.double()).float()[..., None]).clamp(-448, 448)
        return {"y": y, "scale": scale, "q": q.reshape(rows, -1).to(torch.float8_e4m3fn), "per": 32}
    g = args["global_scale"]
    groups = y.reshape(rows, -1, 16)
    scale = (groups.abs().amax(-1) / 6.0 * g).clamp(2.0**-6, 448).to(torch.float8_e4m3fn)
    v = (groups * (torch.tensor(g, dtype=torch.float32) / scale.float())[..., None]).clamp(-6, 6)
    codes = [e2m1_rule(x) for x in v.flatten().tolist()]
    return {"y": y, "scale": scale, "q": packed(codes, rows), "per": 16, "codes": torch.tensor(codes).reshape(rows, -1)}


def unpacked(q: torch.Tensor) -> torch.Tensor:
    from resgen.ir.dtypes import from_storage

    return from_storage(q, rg.f4e2m1) if q.dtype == torch.float4_e2m1fn_x2 else q.float()


@pytest.mark.parametrize("hidden, rows", [(4096, 64), (1024, 37), (96, 5)])
@pytest.mark.parametrize("name", list(BLOCK_SCALED))
def test_block_scaled_entries_follow_their_formula(name, hidden, rows):
    block = rg.catalog[name](rg.bf16)
    args = random_inputs(block, (rows,), hidden, seed=hidden)
    if name == "llama_nvfp4":
        args["global_scale"] = 0.75
    got = rg.compile(block, hidden, backend="emu")(**args)
    want = block_scaled_formula(name, args)
    reference = rg.reference(block, **args)
    assert same_bits(reference.scale, want["scale"]) and same_bits(reference.q, want["q"])
    # the kernel's y may differ from the formula's by a flipped bf16 rounding (a float32 row sum taken
    # in another order): that moves one element, or its block's scale if it is the block's maximum
    same_scale = got.scale.view(torch.uint8) == want["scale"].view(torch.uint8)
    assert same_scale.float().mean().item() >= 0.99, int((~same_scale).sum())
    per = want["per"]
    blocks_ok = same_scale.repeat_interleave(per, -1)
    q, wq = unpacked(got.q)[blocks_ok], unpacked(want["q"])[blocks_ok]
    differ = q != wq
    assert differ.float().mean().item() <= 0.005, int(differ.sum())
    if name == "llama_mxfp8":
        step = 2.0**-3 * wq.abs().clamp_min(2**-6)  # one e4m3 code
    else:
        step = torch.where(wq.abs() < 2, 0.5, torch.where(wq.abs() < 4, 1.0, 2.0))  # one e2m1 code
    assert bool(((q - wq).abs() <= step + 1e-12)[differ].all())


@pytest.mark.parametrize("name", list(BLOCK_SCALED))
def test_block_scaled_dequantized_outputs_are_within_the_formats_error_bound(name):
    block = rg.catalog[name](rg.bf16)
    args = random_inputs(block, (33,), 2048, seed=5)
    if name == "llama_nvfp4":
        args["global_scale"] = 448 * 6 / 5.0  # TransformerEngine's encode scale for an amax of about 5
    got = rg.compile(block, 2048, backend="emu")(**args)
    y = vllm_formula(name, args)["y"]
    per = BLOCK_SCALED[name]
    step = got.scale.float().repeat_interleave(per, -1)  # what one unit of q is worth
    if name == "llama_nvfp4":
        step = step / args["global_scale"]
        half = torch.maximum(y.abs() * 0.25, 0.25 * step)  # e2m1: half a code is at most a quarter of the value
        limit = 6.0
    else:  # e4m3: half an ulp (2^-4 relative) of normal values, 2^-10 absolute in the subnormal range
        half = torch.maximum(y.abs() * 2.0**-4, 2.0**-10 * step)
        limit = 448.0
    error = (unpacked(got.q) * step - y).abs()
    bound = half * (1 + 1e-5) + (y.abs() / step - limit).clamp_min(0) * step  # beyond the largest code it saturates
    assert bool((error <= bound).all()), (error - bound).max()


@pytest.mark.parametrize("name", list(BLOCK_SCALED))
def test_block_scaled_entries_verify_at_odd_sizes_and_reject_partial_blocks(name):
    per = BLOCK_SCALED[name]
    block = rg.catalog[name](rg.bf16)
    for hidden, rows in ((per, 1), (3 * per, 37), (129 * per, 3)):  # 129 blocks: no power of two
        report = rg.verify(block, hidden, rows, backend="emu", seed=rows)
        assert report.ok, report.table()
    with pytest.raises(rg.IRTypeError, match=f"not a multiple of its group size {per}"):
        rg.compile(block, 1000, backend="emu")


@pytest.mark.parametrize("name", list(BLOCK_SCALED))
def test_block_scaled_entries_give_the_same_bits_on_misaligned_rows(name):
    block = rg.catalog[name](rg.bf16)
    kernel = rg.compile(block, 1024, backend="emu")
    args = random_inputs(block, (5,), 1024, seed=9)
    aligned = kernel(**args)
    shifted = torch.empty(5 * 1024 + 1, dtype=torch.bfloat16)[1:].view(5, 1024)  # an odd address: the narrow entry
    shifted.copy_(args["x"])
    misaligned = kernel(**{**args, "x": shifted})
    assert all(same_bits(misaligned[k], aligned[k]) for k in ("q", "scale", "residual_out"))


@pytest.mark.parametrize("config", [None, "tpr=32,rows=4,vec=1,cache=registers", "tpr=64,rows=1,vec=2,cache=smem",
                                    "tpr=128,rows=1,vec=8,cache=global", "tpr=32,rows=1,vec=8,cache=smem,cluster=2",
                                    "tpr=32,rows=4,vec=4,cache=registers,persist=2"])
def test_group_values_anywhere_in_a_block_verify_clean(config):
    # nested group reductions (two column loops before the main one), a group after a row reduction,
    # a group of a dropout, a group value times a weight (a row), a group output in e8m0
    b = rg.Block("nested")
    x, r, w = b.input("x", rg.bf16), b.input("residual", rg.bf16), b.weight("w", rg.bf16)
    h = x + r
    centred = h - rg.group_max(rg.abs(h), 8)
    b.output("a", centred * 1.0)
    b.output("g2", rg.group_sum(centred * centred, 16), dtype=rg.f32)
    y = rg.rms_norm(h, w) * rg.group_max(rg.abs(h), 16)
    b.output("y", y)
    b.output("g3", rg.group_max(rg.dropout(h, 0.1), 4) * w)
    b.output("gm", rg.group_max(y, 32), dtype=rg.e8m0)
    report = rg.verify(b, 1024, 37, backend="emu", arch="sm_90", config=config, sanitize=True, seed=3)
    assert report.ok and not report.hazards, report.table()


@settings(max_examples=15, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(block=random_blocks(groups=True))
def test_random_blocks_with_group_reductions_verify_on_emu(block):
    for hidden, rows in ((96, 5), (1024, 3)):
        report = rg.verify(block, hidden, rows, backend="emu", seed=hidden)
        assert report.ok, report.table()


def group_norm_block() -> rg.Block:
    """A normalization over groups of 32 columns (GroupNorm along hidden), plus a group maximum."""
    b = rg.Block("groupnorm")
    x, r, w = b.input("x", rg.bf16), b.input("residual", rg.bf16), b.weight("w", rg.bf16)
    h = x + r
    centred = h - rg.group_sum(h, 32) * (1 / 32)
    rstd = rg.rsqrt(rg.group_sum(centred * centred, 32) * (1 / 32) + 1e-5)
    b.output("residual_out", h)
    b.output("y", centred * rstd * w + rg.group_max(rg.abs(h), 16) * 0.1)
    return b


@pytest.mark.parametrize("config", [None, "tpr=32,rows=4,vec=1,cache=registers", "tpr=64,rows=1,vec=4,cache=smem"])
def test_group_reductions_differentiate_like_torch(config):
    # group_sum's adjoint broadcasts back over the group; group_max's is shared by the group's maxima
    for hidden, rows in ((1024, 37), (96, 5)):
        try:
            report = rg.verify(group_norm_block(), hidden, rows, backend="emu", grad=True, config=config, seed=1)
        except rg.PlanError:
            continue  # (the smem config's 64 threads x vec 4 is over twice hidden 96)
        assert report.ok, report.table()


def test_a_group_norm_trains_through_autograd():
    block = group_norm_block()
    kernel = rg.compile(block, 256, backend="emu")
    args = random_inputs(block, (6,), 256, seed=2)
    leaves = {k: v.float().requires_grad_() for k, v in args.items()}
    mine = {k: v.detach().clone().to(args[k].dtype).requires_grad_() for k, v in leaves.items()}
    kernel(**mine).y.float().square().sum().backward()
    rg.reference(block, **{k: v.to(args[k].dtype) for k, v in leaves.items()}).y.float().square().sum().backward()
    for k in leaves:
        torch.testing.assert_close(mine[k].grad.float(), leaves[k].grad, rtol=0.05, atol=0.05)
    with pytest.raises(rg.VerifyError, match="'scale' is a group value"):
        rg.grad(rg.catalog.llama_mxfp8(rg.bf16))  # a group output has no cotangent: the quantizers stay inference-only


def test_casts_to_block_scale_dtypes_round_in_the_middle_of_a_block():
    b = rg.Block("mid")
    x = b.input("x", rg.f32)
    b.output("y", rg.cast(x * 3.0, rg.f4e2m1) + rg.cast(x, rg.e8m0), dtype=rg.bf16)  # rounded, not stored packed
    xs = torch.randn(7, 64)
    codes = torch.tensor([e2m1_rule(v) for v in (xs * 3.0).flatten().tolist()]).reshape(7, 64)
    values = torch.tensor(E2M1 + [-v for v in E2M1])[codes]
    want = (values + xs.to(torch.float8_e8m0fnu).float()).bfloat16()
    assert torch.equal(rg.compile(b, 64, backend="emu")(x=xs).y, want)
    assert rg.verify(b, 1000, 5, backend="emu").ok
