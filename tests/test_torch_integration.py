"""The custom op `resgen::run`: opcheck, torch.compile with no graph break, and modules that follow
their inputs' dtypes and devices (emu backend, CPU tensors)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import resgen as rg
from resgen.nn import FusedAddLayerNorm, FusedAddRMSNorm, FusedSandwichRMSNorm, LayerNorm, RMSNorm, add_norm
from resgen.runtime import ops
from resgen.verification import random_inputs
from tests.conftest import CATALOG, fit, op_arguments


@pytest.mark.parametrize("name", CATALOG)
def test_opcheck_passes_for_every_catalog_op(name):
    block, hidden = rg.catalog[name](rg.bf16), fit(name, 100)
    kernel = rg.compile(block, hidden, backend="emu")
    args = random_inputs(block, (3,), hidden, seed=1)
    trainable = rg.catalog[name].trainable  # quantized outputs have no gradient: inference only
    for p in block.params:
        if p.op != "scalar":
            args[p.name].requires_grad_(trainable and p.op in ("input", "weight"))
    for training in (False, True) if trainable else (False,):
        result = torch.library.opcheck(ops.run, op_arguments(kernel, args, training, seed=3))
        assert set(result.values()) == {"SUCCESS"}, result


@pytest.mark.parametrize("name", ["llama", "bert", "llama_fp32_residual"])
def test_the_op_gives_the_kernels_outputs_bitwise(name):
    block = rg.catalog[name](rg.bf16)
    kernel = rg.compile(block, 1000, backend="emu")
    args = random_inputs(block, (37,), 1000, seed=2)
    direct = kernel(**{k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in args.items()}, seed=3)
    through = ops.run(*op_arguments(kernel, args, False, seed=3))
    for o, got in zip(block.outputs, through, strict=False):
        assert torch.equal(got, direct[o.name]), o.name
    if block.outputs[-1].inplace:  # functional: the op wrote a copy, the input is as it was
        assert not torch.equal(args[block.outputs[-1].inplace], direct[block.outputs[-1].name])


def test_the_op_rebuilds_a_kernel_from_its_text_alone():
    block = rg.catalog.gpt2(rg.f32)
    kernel = rg.compile(block, 64, backend="emu", config="tpr=32,rows=4,vec=2")
    args = random_inputs(block, (5,), 64)
    want = kernel(**args)
    text, spec = kernel.op.text, kernel.op_kernel
    del kernel  # a graph loaded in a new process knows only the strings
    got = ops.run(text, spec, [args[n] for n in ("x", "residual", "weight", "bias")], [], 0, 0, False)
    outs = dict(zip(ops.signature(text).outputs, got, strict=True))
    assert torch.equal(outs["y"], want.y) and torch.equal(outs["residual_out"], want.residual_out)
    rebuilt = ops.kernels.get(text, 64, spec, torch.device("cpu"))
    assert str(rebuilt.config) == spec and rebuilt.config.threads_per_row == 32


def test_seeds_above_int64_reach_the_kernel_unchanged():
    block = rg.catalog.bert(rg.f32)
    kernel = rg.compile(block, 64, backend="emu")
    args = {k: v.requires_grad_(False) if isinstance(v, torch.Tensor) else v
            for k, v in random_inputs(block, (4,), 64).items()}
    seed = 2**64 - 5
    eager = kernel(**args, seed=seed)
    compiled = torch.compile(lambda a: kernel(**a, seed=seed).y, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(args), eager.y)


class Net(torch.nn.Module):
    """Every module kind in one small model."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.mlp = torch.nn.Linear(16, 64), torch.nn.Linear(64, 64)
        self.first = RMSNorm(64)
        self.add_rms = FusedAddRMSNorm(64, eps=1e-5)
        self.add_ln = FusedAddLayerNorm(64)
        self.sandwich = FusedSandwichRMSNorm(64)
        self.last = LayerNorm(64, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        y, r = self.add_rms(torch.tanh(self.mlp(self.first(h))), h)
        y, r = self.add_ln(y, r)
        y, r = self.sandwich(y, r)
        return self.last(y + r).square().mean()


def test_torch_compile_fullgraph_traces_resgen_modules_and_kernels_with_no_graph_break():
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    net = Net()
    for p in net.parameters():  # not the init values: offsets and weights matter
        p.data.add_(0.1 * torch.randn_like(p))
    x = torch.randn(2, 5, 16)
    loss = net(x)
    loss.backward()
    want = {n: p.grad.clone() for n, p in net.named_parameters()}
    net.zero_grad()
    counters.clear()
    compiled = torch.compile(net, fullgraph=True, backend="aot_eager")
    got = compiled(x)
    got.backward()
    assert not counters["graph_break"]
    torch.testing.assert_close(got, loss, rtol=1e-6, atol=1e-6)
    for n, p in net.named_parameters():
        torch.testing.assert_close(p.grad, want[n], rtol=1e-5, atol=1e-6, msg=n)
    net.add_rms.eps = 1.0  # a setting changed after compiling: recompiled, not stale
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), net(x), rtol=1e-6, atol=1e-6)


