"""Binding call-time keyword arguments to a block's parameters, shared by the reference and kernels."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from resgen.errors import IRTypeError, LaunchError
from resgen.ir.block import Block, check_hidden_fits
from resgen.ir.dtypes import DType
from resgen.ir.nodes import Kind, Node

CALL_KEYWORDS = ("seed", "offset")


class Outputs(Mapping[str, torch.Tensor]):
    """A block's results by output name; `out.y` is `out["y"]`."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self._tensors = dict(tensors)

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._tensors[name]

    def __getattr__(self, name: str) -> torch.Tensor:
        try:
            return self._tensors[name]
        except KeyError:
            raise AttributeError(f"no output named {name!r}; outputs: {', '.join(self._tensors)}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}: {tuple(v.shape)} {v.dtype}" for k, v in self._tensors.items())
        return f"Outputs({shapes})"


@dataclass
class BoundCall:
    """Checked arguments of one call; row tensors keep their caller's shape."""

    lead: tuple[int, ...]
    hidden: int
    tensors: dict[str, torch.Tensor]
    scalars: dict[str, float]
    seed: int = 0
    offset: int = 0
    outs: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return math.prod(self.lead)


def value_shape(node: Node, dtype: DType, lead: tuple[int, ...], hidden: int) -> tuple[int, ...]:
    """The shape of the tensor holding `node` stored as `dtype`, for rows of leading shape `lead`: a
    group value has hidden // size columns; a packed dtype (f4e2m1) holds two columns per element."""
    if node.kind is Kind.ROWS:
        return lead
    columns = dtype.columns(hidden // node.group if node.kind is Kind.GROUP else hidden)
    return (columns,) if node.kind is Kind.COL else (*lead, columns)


def check_scalar(name: str, value: Any) -> float:
    """A runtime scalar argument as a float; a one-element tensor is accepted."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise LaunchError(f"argument {name!r} is a runtime scalar: pass a Python number, got {type(value).__name__}")
    return float(value)


def check_int64(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**64:
        raise LaunchError(f"argument {name!r} must be an int in [0, 2**64), got {value!r}")
    return value


def bind(block: Block, kwargs: Mapping[str, Any], *, allow_outputs: bool = False,
         hidden: int | None = None) -> BoundCall:
    """Check names, kinds, dtypes and shapes of a call's arguments; errors name the argument."""
    params = {p.name: p for p in block.params}
    outputs = {o.name: o for o in block.outputs}
    known = set(params) | set(CALL_KEYWORDS) | (set(outputs) if allow_outputs else set())
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise LaunchError(f"unknown argument(s) {unknown}; block {block.name!r} takes {sorted(known)}")
    missing = [n for n in params if n not in kwargs]
    if missing:
        raise LaunchError(f"missing argument(s) {missing} for block {block.name!r}")

    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, float] = {}
    for name, p in params.items():
        value = kwargs[name]
        if p.op == "scalar":
            scalars[name] = check_scalar(name, value)
            continue
        tensors[name] = _check_tensor(name, value, p.dtype.torch_dtype)

    row_inputs = [n for n, p in params.items() if p.op == "input"]
    first = tensors[row_inputs[0]]
    if first.dim() < 1:
        raise LaunchError(f"argument {row_inputs[0]!r} must have shape [..., hidden], got a 0-d tensor")
    pack = params[row_inputs[0]].dtype.pack  # values per element of the tensor (f4e2m1: 2)
    if hidden is None:
        hidden = block.hidden if block.is_specialized else first.shape[-1] * pack
    elif first.shape[-1] * pack != hidden:
        raise LaunchError(f"argument {row_inputs[0]!r} has hidden size {first.shape[-1] * pack}, but this kernel was "
                          f"compiled for hidden={hidden}")
    try:
        check_hidden_fits(block, hidden)
    except IRTypeError as e:
        raise LaunchError(f"argument {row_inputs[0]!r}: {e}") from None
    lead = tuple(first.shape[:-1])
    for name, t in tensors.items():
        op = params[name].op
        expected = value_shape(params[name], params[name].dtype, lead, hidden)
        if tuple(t.shape) != expected:
            what = {"input": "[..., hidden] like the other row inputs", "weight": "[hidden]",
                    "row_scalar": "[...], one value per row of the row inputs"}[op]
            if params[name].dtype.pack > 1:
                what += f"; {params[name].dtype!r} holds {params[name].dtype.pack} values per element"
            raise LaunchError(f"argument {name!r} must have shape {list(expected)} ({what}, hidden={hidden}), got {list(t.shape)}")
    if hidden < 1:
        raise LaunchError(f"argument {row_inputs[0]!r}: hidden size must be >= 1, got {hidden}")
    device = first.device
    for name, t in tensors.items():
        if t.device != device:
            raise LaunchError(f"argument {name!r} is on {t.device}, but {row_inputs[0]!r} is on {device}; "
                              f"all tensor arguments must be on one device")

    outs: dict[str, torch.Tensor] = {}
    for name in outputs:
        if name in kwargs:
            o = outputs[name]
            shape = value_shape(o.node, o.dtype, lead, hidden)
            t = _check_tensor(name, kwargs[name], o.dtype.torch_dtype)
            if tuple(t.shape) != shape:
                raise LaunchError(f"output argument {name!r} must have shape {list(shape)}, got {list(t.shape)}")
            outs[name] = t
    return BoundCall(lead, hidden, tensors, scalars,
                     seed=check_int64("seed", kwargs.get("seed", 0)),
                     offset=check_int64("offset", kwargs.get("offset", 0)), outs=outs)


def _check_tensor(name: str, value: Any, dtype: torch.dtype) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise LaunchError(f"argument {name!r} must be a torch.Tensor, got {type(value).__name__}")
    if value.dtype != dtype:
        raise LaunchError(f"argument {name!r} must have dtype {dtype}, got {value.dtype}")
    return value
