"""torch.nn modules on resgen kernels: drop-in fused residual-add + norm layers.

Parameters carry the names Hugging Face models use (`weight`, `bias`), so a state dict loads
unchanged. A module compiles its kernel for the device it first sees (the cuda backend for CUDA
tensors, emu for CPU tensors) and keeps one per device and settings. Trainable: the backward is the
kernel resgen derives from the same block (`rg.grad`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

import resgen.ir.builder as rgb
from resgen.ir.block import Block
from resgen.ir.dtypes import as_dtype, f32
from resgen.runtime.kernel import Kernel, compile


class _FusedAddNorm(nn.Module):
    def __init__(self, hidden: int, dtype: torch.dtype, residual_in_fp32: bool) -> None:
        super().__init__()
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
            raise ValueError(f"hidden must be an int >= 1, got {hidden!r}")
        self.hidden = hidden
        self.dtype = as_dtype(dtype, what="dtype")
        self.residual_in_fp32 = residual_in_fp32
        self._kernels: dict[tuple, Kernel] = {}

    def _block(self) -> Block:
        raise NotImplementedError

    def _settings(self) -> tuple:
        """What the compiled block depends on besides the device: a change (eps, say) recompiles."""
        return (self.dtype, self.residual_in_fp32, getattr(self, "eps", None), getattr(self, "offset", None),
                getattr(self, "bias", None) is not None)

    def _kernel(self, device: torch.device) -> Kernel:
        key = (device, self._settings())
        kernel = self._kernels.get(key)
        if kernel is None:
            backend = "cuda" if device.type == "cuda" else "emu"
            kernel = compile(self._block(), self.hidden, backend=backend)
            self._kernels[key] = kernel
        return kernel

    def kernel_for(self, device: torch.device | str) -> Kernel:
        """The kernel this module runs on `device` with its current settings (compiled on first use)."""
        return self._kernel(torch.device(device))

    def _build(self, b: Block) -> tuple[Any, Any]:
        residual_dtype = f32 if self.residual_in_fp32 else self.dtype
        x, residual = b.input("x", self.dtype), b.input("residual", residual_dtype)
        h = x + residual
        b.output("residual_out", h, dtype=residual_dtype)
        return h, residual_dtype

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (norm(x + residual), x + residual), the residual in its own stream dtype. Trainable:
        with grad mode on, the call records the generated backward (weights get float32-accumulated
        gradients, rounded to their dtype)."""
        out = self._kernel(x.device)(x=x, residual=residual, **dict(self.named_parameters()))
        return out.y, out.residual_out


class FusedAddRMSNorm(_FusedAddNorm):
    """y = rms_norm(x + residual) * (offset + weight); returns (y, x + residual).

    offset=1.0 gives Gemma's (1 + weight). residual_in_fp32=True: the residual stream is float32 —
    pass `residual` as float32, and the returned residual is float32 (x and y stay in `dtype`).
    """

    def __init__(self, hidden: int, eps: float = 1e-6, dtype: torch.dtype = torch.bfloat16, offset: float = 0.0,
                 residual_in_fp32: bool = False, device: torch.device | str | None = None) -> None:
        super().__init__(hidden, dtype, residual_in_fp32)
        self.eps, self.offset = eps, offset
        init = 0.0 if offset else 1.0
        self.weight = nn.Parameter(torch.full((hidden,), init, dtype=self.dtype.torch_dtype, device=device))

    def _block(self) -> Block:
        b = Block("fused_add_rms_norm")
        h, _ = self._build(b)
        b.output("y", rgb.rms_norm(h, b.weight("weight", self.dtype), eps=self.eps, offset=self.offset), dtype=self.dtype)
        return b

    def extra_repr(self) -> str:
        return f"{self.hidden}, eps={self.eps}, dtype={self.dtype}, offset={self.offset}, residual_in_fp32={self.residual_in_fp32}"


class FusedAddLayerNorm(_FusedAddNorm):
    """y = layer_norm(x + residual) * weight + bias; returns (y, x + residual)."""

    def __init__(self, hidden: int, eps: float = 1e-5, bias: bool = True, dtype: torch.dtype = torch.bfloat16,
                 residual_in_fp32: bool = False, device: torch.device | str | None = None) -> None:
        super().__init__(hidden, dtype, residual_in_fp32)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden, dtype=self.dtype.torch_dtype, device=device))
        self.bias = nn.Parameter(torch.zeros(hidden, dtype=self.dtype.torch_dtype, device=device)) if bias else None

    def _block(self) -> Block:
        b = Block("fused_add_layer_norm")
        h, _ = self._build(b)
        w = b.weight("weight", self.dtype)
        bias = b.weight("bias", self.dtype) if self.bias is not None else None
        b.output("y", rgb.layer_norm(h, w, bias, eps=self.eps), dtype=self.dtype)
        return b

    def extra_repr(self) -> str:
        return f"{self.hidden}, eps={self.eps}, bias={self.bias is not None}, dtype={self.dtype}, residual_in_fp32={self.residual_in_fp32}"
