"""torch.nn modules on resgen kernels: norms, fused residual-add + norm, and Gemma's sandwich.

Modules follow their inputs: the block a module compiles is built from the dtypes of the tensors of
each call (and of its parameters), and kernels are kept per (block, device), so `.to()`, `.half()`
and `model.to(torch.bfloat16)` after construction just work, and a changed `eps` takes effect on
the next call. Every call goes through the custom op `resgen::run` (resgen.runtime.ops): traceable
by torch.compile with no graph break, trainable (the backward is the kernel `rg.grad` derives).
Parameter names are torch's and Hugging Face's (`weight`, `bias`), so state dicts load unchanged.

Rounding: `"fused"` (default) computes in float32 and rounds each output once; `"hf"` follows the
Hugging Face implementations' rounding sequence: the residual sum rounded to its dtype before the
norm; RMSNorm with `offset=0` (Llama, Mistral, Qwen2) rounds the normalized value to the input dtype
and then multiplies by the weight (the result in torch's promoted dtype); with `offset != 0` (Gemma)
multiplies by `offset + weight` in float32 and rounds once; LayerNorm rounds once (torch's).

To change what a module computes, subclass it and override `block(x, residual, weight,
residual_out)`: it returns the rg.Block for those dtypes, with parameters `x`, `residual` (when
given), `weight`, `bias` (when the module has them) in that order and outputs `y` (then
`residual_out`, when asked for). List any new setting in `SETTINGS` so that changing it recompiles.
"""

from __future__ import annotations

import functools
import weakref
from typing import Any

import torch
from torch import nn

import resgen.ir.builder as rgb
from resgen.errors import LaunchError
from resgen.ir.block import Block, Value
from resgen.ir.dtypes import DType, as_dtype
from resgen.ir.printer import print_block
from resgen.runtime import ops
from resgen.runtime.kernel import Kernel

ROUNDINGS = ("fused", "hf")

_modules: weakref.WeakValueDictionary[str, _Norm] = weakref.WeakValueDictionary()


@functools.lru_cache(maxsize=1024)
def _text(spec: str, x: torch.dtype, residual: torch.dtype | None, weight: torch.dtype | None) -> str:
    kind, _, names = spec.partition(":")
    try:
        norms = [_modules[name] for name in names.split("|")]
    except KeyError:
        raise LaunchError(f"resgen.nn: the module behind {spec!r} no longer exists") from None
    if kind == "sandwich":
        return print_block(sandwich_block(*norms, x, residual))
    return print_block(norms[0].block(x, residual, weight, residual_out=kind == "add"))


@torch._dynamo.assume_constant_result
def _block_text(spec: str, x: torch.dtype, residual: torch.dtype | None, weight: torch.dtype | None) -> str:
    """The printed block for a module spec and the call's dtypes: a constant to torch.compile."""
    return _text(spec, x, residual, weight)


def _run(text: str, tensors: list[torch.Tensor], scalars: list[float] | None = None) -> list[torch.Tensor]:
    """The op when its kernels are C++ (the fastest call there is), under torch.compile and when recording
    gradients; else the same kernel, called directly."""
    training = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    if training or ops.NATIVE is None or torch.compiler.is_compiling():
        return ops.run_op(text, "", tensors, scalars or [], 0, 0, training)
    return ops.launch(ops.signature(text), "", tensors, scalars or (), 0, 0)


