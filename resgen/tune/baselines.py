"""What resgen is measured against: the same block written the usual way in PyTorch (eager and
torch.compile) and, when importable, Liger-Kernel's Triton norms."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from resgen.ir.block import Block

Args = dict[str, torch.Tensor | float]
Fn = Callable[..., tuple[torch.Tensor, ...]]


def _rms(h: torch.Tensor, w: torch.Tensor, eps: float, offset: float = 0.0) -> torch.Tensor:
    return F.rms_norm(h, (h.shape[-1],), (w.float() + offset).to(h.dtype) if offset else w, eps)


def _ln(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
    return F.layer_norm(h, (h.shape[-1],), w, b, eps)


def _llama(x, residual, weight):
    h = x + residual
    return h, _rms(h, weight, 1e-6)


def _llama_fp32_residual(x, residual, weight):
    h = x.float() + residual
    return h, _rms(h, weight.float(), 1e-6).to(x.dtype)


def _gpt2(x, residual, weight, bias):
    h = x + residual
    return h, _ln(h, weight, bias, 1e-5)


def _gemma(x, residual, weight):
    h = x + residual
    return h, _rms(h, weight, 1e-6, 1.0)


def _gemma_fp32_residual(x, residual, weight):
    h = x.float() + residual
    return h, _rms(h, weight.float(), 1e-6, 1.0).to(x.dtype)


def _gemma2_sandwich(x, residual, post_weight, pre_weight):
    h = residual + _rms(x, post_weight, 1e-6, 1.0)
    return h, _rms(h, pre_weight, 1e-6, 1.0)


def _parallel_residual(residual, attn, mlp, weight, bias):
    h = residual + attn + mlp
    return h, _ln(h, weight, bias, 1e-5)


def _deepnorm(residual, x, weight, bias, alpha):
    return (_ln(alpha * residual + x, weight, bias, 1e-5),)


#: Catalog block -> the PyTorch code a model would run for it (outputs in the block's order).
TORCH_FORMULAS: dict[str, Fn] = {
    "llama": _llama, "llama_fp32_residual": _llama_fp32_residual, "gpt2": _gpt2, "gemma": _gemma,
    "gemma_fp32_residual": _gemma_fp32_residual, "gemma2_sandwich": _gemma2_sandwich,
    "parallel_residual": _parallel_residual, "deepnorm": _deepnorm,
}


def eager(block: Block) -> Fn | None:
    """Any block as unfused PyTorch ops in float32 (one kernel per op), or None for blocks with
    dropout, whose reference mask is drawn on the host."""
    if any(n.op == "dropout" for n in block.body):
        return None
    from resgen.reference import evaluate
    from resgen.signature import bind

    names = [o.name for o in block.outputs]

    def run(**args: torch.Tensor | float) -> tuple[torch.Tensor, ...]:
        out = evaluate(block, bind(block, args), accumulate=torch.float32)
        return tuple(out[n] for n in names)

    return run


def liger(name: str) -> tuple[Fn | None, str]:
    """Liger-Kernel's version of a catalog block, or None and the reason it is unavailable."""
    try:
        from liger_kernel.transformers import functional as lf  # type: ignore[import-not-found]
    except Exception as exc:  # noqa: BLE001 - any failure means "not available here"
        return None, f"liger-kernel not importable ({type(exc).__name__}: {exc})"
    if name == "llama" and hasattr(lf, "liger_rms_norm"):
        def run(x, residual, weight):
            h = x + residual
            return h, lf.liger_rms_norm(h, weight, 1e-6)
        return run, ""
    if name == "gpt2" and hasattr(lf, "liger_layer_norm"):
        def run_ln(x, residual, weight, bias):
            h = x + residual
            return h, lf.liger_layer_norm(h, weight, bias, 1e-5)
        return run_ln, ""
    return None, f"no Liger equivalent of {name!r}"
