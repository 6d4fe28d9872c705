"""Kernel calls as autograd operations: when grad mode is on and a row input or weight requires grad,
the call runs the training forward (the block plus its saved statistics, `with_saved_statistics`)
and records a backward that runs the generated backward kernel (`rg.grad`), compiled on first use
from the same cache. Nothing is detached silently; double backward raises."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch.autograd.function import once_differentiable

from resgen.errors import LaunchError
from resgen.passes.autodiff import DIFFERENTIABLE, distinct_outputs, grad, saved_statistics, with_saved_statistics
from resgen.signature import Outputs

if TYPE_CHECKING:
    from resgen.runtime.kernel import Kernel


class Training:
    """The kernels one compiled block trains with: its training forward, and a backward per set of
    parameters that need gradients."""

    def __init__(self, kernel: Kernel) -> None:
        from resgen.runtime.kernel import compile

        self.kernel = kernel
        self.compile = lambda block: compile(block, kernel.hidden, backend=kernel.backend, arch=kernel.plan.arch)
        self.forward = self.compile(with_saved_statistics(kernel.block))
        self.saved = [f"saved_{k}" for k in range(len(saved_statistics(kernel.block)))]
        self._backward: dict[tuple[str, ...], tuple[Kernel, dict[str, str]]] = {}

    def backward(self, wrt: tuple[str, ...]) -> tuple[Kernel, dict[str, str]]:
        """The backward kernel for the parameters `wrt`, and which of its gradients repeat another
        (`distinct_outputs`: written once, handed to both)."""
        found = self._backward.get(wrt)
        if found is None:
            block, same = distinct_outputs(grad(self.kernel.block, wrt=list(wrt)))
            found = self._backward[wrt] = (self.compile(block), same)
        return found


def call_with_grad(kernel: Kernel, kwargs: dict[str, Any]) -> Outputs:
    """Run `kernel` on `kwargs` so that its outputs carry a grad_fn (see the module docstring)."""
    block = kernel.block
    params = {p.name: p for p in block.params}
    tensors = {k: v for k, v in kwargs.items() if isinstance(v, torch.Tensor) and k in params}
    for name, t in tensors.items():
        if t.requires_grad and params[name].op not in DIFFERENTIABLE:
            raise LaunchError(f"argument {name!r} requires grad, but a {params[name].op} is not differentiated; "
                              f"detach it")
    if any(o.name in kwargs for o in block.outputs):
        raise LaunchError("preallocated outputs cannot be used while recording gradients; let the kernel "
                          "allocate them, or call under torch.no_grad()")
    names = tuple(tensors)
    rest = {k: v for k, v in kwargs.items() if k not in tensors}
    if kernel.training is None:
        kernel.training = Training(kernel)
    outs = _KernelFunction.apply(kernel.training, names, rest, *tensors.values())
    return Outputs(dict(zip((o.name for o in block.outputs), outs, strict=True)))


class _KernelFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, training: Training, names: tuple[str, ...], rest: dict[str, Any],
                *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        block = training.kernel.block
        args = dict(zip(names, tensors, strict=True))
        inplace = {o.inplace: o.name for o in block.outputs if o.inplace}
        # An input overwritten in place is still needed by the backward: keep its values.
        originals = {name: args[name].clone() for name in inplace}
        out = training.forward(**args, **rest)
        dirty = [args[name] for name in inplace]
        if dirty:
            ctx.mark_dirty(*dirty)
        ctx.training, ctx.names, ctx.rest = training, names, rest
        ctx.wrt = tuple(n for n, t in zip(names, tensors, strict=True) if t.requires_grad)
        kept = {**args, **originals, **{s: out[s] for s in training.saved}}
        ctx.kept_names = tuple(kept)
        ctx.save_for_backward(*kept.values())
        results = tuple(out[o.name] for o in block.outputs)
        ctx.output_meta = [(r.shape, r.dtype, r.device) for r in results]
        return results

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, *grads: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        training: Training = ctx.training
        block = training.kernel.block
        if not ctx.wrt:
            return (None, None, None) + (None,) * len(ctx.names)
        kept = dict(zip(ctx.kept_names, ctx.saved_tensors, strict=True))
        cotangents = {}
        for o, g, (shape, dtype, device) in zip(block.outputs, grads, ctx.output_meta, strict=True):
            # torch hands expanded gradients (stride 0) to backward functions: the kernel reads rows of memory
            cotangents[f"d_{o.name}"] = torch.zeros(shape, dtype=dtype, device=device) if g is None else g.contiguous()
        backward, same = training.backward(ctx.wrt)
        wanted = {p.name for p in backward.block.params}
        args = {k: v for k, v in {**kept, **cotangents}.items() if k in wanted}
        rest = {k: v for k, v in ctx.rest.items() if k in wanted or k in ("seed", "offset")}
        out = backward(**args, **rest)
        grads = {n: out[same.get(f"d_{n}", f"d_{n}")] for n in ctx.wrt}
        return (None, None, None) + tuple(grads.get(n) for n in ctx.names)