class _Norm(nn.Module):
    """What RMSNorm and LayerNorm share: settings, the spec that names the block, the calls."""

    SETTINGS: tuple[str, ...] = ("eps", "rounding")

    def __init__(self, hidden: int, eps: float, elementwise_affine: bool, bias: bool, rounding: str,
                 dtype: torch.dtype | None, device: torch.device | str | None, init: float) -> None:
        super().__init__()
        if isinstance(hidden, (tuple, list)) and len(hidden) == 1:
            hidden = hidden[0]
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
            raise ValueError(f"hidden must be an int >= 1 (the size of the last dimension), got {hidden!r}")
        self.hidden = hidden
        self.eps = eps
        self.rounding = rounding
        if dtype is not None:
            as_dtype(dtype, what="dtype")  # a dtype resgen stores: float32, float16 or bfloat16
        factory = {"dtype": dtype, "device": device}
        self.weight = nn.Parameter(torch.full((hidden,), init, **factory)) if elementwise_affine else None
        self.bias = nn.Parameter(torch.zeros(hidden, **factory)) if elementwise_affine and bias else None

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "rounding" and value not in ROUNDINGS:
            raise ValueError(f"rounding must be one of {', '.join(map(repr, ROUNDINGS))}, got {value!r}")
        if name == "eps" and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0):
            raise ValueError(f"eps must be a number >= 0, got {value!r}")
        super().__setattr__(name, value)
        if name in self.SETTINGS or name in ("weight", "bias"):
            self._respec()

    def __setstate__(self, state: dict) -> None:  # copy.deepcopy and pickle: a spec of its own
        super().__setstate__(state)
        self._respec()

    def _respec(self) -> None:
        has = tuple(getattr(self, n, None) is not None for n in ("weight", "bias"))
        settings = tuple(getattr(self, n, None) for n in self.SETTINGS)
        spec = f"{type(self).__qualname__}#{id(self):x}{settings}{has}"
        object.__setattr__(self, "_spec", spec)  # a plain attribute: torch.compile guards on its value
        _modules[spec] = self

    # The block ---------------------------------------------------------------------------------

    def block(self, x: torch.dtype, residual: torch.dtype | None, weight: torch.dtype | None,
              residual_out: bool = True) -> Block:
        """The block for these dtypes: y = norm(x) or, given `residual`, h = x + residual and
        y = norm(h) (plus `residual_out` = h when asked). Override to customise (module docstring)."""
        b = Block(f"{type(self).__name__.lower()}")
        h = b.input("x", as_dtype(x, what="x"))
        if residual is not None:
            rdt = as_dtype(residual, what="residual")
            h = h + b.input("residual", rdt)
            if self.rounding == "hf":  # HF adds in torch: the sum rounded to the promoted dtype
                h = rgb.cast(h, as_dtype(torch.promote_types(x, residual), what="residual"))
        y = self.norm(b, h, weight)
        b.output("y", y, dtype=self.y_dtype(x, weight) if self.rounding == "hf" else as_dtype(x, what="x"))
        if residual is not None and residual_out:
            b.output("residual_out", h, dtype=rdt)
        return b

    def y_dtype(self, x: torch.dtype, weight: torch.dtype | None) -> DType:
        return as_dtype(x, what="x")

    def norm(self, b: Block, h: Value, weight: torch.dtype | None) -> Value:
        raise NotImplementedError

    def _params(self, b: Block, weight: torch.dtype | None) -> tuple[Value | None, Value | None]:
        w = b.weight("weight", as_dtype(weight, what="weight")) if self.weight is not None else None
        bias = b.weight("bias", as_dtype(self.bias.dtype, what="bias")) if self.bias is not None else None
        return w, bias

    # Calls -------------------------------------------------------------------------------------

    def _check(self, name: str, t: torch.Tensor) -> None:
        if not isinstance(t, torch.Tensor):
            raise LaunchError(f"argument {name!r} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() < 1 or t.shape[-1] != self.hidden:
            raise LaunchError(f"argument {name!r} must have shape [..., hidden] with hidden={self.hidden} "
                              f"(this module's size), got {list(t.shape)}")

    def _wdtype(self) -> torch.dtype | None:
        weight = self._parameters.get("weight")
        return None if weight is None else weight.dtype

    def _call(self, kind: str, rows: tuple[torch.Tensor, ...], residual: torch.dtype | None,
              scalars: list[float] | None = None) -> list[torch.Tensor]:
        """Run the block `kind` names ("norm:", "add:", "addy:") on `rows` and this module's parameters.
        The parameters are read from `_parameters`, which is what nn.Module's __getattr__ does in ~1 us a
        lookup: four of them were a fifth of a call's Python."""
        weight, bias = self._parameters.get("weight"), self._parameters.get("bias")
        text = _block_text(kind + self._spec, rows[0].dtype, residual, None if weight is None else weight.dtype)
        return _run(text, [*rows, *(p for p in (weight, bias) if p is not None)], scalars)

    def _norm_of(self, x: torch.Tensor) -> torch.Tensor:
        self._check("x", x)
        return self._call("norm:", (x,), None)[0]

    def _add_norm_of(self, x: torch.Tensor, residual: torch.Tensor, residual_out: bool = True):
        self._check("x", x)
        self._check("residual", residual)
        out = self._call("add:" if residual_out else "addy:", (x, residual), residual.dtype)
        return (out[0], out[1]) if residual_out else out[0]

    def kernel_for(self, device: torch.device | str, dtype: torch.dtype | None = None,
                   residual: bool = True) -> Kernel:
        """The kernel this module runs on `device` for inputs of `dtype` (default: the weight's),
        with a residual or without (compiled on first use; calls share it)."""
        dtype = dtype or self._wdtype() or torch.float32
        text = _text(("add:" if residual else "norm:") + self._spec, dtype, dtype if residual else None, self._wdtype())
        return ops.kernels.get(text, self.hidden, "", torch.device(device))

    def extra_repr(self) -> str:
        return (f"{self.hidden}, eps={self.eps}, elementwise_affine={self.weight is not None}, "
                f"bias={self.bias is not None}, rounding={self.rounding!r}")


class RMSNorm(_Norm):
    """y = x / sqrt(mean(x^2) + eps) * (offset + weight), like torch.nn.RMSNorm (offset=0) and
    Gemma's RMSNorm (offset=1.0, weight initialised to zero)."""

    SETTINGS = ("eps", "offset", "rounding")

    def __init__(self, hidden: int, eps: float = 1e-6, elementwise_affine: bool = True, offset: float = 0.0,
                 rounding: str = "fused", dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None) -> None:
        self.offset = offset
        super().__init__(hidden, eps, elementwise_affine, False, rounding, dtype, device, 0.0 if offset else 1.0)

    def norm(self, b: Block, h: Value, weight: torch.dtype | None) -> Value:
        w, _ = self._params(b, weight)
        if self.rounding == "hf" and not self.offset:  # Llama: weight * normed.to(input dtype)
            normed = rgb.cast(rgb.rms_norm(h, eps=self.eps), h.dtype)
            return normed * w if w is not None else normed
        return rgb.rms_norm(h, w, eps=self.eps, offset=self.offset)

    def y_dtype(self, x: torch.dtype, weight: torch.dtype | None) -> DType:
        if self.offset or weight is None:
            return as_dtype(x, what="x")
        return as_dtype(torch.promote_types(x, weight), what="y")  # torch's weight * normed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._norm_of(x)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", offset={self.offset}"


class LayerNorm(_Norm):
    """y = (x - mean) / sqrt(var + eps) * weight + bias, like torch.nn.LayerNorm over the last dimension."""

    def __init__(self, hidden: int, eps: float = 1e-5, elementwise_affine: bool = True, bias: bool = True,
                 rounding: str = "fused", dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None) -> None:
        super().__init__(hidden, eps, elementwise_affine, bias, rounding, dtype, device, 1.0)

    def norm(self, b: Block, h: Value, weight: torch.dtype | None) -> Value:
        w, bias = self._params(b, weight)
        return rgb.layer_norm(h, w, bias, eps=self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._norm_of(x)


#: FusedAddRMSNorm's quantized outputs: the catalog entry each one runs (its docstring has the formula).
QUANT = {"fp8_static": "llama_fp8_static", "fp8_dynamic": "llama_fp8_dynamic", "int8_dynamic": "llama_int8_dynamic",
         "mxfp8": "llama_mxfp8", "nvfp4": "llama_nvfp4"}
#: The quants whose kernel takes a per-tensor scale (a runtime scalar: fp8_static's scale, nvfp4's global one).
PER_TENSOR_SCALE = ("fp8_static", "nvfp4")


class FusedAddRMSNorm(RMSNorm):
    """(y, h) = (rms_norm(h) * (offset + weight), h) for h = x + residual, in one kernel; the returned
    residual keeps the residual's dtype (pass it as float32 for a float32 residual stream).
    residual=None: the plain norm of x, and x returned as the residual.

    quant="fp8_static" | "fp8_dynamic" | "int8_dynamic" | "mxfp8" | "nvfp4": the normalized output
    quantized in the same kernel (the catalog's llama_* entries, vLLM's rounding of y):
    forward(x, residual[, scale]) returns (q, scale, residual), scale being the per-tensor one passed
    (fp8_static), float32 per row (fp8_dynamic, int8_dynamic), or the block scales (mxfp8: e8m0 per
    32 columns; nvfp4: e4m3 per 16 columns, q packed two per byte, and `scale` the optional float32
    per-tensor global scale, 1.0 when not passed).
    """

    SETTINGS = ("eps", "offset", "rounding", "quant")

    def __init__(self, hidden: int, eps: float = 1e-6, elementwise_affine: bool = True, offset: float = 0.0,
                 rounding: str = "fused", quant: str | None = None, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None) -> None:
        if quant is not None and quant not in QUANT:
            raise ValueError(f"quant must be None or one of {', '.join(map(repr, QUANT))}, got {quant!r}")
        if quant is not None and (offset or not elementwise_affine):
            raise ValueError("quant needs offset=0 and elementwise_affine=True (the catalog entries' form)")
        self.quant = quant
        super().__init__(hidden, eps, elementwise_affine, offset, rounding, dtype, device)

    def block(self, x: torch.dtype, residual: torch.dtype | None, weight: torch.dtype | None,
              residual_out: bool = True) -> Block:
        if self.quant is None or residual is None:
            return super().block(x, residual, weight, residual_out)
        if not x == residual == weight:
            raise LaunchError(f"quant={self.quant!r}: x, residual and weight must share one dtype, got {x}, "
                              f"{residual}, {weight}")
        from resgen.catalog import catalog

        return catalog[QUANT[self.quant]](as_dtype(x, what="x"), eps=self.eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None, scale: float | None = None) -> tuple:
        if self.quant is None:
            if residual is None:
                return self._norm_of(x), x
            return self._add_norm_of(x, residual)
        if residual is None:
            raise LaunchError(f"quant={self.quant!r}: pass the residual (the quantizing kernel adds it)")
        static = self.quant == "fp8_static"
        if static and scale is None:
            raise LaunchError("argument 'scale' (the per-tensor scale) is required with quant='fp8_static'")
        if scale is not None and self.quant not in PER_TENSOR_SCALE:
            raise LaunchError(f"argument 'scale' (a per-tensor scale) is taken by quant='fp8_static' and 'nvfp4' "
                              f"only, not {self.quant!r}")
        self._check("x", x)
        self._check("residual", residual)
        scalars = [1.0 if scale is None else float(scale)] if self.quant in PER_TENSOR_SCALE else None
        out = self._call("add:", (x, residual), residual.dtype, scalars)
        # outputs in block order: residual_out, q (, scale)
        return (out[1], torch.tensor(float(scale), device=x.device) if static else out[2], out[0])


class FusedAddLayerNorm(LayerNorm):
    """(y, h) = (layer_norm(h) * weight + bias, h) for h = x + residual, in one kernel (see FusedAddRMSNorm)."""

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if residual is None:
            return self._norm_of(x), x
        return self._add_norm_of(x, residual)


def add_norm(norm: RMSNorm | LayerNorm, x: torch.Tensor, residual: torch.Tensor,
             residual_out: bool = True) -> Any:
    """`norm(x + residual)` in one kernel with `norm`'s parameters and settings: (y, x + residual), or
    y alone with residual_out=False (the sum is then never written)."""
    return norm._add_norm_of(x, residual, residual_out)


def sandwich_block(post: RMSNorm, pre: RMSNorm, x: torch.dtype, residual: torch.dtype) -> Block:
    """h = residual + post(x); y = pre(h): the block of a Gemma-2/3 post-norm, add and next pre-norm."""
    b = Block("sandwich_rms_norm")
    xv, rv = b.input("x", as_dtype(x, what="x")), b.input("residual", as_dtype(residual, what="residual"))
    pw = b.weight("post_weight", as_dtype(post.weight.dtype, what="post.weight")) if post.weight is not None else None
    qw = b.weight("pre_weight", as_dtype(pre.weight.dtype, what="pre.weight")) if pre.weight is not None else None
    normed = rgb.rms_norm(xv, pw, eps=post.eps, offset=post.offset)
    if post.rounding == "hf":  # HF: the post-norm's output in x's dtype, added to the residual in torch
        normed = rgb.cast(normed, xv.dtype)
    h = rv + normed
    if pre.rounding == "hf":
        h = rgb.cast(h, as_dtype(torch.promote_types(x, residual), what="residual"))
    b.output("y", rgb.rms_norm(h, qw, eps=pre.eps, offset=pre.offset), dtype=as_dtype(x, what="x"))
    b.output("residual_out", h, dtype=as_dtype(residual, what="residual"))
    return b


def sandwich(post: RMSNorm, pre: RMSNorm, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(pre(h), h) for h = residual + post(x) in one kernel (Gemma-2/3 sandwich norms)."""
    if post.offset != pre.offset or post.rounding != pre.rounding:
        raise LaunchError("sandwich: post and pre norms must share offset and rounding")
    post._check("x", x)
    pre._check("residual", residual)
    text = _block_text("sandwich:" + post._spec + "|" + pre._spec, x.dtype, residual.dtype, None)
    weights = (post._parameters.get("weight"), pre._parameters.get("weight"))  # (see _Norm._call)
    tensors = [x, residual, *(w for w in weights if w is not None)]
    out = _run(text, tensors)  # a training call appends the saved statistics
    return out[0], out[1]


class FusedSandwichRMSNorm(nn.Module):
    """Gemma-2/3's post-norm, residual add and next pre-norm in one kernel: (pre(h), h) for
    h = residual + post(x). Parameters `post.weight` and `pre.weight`."""

    def __init__(self, hidden: int, eps: float = 1e-6, offset: float = 1.0, rounding: str = "fused",
                 dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.post = RMSNorm(hidden, eps, offset=offset, rounding=rounding, dtype=dtype, device=device)
        self.pre = RMSNorm(hidden, eps, offset=offset, rounding=rounding, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return sandwich(self.post, self.pre, x, residual)
