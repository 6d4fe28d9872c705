"""Built-in blocks: the residual-plus-norm variants real models use, each a factory of dtype."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from resgen.errors import SpecError
from resgen.ir import builder as rg
from resgen.ir.block import Block, hidden_multiple
from resgen.ir.dtypes import DType, as_dtype, bf16, e8m0, f4e2m1, f8e4m3, f32, i8


@dataclass(frozen=True)
class CatalogEntry:
    """A named block family; calling it with a dtype (and the family's keyword parameters: eps,
    dropout p and training, offset, residual_dtype, where it has them) builds the block."""

    name: str
    build: Callable[..., Block]
    trainable: bool = True  # False: an inference block (quantized outputs have no gradient)

    @property
    def doc(self) -> str:
        return (self.build.__doc__ or "").strip()

    @property
    def summary(self) -> str:
        return self.doc.splitlines()[0] if self.doc else ""

    @property
    def parameters(self) -> dict[str, object]:
        """The keyword parameters this family takes, with their defaults."""
        return {n: q.default for n, q in list(inspect.signature(self.build).parameters.items())[1:]}

    @property
    def hidden_multiple(self) -> int:
        """What hidden must be a multiple of: a block scale's group of columns, a packed dtype's pair."""
        return hidden_multiple(self.build(bf16))

    def fit(self, hidden: int) -> int:
        """The smallest hidden size >= `hidden` this family takes (hidden itself for most)."""
        m = self.hidden_multiple
        return -(-hidden // m) * m

    def __call__(self, dtype: DType | str = bf16, **params: object) -> Block:
        dt = as_dtype(dtype, what=f"catalog {self.name!r}: argument 'dtype'")
        block = self.build(dt, **{n: _check_parameter(self, n, v) for n, v in params.items()})
        block.doc = self.doc
        return block


def _check_parameter(entry: CatalogEntry, name: str, value: object) -> object:
    """`value` for the family parameter `name`, checked; SpecError naming it otherwise."""
    what = f"catalog {entry.name!r}: argument {name!r}"
    if name not in entry.parameters:
        known = ", ".join(entry.parameters) or "none"
        raise SpecError(f"{what} is not a parameter of this block; it takes: {known}")
    if name == "residual_dtype":
        return None if value is None else as_dtype(value, what=what)
    if name == "training":
        if not isinstance(value, bool):
            raise SpecError(f"{what} must be True or False, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SpecError(f"{what} must be a finite number, got {value!r}")
    if name == "eps" and not value > 0:
        raise SpecError(f"{what} must be > 0, got {value!r}")
    if name == "min_scale" and not value > 0:
        raise SpecError(f"{what} must be > 0, got {value!r}")
    if name == "p" and not 0 <= value < 1:
        raise SpecError(f"{what} (dropout probability) must be in [0, 1), got {value!r}")
    return float(value)


def llama(dt: DType, eps: float = 1e-6, offset: float = 0.0, residual_dtype: DType | None = None) -> Block:
    """Pre-norm residual add + RMSNorm (Llama 2/3, Mistral, Mixtral, Qwen 2, DeepSeek).

    h = x + residual; residual_out = h; y = rms_norm(h) * (offset + weight), eps 1e-6, offset 0.
    residual_dtype: the residual stream's dtype (input and residual_out), default the model's.
    """
    rt = residual_dtype or dt
    b = Block("llama")
    h = b.input("x", dt) + b.input("residual", rt)
    b.output("residual_out", h, dtype=rt)
    b.output("y", rg.rms_norm(h, b.weight("weight", dt), eps=eps, offset=offset), dtype=dt)
    return b


def gpt2(dt: DType, eps: float = 1e-5, residual_dtype: DType | None = None) -> Block:
    """Pre-norm residual add + LayerNorm with bias (GPT-2, GPT-NeoX, Pythia, OPT, Falcon).

    h = x + residual; residual_out = h; y = layer_norm(h) * weight + bias, eps 1e-5.
    """
    rt = residual_dtype or dt
    b = Block("gpt2")
    h = b.input("x", dt) + b.input("residual", rt)
    b.output("residual_out", h, dtype=rt)
    b.output("y", rg.layer_norm(h, b.weight("weight", dt), b.weight("bias", dt), eps=eps), dtype=dt)
    return b


def bert(dt: DType, eps: float = 1e-12, p: float = 0.1, training: bool = True) -> Block:
    """Post-norm with bias and dropout (BERT, RoBERTa, original Transformer).

    y = layer_norm(residual + dropout(x + bias, p=0.1)) * weight + ln_bias, eps 1e-12; with
    training=False (eval) the dropout is the identity and the block has none.
    """
    b = Block("bert")
    x, residual = b.input("x", dt), b.input("residual", dt)
    biased = x + b.weight("bias", dt)
    h = residual + (rg.dropout(biased, p=p) if training and p > 0 else biased)
    b.output("y", rg.layer_norm(h, b.weight("weight", dt), b.weight("ln_bias", dt), eps=eps))
    return b


def deepnorm(dt: DType, eps: float = 1e-5) -> Block:
    """DeepNorm post-norm (DeepNet, GLM-130B): y = layer_norm(alpha * residual + x), alpha a runtime scalar."""
    b = Block("deepnorm")
    h = b.scalar("alpha") * b.input("residual", dt) + b.input("x", dt)
    b.output("y", rg.layer_norm(h, b.weight("weight", dt), b.weight("bias", dt), eps=eps))
    return b


def gemma(dt: DType, eps: float = 1e-6) -> Block:
    """Gemma pre-norm: RMSNorm scaled by (1 + weight) (Gemma 1/2/3), residual in the model dtype.

    h = x + residual; residual_out = h; y = rms_norm(h) * (1 + weight), eps 1e-6. Hugging Face's
    Gemma keeps the residual stream in the model dtype; gemma_fp32_residual keeps it in float32.
    """
    b = Block("gemma")
    h = b.input("x", dt) + b.input("residual", dt)
    b.output("residual_out", h)
    b.output("y", rg.rms_norm(h, b.weight("weight", dt), eps=eps, offset=1.0))
    return b


def gemma_fp32_residual(dt: DType, eps: float = 1e-6) -> Block:
    """Gemma pre-norm with the residual stream in float32 (a mixed-precision training setup).

    h = x + residual (f32); residual_out = h in f32; y = rms_norm(h) * (1 + weight) in the model dtype.
    """
    b = Block("gemma_fp32_residual")
    h = b.input("x", dt) + b.input("residual", f32)
    b.output("residual_out", h, dtype=f32)
    b.output("y", rg.rms_norm(h, b.weight("weight", dt), eps=eps, offset=1.0), dtype=dt)
    return b


def gemma2_sandwich(dt: DType, eps: float = 1e-6) -> Block:
    """Gemma-2/3 sandwich norm: residual + RMSNorm(x)·(1+w1), then the next block's pre-norm RMSNorm.

    h = residual + rms_norm(x, w_post); residual_out = h; y = rms_norm(h, w_pre). Two reductions in a row.
    """
    b = Block("gemma2_sandwich")
    x, residual = b.input("x", dt), b.input("residual", dt)
    h = residual + rg.rms_norm(x, b.weight("post_weight", dt), eps=eps, offset=1.0)
    b.output("residual_out", h)
    b.output("y", rg.rms_norm(h, b.weight("pre_weight", dt), eps=eps, offset=1.0))
    return b


def parallel_residual(dt: DType, eps: float = 1e-5) -> Block:
    """Parallel attention + MLP residual (GPT-J, GPT-NeoX, Falcon, PaLM): h = residual + attn + mlp, then LayerNorm."""
    b = Block("parallel_residual")
    h = b.input("residual", dt) + b.input("attn", dt) + b.input("mlp", dt)
    b.output("residual_out", h)
    b.output("y", rg.layer_norm(h, b.weight("weight", dt), b.weight("bias", dt), eps=eps))
    return b


def llama_fp32_residual(dt: DType, eps: float = 1e-6, offset: float = 0.0) -> Block:
    """Pre-norm add + RMSNorm with the residual stream kept in fp32 (vLLM/TransformerEngine 'residual_in_fp32')."""
    b = Block("llama_fp32_residual")
    h = b.input("x", dt) + b.input("residual", f32)
    b.output("residual_out", h, dtype=f32, inplace="residual")
    b.output("y", rg.rms_norm(h, b.weight("weight", dt), eps=eps, offset=offset), dtype=dt)
    return b


#: The largest finite float8_e4m3fn, its largest exponent (448 = 1.75 * 2^8), and its smallest normal.
FP8_E4M3_MAX = 448.0
FP8_E4M3_EMAX = 8
FP8_E4M3_TINY = 2.0**-6
#: The largest e2m1 value.
FP4_E2M1_MAX = 6.0
#: Columns per block scale: OCP MX (MXFP8) and NVFP4.
MX_BLOCK = 32
NVFP4_BLOCK = 16


def _llama_quantized(name: str, dt: DType, eps: float) -> tuple[Block, rg.Value]:
    """The add + RMSNorm all llama_* quantized entries share, rounded like vLLM's kernels: the sum in
    the model dtype (`z = input + residual` in scalar_t), the normalized value rounded to the model
    dtype before the weight multiplies it (`(scalar_t)(x * rstd) * weight`, in float32)."""
    b = Block(name)
    h = rg.cast(b.input("x", dt) + b.input("residual", dt), dt)
    b.output("residual_out", h, dtype=dt)
    return b, rg.cast(rg.rms_norm(h, eps=eps), dt) * b.weight("weight", dt)


def llama_fp8_static(dt: DType, eps: float = 1e-6) -> Block:
    """Add + RMSNorm quantized to float8 e4m3 with a per-tensor scale (vLLM fused_add_rms_norm_static_fp8_quant).

    h = x + residual (rounded to dt); residual_out = h; y = (rms_norm(h) rounded to dt) * weight;
    q = e4m3(clamp(y * (1 / scale), -448, 448)), `scale` a runtime scalar (vLLM's scaled_fp8_conversion
    with the inverted scale).
    """
    b, y = _llama_quantized("llama_fp8_static", dt, eps)
    b.output("q", rg.cast(rg.clamp(y * (1.0 / b.scalar("scale")), -FP8_E4M3_MAX, FP8_E4M3_MAX), f8e4m3))
    return b


def llama_fp8_dynamic(dt: DType, eps: float = 1e-6, min_scale: float = 1 / (FP8_E4M3_MAX * 512)) -> Block:
    """Add + RMSNorm quantized to float8 e4m3 per token (vLLM rms_norm_dynamic_per_token_quant, fp8).

    h, residual_out, y as llama_fp8_static; scale = max(row_max(|y|) / 448, min_scale), float32 per row
    (vLLM's min scaling factor 1 / (448 * 512)); q = e4m3(clamp(y / scale, -448, 448)).
    """
    b, y = _llama_quantized("llama_fp8_dynamic", dt, eps)
    scale = rg.maximum(rg.row_max(rg.abs(y)) / FP8_E4M3_MAX, min_scale)
    b.output("q", rg.cast(rg.clamp(y / scale, -FP8_E4M3_MAX, FP8_E4M3_MAX), f8e4m3))
    b.output("scale", scale, dtype=f32)
    return b


def llama_int8_dynamic(dt: DType, eps: float = 1e-6) -> Block:
    """Add + RMSNorm quantized to int8 per token (vLLM rms_norm_dynamic_per_token_quant, int8).

    h, residual_out, y as llama_fp8_static; scale = row_max(|y|) / 127, float32 per row;
    q = i8(y / scale): rounded half to even and saturated to [-128, 127] (a row of zeros: scale 0, q 0).
    """
    b, y = _llama_quantized("llama_int8_dynamic", dt, eps)
    scale = rg.row_max(rg.abs(y)) / 127.0
    b.output("q", rg.cast(y / scale, i8))
    b.output("scale", scale, dtype=f32)
    return b


def llama_mxfp8(dt: DType, eps: float = 1e-6) -> Block:
    """Add + RMSNorm quantized to OCP MX v1.0 MXFP8: e4m3 elements with an e8m0 scale per 32 columns.

    h, residual_out, y as llama_fp8_static; for each block of 32 columns, amax = group_max(|y|) and
    scale = 2^clamp(floor(log2(amax)) - 8, -127, 127), stored as e8m0 (8: e4m3's largest exponent, the
    spec's emax_elem; floor(log2) taken exactly, rg.exponent, as torchao's to_mx FLOOR mode does from
    the exponent bits); q = e4m3(clamp(y / scale, -448, 448)), saturating. A block of zeros gets
    scale 2^-127 and q 0; a NaN in a block gives a NaN scale (0xff) and NaN elements.
    Output shapes: q [..., hidden], scale [..., hidden / 32]; hidden must be a multiple of 32.
    """
    b, y = _llama_quantized("llama_mxfp8", dt, eps)
    exponent = rg.clamp(rg.exponent(rg.group_max(rg.abs(y), MX_BLOCK)) - FP8_E4M3_EMAX, -127, 127)
    scale = rg.cast(rg.exp2(exponent), e8m0)
    b.output("q", rg.cast(rg.clamp(y / scale, -FP8_E4M3_MAX, FP8_E4M3_MAX), f8e4m3))
    b.output("scale", scale)
    return b


def llama_nvfp4(dt: DType, eps: float = 1e-6) -> Block:
    """Add + RMSNorm quantized to NVFP4: e2m1 elements (two per byte) with an e4m3 scale per 16 columns
    and a per-tensor float32 `global_scale` (a runtime scalar; 1.0 when there is none).

    h, residual_out, y as llama_fp8_static; for each block of 16 columns (NVIDIA's two-level recipe,
    as TransformerEngine's NVFP4 cast, with torchao's floor on the block scale):
    scale = e4m3(clamp(group_max(|y|) / 6 * global_scale, 2^-6, 448)) (6: e2m1's largest value;
    2^-6: e4m3's smallest normal, so a block of zeros divides by no zero);
    q = e2m1(clamp(y * (global_scale / scale), -6, 6)), rounded to nearest even.
    Dequantized: q * scale / global_scale. Output shapes: q [..., hidden / 2] (torch.float4_e2m1fn_x2,
    the even column in the low nibble), scale [..., hidden / 16]; hidden must be a multiple of 16.
    """
    b, y = _llama_quantized("llama_nvfp4", dt, eps)
    global_scale = b.scalar("global_scale")
    amax = rg.group_max(rg.abs(y), NVFP4_BLOCK)
    scale = rg.cast(rg.clamp(amax / FP4_E2M1_MAX * global_scale, FP8_E4M3_TINY, FP8_E4M3_MAX), f8e4m3)
    b.output("q", rg.cast(rg.clamp(y * (global_scale / scale), -FP4_E2M1_MAX, FP4_E2M1_MAX), f4e2m1))
    b.output("scale", scale)
    return b


class Catalog(Mapping[str, CatalogEntry]):
    """`rg.catalog["llama"](rg.bf16)` builds a block; `rg.catalog.llama` is the same entry."""

    def __init__(self, builders: list[Callable[..., Block]], inference: list[Callable[..., Block]]) -> None:
        self._entries = {f.__name__: CatalogEntry(f.__name__, f) for f in builders}
        self._entries.update({f.__name__: CatalogEntry(f.__name__, f, trainable=False) for f in inference})

    def __getitem__(self, name: str) -> CatalogEntry:
        try:
            return self._entries[name]
        except KeyError:
            raise SpecError(f"no catalog block named {name!r}; known: {', '.join(self._entries)}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __getattr__(self, name: str) -> CatalogEntry:
        if name.startswith("_"):
            raise AttributeError(name)
        return self[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


catalog = Catalog([llama, gpt2, bert, deepnorm, gemma, gemma_fp32_residual, gemma2_sandwich, parallel_residual,
                   llama_fp32_residual], inference=[llama_fp8_static, llama_fp8_dynamic, llama_int8_dynamic, llama_mxfp8, llama_nvfp4])