def test_a_compiled_function_calling_a_kernel_is_one_graph_with_its_backward():
    block = rg.catalog.llama(rg.bf16)
    kernel = rg.compile(block, 64, backend="emu")
    args = random_inputs(block, (3,), 64, seed=5)

    def loss(x, residual, weight):
        out = kernel(x=x, residual=residual, weight=weight)
        return out.y.float().square().sum() + out["residual_out"].float().sum()

    leaves = [args[n].clone().requires_grad_(True) for n in ("x", "residual", "weight")]
    eager = [t.detach().clone().requires_grad_(True) for t in leaves]
    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    compiled(*leaves).backward()
    loss(*eager).backward()
    for a, b in zip(leaves, eager, strict=True):
        assert torch.equal(a.grad, b.grad)


def test_modules_follow_dtype_and_device_changes_after_construction():
    m = FusedAddRMSNorm(64, eps=1e-6)
    assert m.weight.dtype == torch.float32
    x, r = torch.randn(3, 64), torch.randn(3, 64)
    with torch.no_grad():
        y32, h32 = m(x, r)
        torch.testing.assert_close(y32, F.rms_norm(x + r, (64,), m.weight, 1e-6), rtol=1e-5, atol=1e-6)
        for convert, dt in ((lambda mod: mod.half(), torch.float16), (lambda mod: mod.to(torch.bfloat16), torch.bfloat16)):
            convert(m)
            y, h = m(x.to(dt), r.to(dt))
            assert y.dtype == dt and h.dtype == dt
            torch.testing.assert_close(y.float(), y32, rtol=2e-2, atol=2e-2)
        y, h = m(x.bfloat16(), r)  # a float32 residual stream beside bf16 activations
        assert y.dtype == torch.bfloat16 and h.dtype == torch.float32
    assert m.kernel_for("cpu", torch.bfloat16).backend == "emu"


def test_residual_none_is_the_plain_norm_and_returns_x_as_the_residual():
    m = FusedAddLayerNorm(48)
    x = torch.randn(4, 48)
    with torch.no_grad():
        y, residual = m(x)
    assert residual is x
    torch.testing.assert_close(y, F.layer_norm(x, (48,), m.weight, m.bias, 1e-5), rtol=1e-5, atol=1e-5)


