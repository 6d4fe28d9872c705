"""The custom op every kernel call goes through under torch.compile and autograd: `resgen::run`.

`torch.ops.resgen.run(block, kernel, tensors, scalars, seed, offset, training)` names its kernel by
text, so a traced graph holds only strings, numbers and tensors (Dynamo never sees a Block or its
sympy expressions), and a graph loaded in a fresh process can rebuild what it calls:

- `block`: the printed block (`print_block`); parsed once per process.
- `kernel`: how the kernel was built: `""` for the heuristic's config, else the LaunchConfig's text;
  `";sanitize"` appended for a sanitizing emu kernel.
- `tensors`, `scalars`: the block's tensor and runtime-scalar parameters, in parameter order.
- `seed`, `offset`: the dropout stream, as int64 (seeds >= 2**63 wrap; the op unwraps them).
- `training`: run the training forward (`with_saved_statistics`), whose outputs end with the
  `saved_<k>` statistics the registered backward reads.

The op is functional: an output the block writes in place over an input is written to a copy, and
`call` copies it back, so torch sees the mutation as a `copy_`. Its fake implementation takes the
output shapes and dtypes from the block; its autograd runs the generated backward (`rg.grad`)
through the same op. Kernels are compiled on first use per (block, hidden, kernel, backend); a
Kernel object that `rg.compile` returned is found by the same key while it is alive.

The op's Autograd, CPU and CUDA kernels are C++ when resgen.runtime.native could build them
(`NATIVE` is None): a warm call never enters Python, and the rest comes back here through the
private ops `_slow` (a layout the C++ kernel has no template for), `_grad` (a call that records
gradients) and `_remember` (the template the Python kernel hands over). Otherwise (`NATIVE` says
why) the Python kernels below serve the op.
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch.autograd.function import once_differentiable
from torch.utils._python_dispatch import _get_current_dispatch_mode as _current_dispatch_mode

from resgen.errors import LaunchError
from resgen.ir.block import Block
from resgen.ir.parser import parse_block
from resgen.ir.printer import print_block
from resgen.passes.autodiff import DIFFERENTIABLE, distinct_outputs, grad, with_saved_statistics
from resgen.runtime import native
from resgen.signature import CALL_KEYWORDS, Outputs, check_int64, check_scalar, value_shape

if TYPE_CHECKING:
    from resgen.runtime.kernel import Kernel

SANITIZE = ";sanitize"
_U64 = 1 << 64


@functools.lru_cache(maxsize=512)
def block_of(text: str) -> Block:
    return parse_block(text)


@functools.lru_cache(maxsize=512)
def training_text(text: str) -> str:
    """The training forward of the block printed as `text`, printed."""
    return print_block(with_saved_statistics(block_of(text)))


@functools.lru_cache(maxsize=512)
def backward_of(text: str, wrt: tuple[str, ...]) -> tuple[str, dict[str, str]]:
    """The backward of the block printed as `text` for the parameters `wrt`, printed, and which of
    its gradients repeat another (`distinct_outputs`: written once, handed to each input)."""
    block, same = distinct_outputs(grad(block_of(text), wrt=list(wrt)))
    return print_block(block), same


@dataclass(frozen=True)
class Signature:
    """What a call of the block printed as `text` passes and returns, by position."""

    text: str
    block: Block
    tensors: tuple[str, ...]  # tensor parameters, in parameter order
    scalars: tuple[str, ...]  # runtime scalars, in parameter order
    outputs: tuple[str, ...]
    inplace: tuple[tuple[str, str], ...]  # (output, the input it overwrites)
    first: int  # the position in `tensors` of the first row input (its shape gives rows and hidden)

    @classmethod
    def of(cls, block: Block, text: str) -> Signature:
        tensors = [p for p in block.params if p.op != "scalar"]
        return cls(text, block, tuple(p.name for p in tensors), tuple(p.name for p in block.params if p.op == "scalar"),
                   tuple(o.name for o in block.outputs), tuple((o.name, o.inplace) for o in block.outputs if o.inplace),
                   next(k for k, p in enumerate(tensors) if p.op == "input"))

    def spare_overwritten(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """`tensors` with a copy of each input an in-place output overwrites (the original keeps its values)."""
        overwritten = {source for _output, source in self.inplace}
        return [t.clone() if n in overwritten else t for n, t in zip(self.tensors, tensors, strict=True)]

    def lead_hidden(self, tensors: Sequence[torch.Tensor]) -> tuple[Sequence[int], int]:
        if len(tensors) != len(self.tensors):
            raise LaunchError(f"resgen::run: block {self.block.name!r} takes {len(self.tensors)} tensors "
                              f"({', '.join(self.tensors)}), got {len(tensors)}")
        shape = tensors[self.first].shape
        return shape[:-1], shape[-1]


@functools.lru_cache(maxsize=1024)
def signature(text: str, training: bool = False) -> Signature:
    """The signature of the block printed as `text` (of its training forward when `training`)."""
    if training:
        text = training_text(text)
    return Signature.of(block_of(text), text)


class _Kernels:
    """The kernels the op runs: those `rg.compile` returned while they live, and those the op built."""

    def __init__(self) -> None:
        self._live: weakref.WeakValueDictionary[tuple, Kernel] = weakref.WeakValueDictionary()
        self._built: dict[tuple, Kernel] = {}
        self._kept: dict[int, Kernel] = {}
        self._lock = threading.Lock()

    def remember(self, kernel: Kernel) -> None:
        self._live[(kernel.op.text, kernel.hidden, kernel.op_kernel, kernel.backend)] = kernel

    def keep(self, kernel: Kernel) -> None:
        """Keep `kernel` for the process (the C++ kernels hold pointers into it)."""
        self._kept[id(kernel)] = kernel

    def get(self, text: str, hidden: int, spec: str, device: torch.device) -> Kernel:
        backend = "cuda" if device.type == "cuda" else "emu"
        key = (text, hidden, spec, backend)
        kernel = self._built.get(key) or self._live.get(key)
        if kernel is None:
            from resgen.runtime.kernel import compile  # a cycle at import time; here only on a miss

            with self._lock:
                kernel = self._built.get(key) or self._live.get(key)
                if kernel is None:
                    config, sanitize = spec.removesuffix(SANITIZE), spec.endswith(SANITIZE)
                    kernel = compile(block_of(text), hidden, backend=backend, config=config or None,
                                     sanitize=sanitize)
                    self._built[key] = kernel
        return kernel


kernels = _Kernels()


def _prepared(sig: Signature, spec: str, tensors: Sequence[torch.Tensor]) -> tuple[Kernel, Sequence[torch.Tensor]]:
    """The kernel a call of `sig` runs, and the tensors it runs on (a copy of each one it overwrites:
    the op is functional, the caller copies the result back)."""
    _lead, hidden = sig.lead_hidden(tensors)
    kernel = kernels.get(sig.text, hidden, spec, tensors[sig.first].device)
    return kernel, sig.spare_overwritten(tensors) if sig.inplace else tensors


def launch(sig: Signature, spec: str, tensors: Sequence[torch.Tensor], scalars: Sequence[float], seed: int,
           offset: int) -> list[torch.Tensor]:
    """Run the kernel of `sig` directly: the op's implementation, and eager calls that need no op."""
    kernel, tensors = _prepared(sig, spec, tensors)
    return kernel.run_positional(tensors, scalars, seed % _U64, offset % _U64)


