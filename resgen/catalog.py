"""Built-in blocks: the residual-plus-norm variants real models use, each a factory of dtype."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from resgen.errors import SpecError
from resgen.ir import builder as rg
from resgen.ir.block import Block
from resgen.ir.dtypes import DType, as_dtype, bf16, f32


@dataclass(frozen=True)
class CatalogEntry:
    """A named block family; calling it with a dtype builds the block."""

    name: str
    build: Callable[[DType], Block]

    @property
    def doc(self) -> str:
        return (self.build.__doc__ or "").strip()

    @property
    def summary(self) -> str:
        return self.doc.splitlines()[0] if self.doc else ""

    def __call__(self, dtype: DType | str = bf16) -> Block:
        block = self.build(as_dtype(dtype, what=f"catalog {self.name!r}: argument 'dtype'"))
        block.doc = self.doc
        return block


def llama(dt: DType) -> Block:
    """Pre-norm residual add + RMSNorm (Llama 2/3, Mistral, Mixtral, Qwen 2, DeepSeek).

    h = x + residual; residual_out = h; y = rms_norm(h) * weight, eps 1e-6.
    """
    b = Block("llama")
    h = b.input("x", dt) + b.input("residual", dt)
    b.output("residual_out", h)
    b.output("y", rg.rms_norm(h, b.weight("weight", dt), eps=1e-6))
    return b


def gpt2(dt: DType) -> Block:
    """Pre-norm residual add + LayerNorm with bias (GPT-2, GPT-NeoX, Pythia, OPT, Falcon).

    h = x + residual; residual_out = h; y = layer_norm(h) * weight + bias, eps 1e-5.
    """
    b = Block("gpt2")
    h = b.input("x", dt) + b.input("residual", dt)
    b.output("residual_out", h)
    b.output("y", rg.layer_norm(h, b.weight("weight", dt), b.weight("bias", dt), eps=1e-5))
    return b


def bert(dt: DType) -> Block:
    """Post-norm with bias and dropout (BERT, RoBERTa, original Transformer).

    y = layer_norm(residual + dropout(x + bias, p=0.1)) * weight + ln_bias, eps 1e-12.
    """
    b = Block("bert")
    x, residual = b.input("x", dt), b.input("residual", dt)
    h = residual + rg.dropout(x + b.weight("bias", dt), p=0.1)
    b.output("y", rg.layer_norm(h, b.weight("weight", dt), b.weight("ln_bias", dt), eps=1e-12))
    return b


def deepnorm(dt: DType) -> Block:
    """DeepNorm post-norm (DeepNet, GLM-130B): y = layer_norm(alpha * residual + x), alpha a runtime scalar."""
    b = Block("deepnorm")
    h = b.scalar("alpha") * b.input("residual", dt) + b.input("x", dt)
    b.output("y", rg.layer_norm(h, b.weight("weight", dt), b.weight("bias", dt), eps=1e-5))
    return b


def gemma(dt: DType) -> Block:
    """Gemma pre-norm: fp32 residual stream, RMSNorm scaled by (1 + weight) (Gemma 1/2/3).

    h = x + residual (f32); residual_out = h in f32; y = rms_norm(h) * (1 + weight).
    """
    b = Block("gemma")
    h = b.input("x", dt) + b.input("residual", f32)
    b.output("residual_out", h, dtype=f32)
    b.output("y", rg.rms_norm(h, b.weight("weight", dt), eps=1e-6, offset=1.0), dtype=dt)
    return b


def gemma2_sandwich(dt: DType) -> Block:
    """Gemma-2/3 sandwich norm: residual + RMSNorm(x)·(1+w1), then the next block's pre-norm RMSNorm.

    h = residual + rms_norm(x, w_post); residual_out = h; y = rms_norm(h, w_pre). Two reductions in a row.
    """
    b = Block("gemma2_sandwich")
    x, residual = b.input("x", dt), b.input("residual", dt)
    h = residual + rg.rms_norm(x, b.weight("post_weight", dt), eps=1e-6, offset=1.0)
    b.output("residual_out", h)
    b.output("y", rg.rms_norm(h, b.weight("pre_weight", dt), eps=1e-6, offset=1.0))
    return b


def parallel_residual(dt: DType) -> Block:
    """Parallel attention + MLP residual (GPT-J, GPT-NeoX, Falcon, PaLM): h = residual + attn + mlp, then LayerNorm."""
    b = Block("parallel_residual")
    h = b.input("residual", dt) + b.input("attn", dt) + b.input("mlp", dt)
    b.output("residual_out", h)
    b.output("y", rg.layer_norm(h, b.weight("weight", dt), b.weight("bias", dt), eps=1e-5))
    return b


def llama_fp32_residual(dt: DType) -> Block:
    """Pre-norm add + RMSNorm with the residual stream kept in fp32 (vLLM/TransformerEngine 'residual_in_fp32')."""
    b = Block("llama_fp32_residual")
    h = b.input("x", dt) + b.input("residual", f32)
    b.output("residual_out", h, dtype=f32, inplace="residual")
    b.output("y", rg.rms_norm(h, b.weight("weight", dt), eps=1e-6), dtype=dt)
    return b


class Catalog(Mapping[str, CatalogEntry]):
    """`rg.catalog["llama"](rg.bf16)` builds a block; `rg.catalog.llama` is the same entry."""

    def __init__(self, builders: list[Callable[[DType], Block]]) -> None:
        self._entries = {f.__name__: CatalogEntry(f.__name__, f) for f in builders}

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


catalog = Catalog([llama, gpt2, bert, deepnorm, gemma, gemma2_sandwich, parallel_residual, llama_fp32_residual])
