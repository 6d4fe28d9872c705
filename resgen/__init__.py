"""resgen: a compiler of fused residual-plus-normalization CUDA kernels."""

from __future__ import annotations

__version__ = "0.1.0"  # first: importing resgen.runtime.ops builds its C++ kernels, keyed by it

from resgen.catalog import catalog
from resgen.codegen import LaunchConfig, emit
from resgen.errors import (
    BackendUnavailableError,
    CompileError,
    IRTypeError,
    LaunchError,
    PlanError,
    ResgenError,
    SpecError,
    VerifyError,
)
from resgen.ir.block import Block, Output, Value
from resgen.ir.builder import (
    abs,
    cast,
    clamp,
    col_sum,
    dropout,
    eq,
    exp2,
    exponent,
    floor,
    group_max,
    group_sum,
    gt,
    layer_norm,
    log2,
    maximum,
    minimum,
    rms_norm,
    round,
    row_max,
    row_mean,
    row_sum,
    row_var,
    rsqrt,
    sqrt,
)
from resgen.ir.dtypes import DType, bf16, e8m0, f4e2m1, f8e4m3, f8e5m2, f16, f32, i8
from resgen.passes import pipeline
from resgen.passes.autodiff import grad
from resgen.reference import reference
from resgen.runtime.kernel import Kernel, compile
from resgen.signature import Outputs
from resgen.verification import VerifyReport, verify

__all__ = [
    "BackendUnavailableError", "Block", "CompileError", "DType", "IRTypeError", "Kernel", "LaunchConfig",
    "LaunchError", "Output", "Outputs", "PlanError", "ResgenError", "SpecError", "Value", "VerifyError",
    "VerifyReport", "abs", "bf16", "cast", "catalog", "clamp", "col_sum", "compile", "dropout", "e8m0", "emit", "eq", "exp2",
    "exponent", "f4e2m1", "f8e4m3", "f8e5m2", "f16", "f32", "floor", "grad", "group_max", "group_sum", "gt", "i8", "layer_norm", "log2", "maximum", "minimum", "pipeline",
    "reference", "rms_norm", "round", "row_max", "row_mean", "row_sum", "row_var", "rsqrt", "sqrt", "verify",
]