_ARGUMENTS = "(str block, str kernel, Tensor[] tensors, float[] scalars, int seed, int offset, bool training)"
_SCHEMA = f"run{_ARGUMENTS} -> Tensor[]"
_library = torch.library.Library("resgen", "DEF")  # noqa: TOR901 - kept alive for the process
_library.define(_SCHEMA)
# The C++ kernels' way back to Python (resgen.runtime.native): a call they have no template for, a call
# that records gradients, and a template for them to keep.
_library.define(f"_slow{_ARGUMENTS} -> Tensor[]")
_library.define(f"_grad{_ARGUMENTS} -> Tensor[]")
_library.define("_remember(str block, str kernel, bool training, Tensor[] tensors, Tensor[] dtypes, int[] table) -> ()")
_library.define("_native_counts() -> int[]")


def _run(block: str, kernel: str, tensors: list[torch.Tensor], scalars: list[float], seed: int, offset: int,
         training: bool) -> list[torch.Tensor]:
    """Run the kernel of `block` (see the module docstring); outputs in the block's output order."""
    return launch(signature(block, training), "" if training else kernel, tensors, scalars, seed, offset)


def _slow(block: str, kernel: str, tensors: list[torch.Tensor], scalars: list[float], seed: int, offset: int,
          training: bool) -> list[torch.Tensor]:
    """`_run` for the C++ kernel, which had no template for this call: run it, and hand over the template."""
    sig = signature(block, training)
    built, given = _prepared(sig, "" if training else kernel, tensors)
    outputs = built.run_positional(given, scalars, seed % _U64, offset % _U64)
    if native.remember(built, built.template_for(given), (block, kernel, training), tensors):
        kernels.keep(built)  # the C++ template points into it
    return outputs