def test_constructor_arguments_mirror_torch():
    assert set(LayerNorm(32).state_dict()) == {"weight", "bias"}
    assert set(LayerNorm(32, bias=False).state_dict()) == {"weight"}
    assert set(LayerNorm(32, elementwise_affine=False).state_dict()) == set()
    assert set(RMSNorm((32,)).state_dict()) == {"weight"}
    assert torch.equal(RMSNorm(8, offset=1.0).weight, torch.zeros(8))  # Gemma's (1 + weight)
    x = torch.randn(3, 32)
    with torch.no_grad():
        torch.testing.assert_close(LayerNorm(32, elementwise_affine=False)(x), F.layer_norm(x, (32,)),
                                   rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(RMSNorm(32, elementwise_affine=False)(x), F.rms_norm(x, (32,), eps=1e-6),
                                   rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="rounding"):
        RMSNorm(8, rounding="exact")
    with pytest.raises(ValueError, match="eps"):
        LayerNorm(8, eps=-1.0)


def test_hf_rounding_reproduces_the_llama_and_gemma_norm_sequences_bitwise():
    torch.manual_seed(1)
    x, r = torch.randn(8, 256).bfloat16(), torch.randn(8, 256).bfloat16()
    w = (torch.rand(256) + 0.5).bfloat16()
    llama = FusedAddRMSNorm(256, eps=1e-6, rounding="hf", dtype=torch.bfloat16)
    gemma = FusedAddRMSNorm(256, eps=1e-6, offset=1.0, rounding="hf", dtype=torch.bfloat16)
    with torch.no_grad():
        llama.weight.copy_(w)
        gemma.weight.copy_(w - 1)
        h = r + x  # HF: the sum rounded to bf16 before the norm
        f = h.float()
        normed = f * torch.rsqrt(f.pow(2).mean(-1, keepdim=True) + 1e-6)
        want_llama = w * normed.to(torch.bfloat16)
        want_gemma = (normed * (1.0 + (w - 1).float())).to(torch.bfloat16)
        y_llama, h_llama = llama(x, r)
        y_gemma, _ = gemma(x, r)
    assert torch.equal(h_llama, h)
    # only the float32 order of the row sum differs from torch's: a rare bf16 rounding may flip
    for got, want in ((y_llama, want_llama), (y_gemma, want_gemma)):
        same = (got == want).float().mean().item()
        assert same >= 0.99, same
        assert (got.float() - want.float()).abs().max() <= 2 ** -7 * want.float().abs().max()


def test_add_norm_can_skip_writing_the_residual():
    norm = LayerNorm(40)
    x, r = torch.randn(3, 40), torch.randn(3, 40)
    with torch.no_grad():
        y = add_norm(norm, x, r, residual_out=False)
        text = ops.signature(norm.kernel_for("cpu").op.text)
    assert isinstance(y, torch.Tensor)
    assert text.outputs == ("y", "residual_out")
    with torch.no_grad():
        torch.testing.assert_close(y, norm(x + r), rtol=1e-5, atol=1e-5)


def test_a_copied_module_has_its_own_settings():
    m = RMSNorm(16)
    twin = copy.deepcopy(m)
    twin.eps = 0.5
    x = torch.randn(2, 16)
    with torch.no_grad():
        torch.testing.assert_close(m(x), F.rms_norm(x, (16,), m.weight, 1e-6), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(twin(x), F.rms_norm(x, (16,), twin.weight, 0.5), rtol=1e-5, atol=1e-6)


def test_customising_a_module_block_through_the_public_hook():
    class ScaledRMSNorm(FusedAddRMSNorm):
        """y = rms_norm(2 * x + residual): a module that overrides `block`."""

        def block(self, x, residual, weight, residual_out=True):
            b = rg.Block("scaled")
            xv, rv = b.input("x", rg.ir.dtypes.as_dtype(x, what="x")), b.input("residual", rg.ir.dtypes.as_dtype(residual, what="r"))
            h = xv * 2.0 + rv
            b.output("y", rg.rms_norm(h, b.weight("weight", rg.ir.dtypes.as_dtype(weight, what="w")), eps=self.eps),
                     dtype=rg.ir.dtypes.as_dtype(x, what="x"))
            if residual_out:
                b.output("residual_out", h, dtype=rg.ir.dtypes.as_dtype(residual, what="r"))
            return b

    m = ScaledRMSNorm(32)
    x, r = torch.randn(3, 32), torch.randn(3, 32)
    with torch.no_grad():
        y, h = m(x, r)
    torch.testing.assert_close(h, 2 * x + r, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(y, F.rms_norm(2 * x + r, (32,), m.weight, 1e-6), rtol=1e-5, atol=1e-6)


def test_module_errors_name_the_argument():
    m = FusedAddRMSNorm(64)
    with torch.no_grad(), pytest.raises(rg.LaunchError, match="'residual'.*hidden=64"):
        m(torch.randn(2, 64), torch.randn(2, 32))
    with torch.no_grad(), pytest.raises(rg.LaunchError, match="'x' must be a torch.Tensor"):
        m([1.0] * 64)
