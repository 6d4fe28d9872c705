"""rg.nn modules: Hugging Face parameter names, forward on emu, and a backward that refuses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import resgen as rg
from resgen.nn import FusedAddLayerNorm, FusedAddRMSNorm


def test_rms_module_matches_torch_and_loads_hf_state_dict():
    m = FusedAddRMSNorm(256, eps=1e-6, dtype=torch.bfloat16)
    hf = torch.nn.RMSNorm(256, eps=1e-6, dtype=torch.bfloat16)
    with torch.no_grad():
        hf.weight.copy_(torch.rand(256) + 0.5)
    m.load_state_dict(hf.state_dict())
    x, r = torch.randn(3, 7, 256).bfloat16(), torch.randn(3, 7, 256).bfloat16()
    with torch.no_grad():
        y, residual = m(x, r)
    h = x.float() + r.float()
    torch.testing.assert_close(residual, h.bfloat16())
    torch.testing.assert_close(y.float(), F.rms_norm(h, (256,), hf.weight.float(), 1e-6), rtol=1e-2, atol=1e-2)


def test_layer_norm_module_with_fp32_residual_stream():
    m = FusedAddLayerNorm(300, dtype=torch.float16)  # the residual's dtype follows the residual passed
    assert set(m.state_dict()) == {"weight", "bias"}
    x, r = torch.randn(5, 300).half(), torch.randn(5, 300)
    with torch.no_grad():
        y, residual = m(x, r)
    assert residual.dtype == torch.float32 and y.dtype == torch.float16
    torch.testing.assert_close(y.float(), F.layer_norm(x.float() + r, (300,), eps=1e-5), rtol=2e-3, atol=2e-3)


def test_gemma_offset_initialises_weight_to_zero():
    m = FusedAddRMSNorm(64, offset=1.0, dtype=torch.float32)
    assert torch.equal(m.weight, torch.zeros(64))
    x, r = torch.randn(2, 64), torch.randn(2, 64)
    with torch.no_grad():
        y, _ = m(x, r)
    torch.testing.assert_close(y, F.rms_norm(x + r, (64,), eps=1e-6), rtol=1e-5, atol=1e-5)


def test_modules_are_trainable_and_match_torch_gradients():
    m = FusedAddLayerNorm(96, dtype=torch.float32)
    ref = torch.nn.LayerNorm(96)
    with torch.no_grad():
        m.weight.copy_(torch.rand(96) + 0.5)
        m.bias.copy_(torch.randn(96))
    ref.load_state_dict(m.state_dict())
    x, r = torch.randn(7, 96, requires_grad=True), torch.randn(7, 96)
    y, residual = m(x, r)
    (y.square().sum() + residual.sum()).backward()
    x2 = x.detach().clone().requires_grad_(True)
    h = x2 + r
    (ref(h).square().sum() + h.sum()).backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(m.weight.grad, ref.weight.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(m.bias.grad, ref.bias.grad, rtol=1e-4, atol=1e-4)


def test_a_small_model_trains_like_its_torch_twin():
    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self, fused: bool) -> None:
            super().__init__()
            self.inp = torch.nn.Linear(16, 64)
            self.mlp = torch.nn.Linear(64, 64)
            self.norm = FusedAddRMSNorm(64, eps=1e-6, dtype=torch.float32) if fused else torch.nn.RMSNorm(64, eps=1e-6)
            self.out = torch.nn.Linear(64, 1)
            self.fused = fused

        def forward(self, x):
            h = self.inp(x)
            if self.fused:
                y, _ = self.norm(torch.tanh(self.mlp(h)), h)
            else:
                y = self.norm(torch.tanh(self.mlp(h)) + h)
            return self.out(y)

    fused, plain = Net(True), Net(False)
    plain.load_state_dict(fused.state_dict())
    data, target = torch.randn(32, 16), torch.randn(32, 1)
    losses = {}
    for name, net in (("fused", fused), ("plain", plain)):
        opt = torch.optim.SGD(net.parameters(), lr=0.02)
        curve = []
        for _ in range(5):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(net(data), target)
            loss.backward()
            opt.step()
            curve.append(loss.item())
        losses[name] = curve
    assert losses["fused"][-1] < losses["fused"][0]
    for a, b in zip(losses["fused"], losses["plain"], strict=True):
        assert abs(a - b) <= 1e-4 * max(1.0, abs(b)), losses
    assert fused.norm.weight.grad is not None and fused.norm.weight.grad.abs().sum() > 0


def test_wrong_inputs_name_the_argument():
    m = FusedAddRMSNorm(64, dtype=torch.float32)
    with torch.no_grad(), pytest.raises(rg.LaunchError, match="'x'.*hidden=64"):
        m(torch.randn(2, 32), torch.randn(2, 32))
    with pytest.raises(ValueError, match="hidden"):
        FusedAddRMSNorm(0)