#: None when the C++ kernels serve `resgen::run` (resgen.runtime.native), else why the Python ones do.
NATIVE = native.load()
if NATIVE is None:
    for _key in ("CPU", "CUDA"):
        _library.impl("_slow", _slow, _key)
else:
    for _key in ("CPU", "CUDA"):
        _library.impl("run", _run, _key)


@torch.library.register_fake("resgen::run", lib=_library)
def _run_fake(block: str, kernel: str, tensors: list[torch.Tensor], scalars: list[float], seed: int, offset: int,
              training: bool) -> list[torch.Tensor]:
    sig = signature(block, training)
    lead, hidden = sig.lead_hidden(tensors)
    return [tensors[0].new_empty(value_shape(o.node, o.dtype, tuple(lead), hidden), dtype=o.dtype.torch_dtype)
            for o in sig.block.outputs]


run = torch.ops.resgen.run.default


def _direct(tensors: Sequence[torch.Tensor]) -> bool:
    """Nothing traces or intercepts this call (no torch.compile, no dispatch or torch-function mode such
    as fake tensors or functionalization) and the tensors are plain: the op's kernels would reach the
    Python below, so call it without the dispatcher, whose two crossings cost more than the launch."""
    return (not torch.compiler.is_compiling()  # first: Dynamo reads it as a constant and traces none of the rest
            and _current_dispatch_mode() is None and not torch._C._is_torch_function_mode_enabled()
            and all(type(t) is torch.Tensor for t in tensors))


def _below_autograd(block: str, kernel: str, tensors: list[torch.Tensor], scalars: list[float], seed: int,
                    offset: int, training: bool) -> list[torch.Tensor]:
    """The op below its autograd key: its backend kernel, directly when it is Python and nothing
    intercepts the call."""
    if NATIVE is not None and _direct(tensors):
        return _run(block, kernel, tensors, scalars, seed, offset, training)
    with torch._C._AutoDispatchBelowAutograd():
        return run(block, kernel, tensors, scalars, seed, offset, training)


class _Autograd(torch.autograd.Function):
    """The op's autograd: the forward below autograd, the backward the generated kernel through the op."""

    @staticmethod
    def forward(ctx: Any, block: str, kernel: str, scalars: list[float], seed: int, offset: int, training: bool,
                *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        output = _below_autograd(block, kernel, list(tensors), scalars, seed, offset, training)
        sig = signature(block)
        ctx.wrt = tuple(n for n, t in zip(sig.tensors, tensors, strict=True) if t.requires_grad)
        ctx.block, ctx.names, ctx.scalars, ctx.seed, ctx.offset = block, sig.tensors, scalars, seed, offset
        ctx.training, ctx.outputs = training, sig.outputs
        ctx.meta = [(t.shape, t.dtype, t.device) for t in output]
        ctx.save_for_backward(*tensors, *output)
        ctx.mark_non_differentiable(*output[len(sig.outputs):])  # a training forward's statistics
        return tuple(output)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, *grads: torch.Tensor | None) -> tuple:
        got = _gradients(ctx, grads) if ctx.wrt else {}
        return (None,) * 6 + tuple(got.get(n) for n in ctx.names)


def _autograd(block: str, kernel: str, tensors: list[torch.Tensor], scalars: list[float], seed: int, offset: int,
              training: bool) -> list[torch.Tensor]:
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return list(_Autograd.apply(block, kernel, scalars, seed, offset, training, *tensors))
    return _below_autograd(block, kernel, tensors, scalars, seed, offset, training)


_library.impl("_grad" if NATIVE is None else "run", _autograd, "Autograd")


