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
    m = FusedAddLayerNorm(300, dtype=torch.float16, residual_in_fp32=True)
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


def test_backward_raises_instead_of_returning_wrong_gradients():
    m = FusedAddRMSNorm(64, dtype=torch.float32)
    x = torch.randn(2, 64, requires_grad=True)
    y, _ = m(x, torch.randn(2, 64))
    with pytest.raises(NotImplementedError, match="forward-only"):
        y.sum().backward()


def test_wrong_inputs_name_the_argument():
    m = FusedAddRMSNorm(64, dtype=torch.float32)
    with torch.no_grad(), pytest.raises(rg.LaunchError, match="'x'.*hidden=64"):
        m(torch.randn(2, 32), torch.randn(2, 32))
    with pytest.raises(ValueError, match="hidden"):
        FusedAddRMSNorm(0)
