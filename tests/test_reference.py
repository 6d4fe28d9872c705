"""The reference interpreter against torch's own norms and hand-written formulas, and its dropout."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import resgen as rg
from resgen.philox import keep_mask, philox4x32
from resgen.verification import random_inputs
from tests.conftest import DTYPES, TRAINABLE

TOL = {rg.f32: 2e-5, rg.f16: 2e-3, rg.bf16: 1.6e-2}


def _ln(h, w, b, eps):
    return F.layer_norm(h, (h.shape[-1],), w.float(), b.float(), eps)


def _rms(h, w, eps, offset=0.0):
    return F.rms_norm(h, (h.shape[-1],), offset + w.float(), eps)


def _dropout(v, p, seed, offset):
    rows = v.numel() // v.shape[-1]
    keep = torch.from_numpy(keep_mask(rows, v.shape[-1], p, seed, offset)).reshape(v.shape)
    return torch.where(keep, v / (1 - p), torch.zeros(()))


def hand_written(name: str, a: dict, seed: int) -> dict[str, torch.Tensor]:
    f = {k: (v.float() if isinstance(v, torch.Tensor) else v) for k, v in a.items()}
    if name in ("llama", "llama_fp32_residual"):
        h = f["x"] + f["residual"]
        return {"residual_out": h, "y": _rms(h, f["weight"], 1e-6)}
    if name in ("gemma", "gemma_fp32_residual"):
        h = f["x"] + f["residual"]
        return {"residual_out": h, "y": _rms(h, f["weight"], 1e-6, 1.0)}
    if name == "gpt2":
        h = f["x"] + f["residual"]
        return {"residual_out": h, "y": _ln(h, f["weight"], f["bias"], 1e-5)}
    if name == "bert":
        h = f["residual"] + _dropout(f["x"] + f["bias"], 0.1, seed, 0)
        return {"y": _ln(h, f["weight"], f["ln_bias"], 1e-12)}
    if name == "deepnorm":
        return {"y": _ln(f["alpha"] * f["residual"] + f["x"], f["weight"], f["bias"], 1e-5)}
    if name == "gemma2_sandwich":
        h = f["residual"] + _rms(f["x"], f["post_weight"], 1e-6, 1.0)
        return {"residual_out": h, "y": _rms(h, f["pre_weight"], 1e-6, 1.0)}
    if name == "parallel_residual":
        h = f["residual"] + f["attn"] + f["mlp"]
        return {"residual_out": h, "y": _ln(h, f["weight"], f["bias"], 1e-5)}
    raise KeyError(name)


@pytest.mark.parametrize("name", TRAINABLE)  # the quantized entries: tests/test_quant.py, against vLLM's formulas
@pytest.mark.parametrize("dt", DTYPES, ids=str)
@pytest.mark.parametrize("hidden", [1, 1000, 4096, 4097])
@pytest.mark.parametrize("lead", [(1,), (37,), (3, 5)], ids=["rows1", "rows37", "3d"])
def test_reference_matches_torch_and_hand_written_formulas(name, dt, hidden, lead):
    block = rg.catalog[name](dt)
    args = random_inputs(block, lead, hidden, seed=hidden)
    got = rg.reference(block, **args, seed=11)
    want = hand_written(name, args, seed=11)
    assert set(got) == set(want)
    for key, value in got.items():
        out = next(o for o in block.outputs if o.name == key)
        assert value.dtype == out.dtype.torch_dtype and value.shape == (*lead, hidden)
        expected = want[key].to(out.dtype.torch_dtype).float()
        tol = TOL[out.dtype]
        torch.testing.assert_close(value.float(), expected, rtol=tol, atol=tol)


def test_reference_accepts_strided_rows_and_returns_fresh_tensors():
    block = rg.catalog.llama(rg.f32)
    big = torch.randn(8, 96)
    x, r, w = big[::2, :64], torch.randn(4, 64), torch.randn(64)
    out = rg.reference(block, x=x, residual=r, weight=w)
    torch.testing.assert_close(out.residual_out, x + r)
    assert out["y"] is out.y


def test_reference_row_scalar_outputs():
    b = rg.Block("stats")
    x = b.input("x")
    b.output("mean", rg.row_mean(x))
    b.output("amax", rg.row_max(rg.abs(x)))
    b.output("rstd", rg.rsqrt(rg.row_mean(x * x) + 1e-6))
    x_t = torch.randn(2, 3, 50)
    out = rg.reference(b, x=x_t)
    torch.testing.assert_close(out.mean, x_t.mean(-1))
    torch.testing.assert_close(out.amax, x_t.abs().amax(-1))
    torch.testing.assert_close(out.rstd, torch.rsqrt(x_t.pow(2).mean(-1) + 1e-6))


def test_cast_rounds_like_torch_to():
    b = rg.Block("c")
    x = b.input("x")
    b.output("y", rg.cast(x, rg.bf16) * 3.0, dtype=rg.f32)
    x_t = torch.randn(4, 33)
    torch.testing.assert_close(rg.reference(b, x=x_t).y, x_t.to(torch.bfloat16).float() * 3.0)


@pytest.mark.parametrize("bad, message", [
    (dict(x=torch.randn(2, 8), residual=torch.randn(2, 8)), "missing argument"),
    (dict(x=torch.randn(2, 8), residual=torch.randn(2, 8), weight=torch.randn(8), w=1), "unknown argument"),
    (dict(x=torch.randn(2, 8), residual=torch.randn(2, 9), weight=torch.randn(8)), "'residual' must have shape"),
    (dict(x=torch.randn(2, 8), residual=torch.randn(2, 8), weight=torch.randn(7)), "'weight' must have shape"),
    (dict(x=torch.randn(2, 8).half(), residual=torch.randn(2, 8), weight=torch.randn(8)), "'x' must have dtype"),
    (dict(x=[1.0], residual=torch.randn(2, 8), weight=torch.randn(8)), "'x' must be a torch.Tensor"),
    (dict(x=torch.randn(2, 8), residual=torch.randn(2, 8), weight=torch.randn(8), seed=-1), "'seed'"),
])
def test_reference_argument_errors_name_the_argument(bad, message):
    with pytest.raises(rg.LaunchError, match=message):
        rg.reference(rg.catalog.llama(rg.f32), **bad)


# Known-answer vectors published with Random123 (kat_vectors, philox4x32_10).
PHILOX_KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("counter, key, expected", PHILOX_KAT)
def test_philox_matches_published_vectors(counter, key, expected):
    assert tuple(int(w) for w in philox4x32(counter, key)) == expected


def _bert_dropout_only() -> rg.Block:
    b = rg.Block("drop")
    b.output("y", rg.dropout(b.input("x"), p=0.25))
    return b


def test_dropout_is_reproducible_from_seed_and_offset():
    block, x = _bert_dropout_only(), torch.randn(64, 300) + 5.0
    a = rg.reference(block, x=x, seed=7, offset=3).y
    assert torch.equal(a, rg.reference(block, x=x, seed=7, offset=3).y)
    assert not torch.equal(a, rg.reference(block, x=x, seed=8, offset=3).y)
    assert not torch.equal(a, rg.reference(block, x=x, seed=7, offset=4).y)
    kept = a != 0
    torch.testing.assert_close(a[kept], x[kept] / 0.75)


def test_dropout_keep_rate_is_one_minus_p():
    mask = keep_mask(512, 1024, 0.25, seed=123, offset=0)
    rate = mask.mean()
    assert abs(rate - 0.75) < 4 * np.sqrt(0.75 * 0.25 / mask.size)
    assert 0.70 < mask[0].mean() < 0.80 and 0.70 < mask[:, 0].mean() < 0.80


def test_two_dropout_sites_draw_independent_masks():
    b = rg.Block("two")
    x = b.input("x")
    b.output("a", rg.dropout(x, 0.5))
    b.output("b", rg.dropout(x, 0.5))
    out = rg.reference(b, x=torch.rand(16, 256) + 1.0, seed=5)
    assert not torch.equal(out.a == 0, out.b == 0)


def test_compare_fails_an_unwritten_element_anywhere_and_matches_a_direct_computation():
    from resgen.verification import COMPARE_CHUNK, compare

    gen = torch.Generator().manual_seed(3)
    ref = torch.randn(3, COMPARE_CHUNK // 2 + 7, generator=gen, dtype=torch.float64)
    out = (ref + 1e-3 * torch.randn(ref.shape, generator=gen, dtype=torch.float64)).to(torch.bfloat16)
    check = compare("y", rg.bf16, out, ref)
    diff = out.double() - ref
    assert check.max_abs == diff.abs().max().item()
    assert check.rel_norm == pytest.approx((diff.norm() / ref.norm()).item(), rel=1e-12)
    assert check.ok
    for where in (0, COMPARE_CHUNK, ref.numel() - 1):  # either side of a chunk boundary, and the last
        poisoned = out.clone()
        poisoned.view(-1)[where] = float("nan")
        assert not compare("y", rg.bf16, poisoned, ref).ok
    ref[1, 5], out[1, 5] = float("inf"), float("inf")  # the same infinity is no error; a NaN for it is
    assert compare("y", rg.bf16, out, ref).ok
    out[1, 5] = float("nan")
    assert not compare("y", rg.bf16, out, ref).ok
    out[1, 5] = 1.0  # a finite value for an infinity is an error too
    assert not compare("y", rg.bf16, out, ref).ok
    ref[1, 5], out[1, 5] = float("nan"), float("nan")  # NaN for NaN is no error
    assert compare("y", rg.bf16, out, ref).ok


def test_catalog_parameters_change_the_block_and_its_reference():
    # eps, offset and residual dtype reach the reference (checked against the formulas above); bert in
    # eval has no dropout; the defaults build the very blocks the catalog builds without them.
    args = random_inputs(rg.catalog.llama(rg.f32), (5,), 64, seed=1)
    got = rg.reference(rg.catalog.llama(rg.f32, eps=0.5, offset=0.25), **args)
    torch.testing.assert_close(got.y, _rms(args["x"] + args["residual"], args["weight"], 0.5, 0.25), rtol=1e-5, atol=1e-5)
    assert rg.catalog.llama(rg.bf16, eps=1e-6, offset=0.0).key == rg.catalog.llama(rg.bf16).key
    mixed = rg.catalog.llama(rg.bf16, residual_dtype=rg.f32)
    assert [p.dtype for p in mixed.params_of("input")] == [rg.bf16, rg.f32]
    assert {o.name: o.dtype for o in mixed.outputs} == {"residual_out": rg.f32, "y": rg.bf16}
    eval_bert = rg.catalog.bert(rg.f32, training=False)
    assert not any(n.op == "dropout" for n in eval_bert.body)
    bargs = random_inputs(eval_bert, (4,), 32, seed=2)
    h = bargs["residual"] + (bargs["x"] + bargs["bias"])
    torch.testing.assert_close(rg.reference(eval_bert, **bargs).y, _ln(h, bargs["weight"], bargs["ln_bias"], 1e-12),
                               rtol=1e-5, atol=1e-5)
    assert rg.catalog.gemma(rg.bf16).params_of("input")[1].dtype == rg.bf16  # HF Gemma: the model dtype
    assert rg.catalog.gemma_fp32_residual(rg.bf16).params_of("input")[1].dtype == rg.f32


@pytest.mark.parametrize("params, message", [
    ({"p": 0.1}, "'p' is not a parameter of this block; it takes: eps, offset, residual_dtype"),
    ({"eps": 0.0}, "'eps' must be > 0"),
    ({"eps": float("nan")}, "'eps' must be a finite number"),
    ({"offset": "1"}, "'offset' must be a finite number"),
    ({"residual_dtype": "f64"}, "argument 'residual_dtype': unknown dtype 'f64'"),
])
def test_catalog_parameters_are_checked(params, message):
    with pytest.raises(rg.ResgenError, match=re.escape(message)):
        rg.catalog.llama(rg.bf16, **params)
    with pytest.raises(rg.SpecError, match=re.escape("'p' (dropout probability) must be in [0, 1)")):
        rg.catalog.bert(rg.bf16, p=1.0)
    with pytest.raises(rg.SpecError, match="'training' must be True or False"):
        rg.catalog.bert(rg.bf16, training=1)