def run_op(block: str, kernel: str, tensors: list[torch.Tensor], scalars: list[float], seed: int, offset: int,
        training: bool) -> list[torch.Tensor]:
    """A call of `resgen::run`: through the dispatcher when its kernels are C++ or something traces or
    intercepts the call, else its Python autograd kernel directly (the same work without the
    dispatcher's crossings)."""
    if NATIVE is not None and _direct(tensors):
        return _autograd(block, kernel, tensors, scalars, seed, offset, training)
    return run(block, kernel, tensors, scalars, seed, offset, training)


def _gradients(ctx: Any, grads: Sequence[torch.Tensor | None]) -> dict[str, torch.Tensor]:
    """The gradients of ctx.wrt: the generated backward kernel, through the op."""
    saved = ctx.saved_tensors
    values: dict[str, torch.Tensor] = dict(zip(ctx.names, saved, strict=False))
    statistics = saved[len(ctx.names) + len(ctx.outputs):]  # the training forward's saved_<k>, in order
    if not ctx.training:  # called with training=False: recompute the statistics with a training forward
        statistics = run_op(ctx.block, "", list(saved[:len(ctx.names)]), ctx.scalars, ctx.seed, ctx.offset,
                         True)[len(ctx.outputs):]
    values.update((f"saved_{k}", s) for k, s in enumerate(statistics))
    for name, g, (shape, dtype, device) in zip(ctx.outputs, grads, ctx.meta, strict=False):
        # torch hands expanded gradients (stride 0) to backward functions: the kernel reads rows of memory
        values[f"d_{name}"] = torch.zeros(shape, dtype=dtype, device=device) if g is None else g.contiguous()
    text, same = backward_of(ctx.block, ctx.wrt)
    sig = signature(text)
    scalars = dict(zip(signature(ctx.block).scalars, ctx.scalars, strict=True))
    result = run_op(text, "", [values[n] for n in sig.tensors], [scalars[n] for n in sig.scalars], ctx.seed,
                 ctx.offset, False)
    by_name = dict(zip(sig.outputs, result, strict=True))
    return {n: by_name[same.get(f"d_{n}", f"d_{n}")] for n in ctx.wrt}


def _int64(name: str, value: Any) -> int:
    value = check_int64(name, value)
    return value - _U64 if value >= 1 << 63 else value


def call(kernel: Kernel, kwargs: dict[str, Any]) -> Outputs:
    """Run `kernel` on `kwargs` through `resgen::run`: what a call does under torch.compile or when it
    records gradients. Outputs preallocated by the caller receive the results."""
    block, sig = kernel.block, kernel.op
    params = (*sig.tensors, *sig.scalars)
    unknown = sorted(set(kwargs) - set(params) - set(CALL_KEYWORDS) - set(sig.outputs))
    missing = [n for n in params if n not in kwargs]
    if unknown or missing:
        raise LaunchError(f"block {block.name!r} takes {sorted(params)} (+ seed, offset); "
                          f"unknown {unknown}, missing {missing}")
    tensors = [kwargs[n] for n in sig.tensors]
    for name, t in zip(sig.tensors, tensors, strict=True):
        if not isinstance(t, torch.Tensor):
            raise LaunchError(f"argument {name!r} must be a torch.Tensor, got {type(t).__name__}")
    scalars = [check_scalar(n, kwargs[n]) for n in sig.scalars]
    training = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    if training:
        kinds = {p.name: p.op for p in block.params}
        for name, t in zip(sig.tensors, tensors, strict=True):
            if t.requires_grad and kinds[name] not in DIFFERENTIABLE:
                raise LaunchError(f"argument {name!r} requires grad, but a {kinds[name]} is not "
                                  f"differentiated; detach it")
        tensors = sig.spare_overwritten(tensors)  # for the backward, the values the inputs had
    results = run_op(sig.text, kernel.op_kernel, tensors, scalars, _int64("seed", kwargs.get("seed", 0)),
                  _int64("offset", kwargs.get("offset", 0)), training)
    outs = dict(zip(sig.outputs, results, strict=False))  # a training forward's statistics stay inside
    for name, source in sig.inplace:
        outs[name] = kwargs[source].copy_(outs[name])
    for name in sig.outputs:
        if name in kwargs:
            outs[name] = kwargs[name].copy_(outs[name])
    return Outputs(outs)
