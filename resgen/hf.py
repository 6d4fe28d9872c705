"""`resgen.hf.patch(model)`: a Hugging Face model's residual adds and norms on resgen kernels, in place.

Driven by one table (ARCHITECTURES), not a function per model: for each supported `model_type`,
the layer classes whose forward is replaced, the pattern of that forward, the norm classes and the
attribute names of the norms to replace, the eps attribute and Gemma's offset. Each norm becomes a
resgen norm holding the same Parameter objects (state_dict keys, optimizers and tied weights are
unchanged); each layer's residual add and the norm after it run as one kernel, while the layer
keeps HF's contract (hidden states in, hidden states out), so `output_hidden_states`, KV caches and
`generate()` behave as before. `transformers` itself is never imported here: the table names
classes, and a model is recognised by its config's `model_type`.

Patterns (the fused forward of a layer, written against HF's own):
- pre_norm (Llama, Mistral, Qwen2, Gemma): input_layernorm -> attention -> residual add fused with
  post_attention_layernorm -> MLP -> residual add.
- sandwich (Gemma2, Gemma3): input_layernorm -> attention -> post_attention_layernorm, residual add
  and pre_feedforward_layernorm in one kernel -> MLP -> post_feedforward_layernorm -> residual add.
- gpt2 (GPT-2): ln_1 -> attention -> residual add fused with ln_2 -> MLP -> residual add; a block
  with cross-attention inputs runs HF's forward (its norms are resgen's).
- post_norm (BERT's SelfOutput and Output): dense -> dropout -> LayerNorm(x + input) in one kernel,
  the sum never written.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from resgen.errors import SpecError
from resgen.nn import ROUNDINGS, LayerNorm, RMSNorm, add_norm, sandwich


@dataclass(frozen=True)
class Architecture:
    layers: tuple[str, ...]  # class names of the modules whose forward is fused
    pattern: str  # pre_norm | sandwich | gpt2 | post_norm
    norm_classes: tuple[str, ...]  # class names of the norms to replace
    norm_names: tuple[str, ...]  # attribute names of the norms to replace (others, like q_norm, stay HF's)
    eps: str  # the norm modules' eps attribute
    offset: float = 0.0  # RMSNorm's (offset + weight): Gemma's 1.0


_LLAMA_NORMS = ("input_layernorm", "post_attention_layernorm", "norm")
_GEMMA2_NORMS = (*_LLAMA_NORMS, "pre_feedforward_layernorm", "post_feedforward_layernorm")

ARCHITECTURES: dict[str, Architecture] = {
    "llama": Architecture(("LlamaDecoderLayer",), "pre_norm", ("LlamaRMSNorm",), _LLAMA_NORMS, "variance_epsilon"),
    "mistral": Architecture(("MistralDecoderLayer",), "pre_norm", ("MistralRMSNorm",), _LLAMA_NORMS,
                            "variance_epsilon"),
    "qwen2": Architecture(("Qwen2DecoderLayer",), "pre_norm", ("Qwen2RMSNorm",), _LLAMA_NORMS, "variance_epsilon"),
    "gemma": Architecture(("GemmaDecoderLayer",), "pre_norm", ("GemmaRMSNorm",), _LLAMA_NORMS, "eps", 1.0),
    "gemma2": Architecture(("Gemma2DecoderLayer",), "sandwich", ("Gemma2RMSNorm",), _GEMMA2_NORMS, "eps", 1.0),
    "gemma3_text": Architecture(("Gemma3DecoderLayer",), "sandwich", ("Gemma3RMSNorm",), _GEMMA2_NORMS, "eps", 1.0),
    "gpt2": Architecture(("GPT2Block",), "gpt2", ("LayerNorm",), ("ln_1", "ln_2", "ln_f"), "eps"),
    "bert": Architecture(("BertSelfOutput", "BertOutput"), "post_norm", ("LayerNorm",), ("LayerNorm",), "eps"),
}
ARCHITECTURES["gemma3"] = ARCHITECTURES["gemma3_text"]  # the multimodal model's text layers


@dataclass
class PatchReport:
    """What `patch` did: the layers fused, the norms replaced, what it left to HF, and a note."""

    model_type: str
    rounding: str
    fused: list[str] = field(default_factory=list)
    norms: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)
    note: str = ""

    def __str__(self) -> str:
        lines = [f"resgen.hf.patch: {self.model_type}, rounding={self.rounding!r}: {len(self.fused)} layers fused, "
                 f"{len(self.norms)} norms on resgen kernels"]
        lines += [f"  fused: {f}" for f in self.fused]
        lines += [f"  left to HF: {f}" for f in self.left]
        if self.note:
            lines.append(f"  note: {self.note}")
        return "\n".join(lines)


def supported() -> list[str]:
    return sorted(ARCHITECTURES)


def patch(model: nn.Module, rounding: str = "hf", fuse: bool = True) -> PatchReport:
    """Put `model`'s norms, and (fuse=True) each layer's residual add + norm, on resgen kernels, in place.

    rounding="hf" reproduces HF's rounding sequence (see resgen.nn); "fused" rounds each output once.
    Patching a patched model changes nothing and says so in the report's note; an unsupported model
    is an error that lists the supported ones and changes nothing.
    """
    if not isinstance(model, nn.Module):
        raise SpecError(f"patch: argument 'model' must be a torch.nn.Module, got {type(model).__name__}")
    if rounding not in ROUNDINGS:
        raise SpecError(f"patch: argument 'rounding' must be one of {', '.join(map(repr, ROUNDINGS))}, got {rounding!r}")
    done = model.__dict__.get("_resgen_patch")
    if done is not None:
        return PatchReport(done.model_type, done.rounding, note=f"already patched (rounding={done.rounding!r}): "
                           "nothing changed; patch a fresh model for other settings")
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    arch = ARCHITECTURES.get(model_type)  # type: ignore[arg-type]
    if arch is None:
        raise SpecError(f"patch: {type(model).__name__} (model_type {model_type!r}) is not supported; resgen.hf "
                        f"patches {', '.join(supported())}. Nothing was changed.")
    _check_transformers()
    report = PatchReport(model_type, rounding)
    norms, layers = _plan(model, arch, report)
    if fuse and not layers:
        raise SpecError(f"patch: no {' or '.join(arch.layers)} modules in this {type(model).__name__}; "
                        f"nothing was changed")
    for path, parent, name, module in norms:  # all checks done: now change the model
        setattr(parent, name, _resgen_norm(module, arch, rounding))
        report.norms.append(path)
    if fuse:
        forward = _PATTERNS[arch.pattern]
        for path, layer in layers:
            _fuse(layer, forward)
            report.fused.append(f"{path}: {_FUSED[arch.pattern]}")
    model.__dict__["_resgen_patch"] = report
    return report


#: The fused forwards return hidden states alone, as HF's layers do from transformers 5 on.
MIN_TRANSFORMERS = (5, 0)


def _check_transformers() -> None:
    try:
        version = importlib.metadata.version("transformers")
    except importlib.metadata.PackageNotFoundError:
        return  # a model from elsewhere with an HF-like config: the table decides
    numbers = tuple(int(part) for part in version.split(".")[:2] if part.isdigit())
    if numbers < MIN_TRANSFORMERS:
        raise SpecError(f"patch: resgen.hf needs transformers >= {'.'.join(map(str, MIN_TRANSFORMERS))} (its layers "
                        f"return hidden states alone), found {version}; pip install 'resgen[hf]'. Nothing was changed.")


def _plan(model: nn.Module, arch: Architecture, report: PatchReport) -> tuple[list, list]:
    """The norms to replace and the layers to fuse; raises, changing nothing, on a surprise."""
    norms, layers = [], []
    for path, module in model.named_modules():
        kind = type(module).__name__
        if kind in arch.layers:
            layers.append((path, module))
        if kind in arch.norm_classes:
            parent_path, _, name = path.rpartition(".")
            if name not in arch.norm_names:
                report.left.append(f"{path} ({kind}): not a residual-stream norm")
                continue
            weight = getattr(module, "weight", None)
            if weight is not None and weight.dim() != 1:
                raise SpecError(f"patch: {path} has a weight of shape {list(weight.shape)}; resgen norms take one "
                                f"vector over the last dimension. Nothing was changed.")
            if not hasattr(module, arch.eps):
                raise SpecError(f"patch: {path} ({kind}) has no {arch.eps!r}; this transformers version is not "
                                f"the one resgen.hf knows. Nothing was changed.")
            norms.append((path, model.get_submodule(parent_path), name, module))
    return norms, layers


def _resgen_norm(module: nn.Module, arch: Architecture, rounding: str) -> nn.Module:
    weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
    hidden = weight.shape[0] if weight is not None else module.normalized_shape[-1]
    eps = float(getattr(module, arch.eps))
    if isinstance(module, nn.LayerNorm):
        new: nn.Module = LayerNorm(hidden, eps=eps, elementwise_affine=weight is not None, bias=bias is not None,
                                   rounding=rounding, device="meta")
    else:
        new = RMSNorm(hidden, eps=eps, offset=arch.offset, rounding=rounding, device="meta")
    new.weight = weight  # the same Parameter objects: state_dict keys and optimizers unchanged
    if isinstance(new, LayerNorm):
        new.bias = bias
    new.train(module.training)
    return new


def _fuse(layer: nn.Module, forward: Callable[..., Any]) -> None:
    original = layer.forward
    target = inspect.unwrap(type(layer).forward)
    params = list(inspect.signature(target).parameters.values())[2:]  # after self and hidden_states
    names = tuple(p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))
    renames = {"past_key_values": "cache"} if "cache" in names else {}  # HF's deprecate_kwarg, kept

    def fused(self: nn.Module, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        call = dict(zip(names, args, strict=False))
        for k, v in kwargs.items():
            call[renames.get(k, k)] = v
        return forward(self, original, hidden_states, args, kwargs, call)

    layer.__dict__["_resgen_original"] = original
    layer.forward = types.MethodType(fused, layer)


def _first(result: Any) -> torch.Tensor:
    return result[0] if isinstance(result, tuple) else result


def _pre_norm(layer: nn.Module, original: Callable, hidden_states: torch.Tensor, args: tuple, kwargs: dict,
              call: dict) -> torch.Tensor:
    attention = _first(layer.self_attn(hidden_states=layer.input_layernorm(hidden_states), **call))
    hidden, residual = add_norm(layer.post_attention_layernorm, attention, hidden_states)
    return residual + layer.mlp(hidden)


def _sandwich(layer: nn.Module, original: Callable, hidden_states: torch.Tensor, args: tuple, kwargs: dict,
              call: dict) -> torch.Tensor:
    attention = _first(layer.self_attn(hidden_states=layer.input_layernorm(hidden_states), **call))
    hidden, residual = sandwich(layer.post_attention_layernorm, layer.pre_feedforward_layernorm, attention,
                                hidden_states)
    return residual + layer.post_feedforward_layernorm(layer.mlp(hidden))


def _gpt2(layer: nn.Module, original: Callable, hidden_states: torch.Tensor, args: tuple, kwargs: dict,
          call: dict) -> torch.Tensor:
    if call.pop("encoder_hidden_states", None) is not None:  # cross-attention between the two: HF's forward
        return original(hidden_states, *args, **kwargs)
    call.pop("encoder_attention_mask", None)
    attention = _first(layer.attn(layer.ln_1(hidden_states), **call))
    hidden, residual = add_norm(layer.ln_2, attention, hidden_states)
    return residual + layer.mlp(hidden)


def _post_norm(layer: nn.Module, original: Callable, hidden_states: torch.Tensor, args: tuple, kwargs: dict,
               call: dict) -> torch.Tensor:
    (input_tensor,) = (*args, *kwargs.values())
    return add_norm(layer.LayerNorm, layer.dropout(layer.dense(hidden_states)), input_tensor, residual_out=False)


_PATTERNS = {"pre_norm": _pre_norm, "sandwich": _sandwich, "gpt2": _gpt2, "post_norm": _post_norm}
_FUSED = {"pre_norm": "residual add + post_attention_layernorm", "sandwich":
          "post_attention_layernorm + residual add + pre_feedforward_layernorm",
          "gpt2": "residual add + ln_2", "post_norm": "residual add + LayerNorm (sum not written)"}
