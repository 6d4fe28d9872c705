"""`rg.compile`: a block specialized, lowered, rendered, built for a backend, and callable."""

from __future__ import annotations

import ctypes
import functools
import threading
from collections.abc import Sequence
from typing import Any, Protocol

import torch

from resgen.codegen import LaunchConfig, plan_and_source
from resgen.codegen.arch import DEFAULT_ARCH
from resgen.codegen.plan import KernelPlan
from resgen.errors import BackendUnavailableError, LaunchError, PlanError
from resgen.ir.block import Block
from resgen.ir.printer import print_block
from resgen.runtime import ops
from resgen.runtime.compile import compile_for_device
from resgen.runtime.launch import Launch, LaunchTemplate, prepare
from resgen.runtime.nvrtc import Resources, parse_resources
from resgen.signature import Outputs, bind, check_int64, check_scalar

BACKENDS = ("auto", "cuda", "emu")


class Backend(Protocol):
    name: str
    device_type: str

    def run(self, entry: str, params: ctypes.Array, grid: int, threads: int, smem_bytes: int,
            device: torch.device) -> None: ...


def cuda_usable() -> str | None:
    """None when a CUDA device and CuPy are usable, else the reason they are not."""
    if not torch.cuda.is_available():
        return "torch sees no CUDA device (torch.cuda.is_available() is False)"
    try:
        import cupy  # noqa: F401
    except ImportError as exc:
        return f"CuPy is not importable ({exc}); pip install 'resgen[gpu]'"
    return None


def device_arch(device: torch.device | int | None = None) -> str:
    major, minor = torch.cuda.get_device_capability(device)
    return f"sm_{major}{minor}"


def resolve_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise LaunchError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    reason = cuda_usable() if backend in ("auto", "cuda") else "not asked for"
    if backend == "auto":
        return "cuda" if reason is None else "emu"
    if backend == "cuda" and reason is not None:
        raise BackendUnavailableError(f"backend='cuda' is not usable: {reason}; use backend='emu' to run the same "
                                      f"kernel on the CPU")
    return backend


def _position_key(tensors: Sequence[torch.Tensor]) -> tuple:
    return tuple((t.shape, t.stride(), t.dtype, t.device) for t in tensors)


class Kernel:
    """A compiled block. Call it with tensors by parameter name (plus seed=, offset=, runtime
    scalars, and optionally preallocated outputs by output name); it returns outputs by name."""

    #: How many argument layouts (shapes, strides, dtypes, devices) a kernel remembers.
    MAX_TEMPLATES = 64

    def __init__(self, block: Block, hidden: int, plan: KernelPlan, source: str, backend: Backend) -> None:
        self.block = block
        self.hidden = hidden
        self.plan = plan
        self.source = source
        self._backend = backend
        self._templates: dict[tuple, LaunchTemplate] = {}
        self._by_position: dict[tuple, LaunchTemplate] = {}  # the op's warm path (run_positional)
        self._scalars = tuple(p.name for p in block.params_of("scalar"))
        self._lock = threading.Lock()
        self._sanitizing = getattr(backend, "sanitize", False)
        # What a call through the custom op `resgen::run` passes (resgen.runtime.ops), fixed here so that
        # Dynamo reads constants when it traces a call.
        self.op = ops.Signature.of(block, print_block(block))
        self.op_kernel = str(plan.config) + (ops.SANITIZE if self._sanitizing else "")
        ops.kernels.remember(self)

    @property
    def backend(self) -> str:
        return self._backend.name

    @property
    def config(self) -> LaunchConfig:
        return self.plan.config

    @property
    def name(self) -> str:
        return self.plan.name

    @functools.cached_property
    def resources(self) -> dict[str, Resources]:
        """ptxas's report for each entry point on the plan's arch (compiled with NVRTC if needed)."""
        binary = compile_for_device(self.source, self.plan.name, self.plan.arch)
        return {e.name: parse_resources(binary.log, e.name) for e in self.plan.entries}

    def prepare(self, **kwargs: Any) -> Launch:
        """Check the arguments and build the launch without running it."""
        call = bind(self.block, kwargs, allow_outputs=True, hidden=self.hidden)
        return prepare(self.block, self.plan, call, self._backend.device_type)

    def __call__(self, **kwargs: Any) -> Outputs:
        """Run the kernel. A call whose tensors have the layout of an earlier call takes the warm path:
        no allocation but the outputs not passed in, no synchronization, capturable in a CUDA graph.
        Under torch.compile, and with grad mode on and a row input or weight that requires grad, the
        call goes through the custom op `resgen::run` (resgen.runtime.ops): traceable without graph
        breaks, and its outputs carry a grad_fn whose backward is the generated backward kernel."""
        if torch.compiler.is_compiling():
            return ops.call(self, kwargs)
        return self.launch(kwargs, torch.is_grad_enabled())

    def launch(self, kwargs: dict[str, Any], grad_mode: bool = False) -> Outputs:
        """Run the kernel on `kwargs` directly (what `resgen::run` does; __call__ without the op)."""
        # One pass over the arguments: the layout key, and whether this call records gradients.
        key, tensors = [], {}
        for k, v in kwargs.items():
            if isinstance(v, torch.Tensor):
                if grad_mode and v.requires_grad:  # an autograd op: the training forward now, the backward later
                    return ops.call(self, kwargs)
                tensors[k] = v
                key.append((k, v.shape, v.stride(), v.dtype, v.device))
            else:
                key.append((k, None))
        key = tuple(key)
        template = self._templates.get(key)
        if template is not None:
            scalars = {n: check_scalar(n, kwargs[n]) for n in self._scalars} if self._scalars else {}
            seed, offset = check_int64("seed", kwargs.get("seed", 0)), check_int64("offset", kwargs.get("offset", 0))
            outputs = self._warm(template, tensors, scalars, seed, offset)
            if outputs is not None:
                return Outputs(outputs)
        return self._cold(kwargs, key, tensors)

    def run_positional(self, tensors: Sequence[torch.Tensor], scalars: Sequence[float], seed: int,
                       offset: int) -> list[torch.Tensor]:
        """The custom op's call (resgen.runtime.ops): tensors and scalars in parameter order (`op`), seed and
        offset already checked, no outputs passed; the outputs in block order. A layout seen before takes the
        warm path without building keyword arguments (the op's own dispatch is what it saves for)."""
        key = _position_key(tensors)
        template = self._by_position.get(key)
        named = dict(zip(self.op.tensors, tensors, strict=True))
        values = dict(zip(self.op.scalars, scalars, strict=True)) if scalars else {}
        if template is not None:
            outputs = self._warm(template, named, values, seed, offset)
            if outputs is not None:
                return [outputs[n] for n in self.op.outputs]
        kwargs = {**named, **values, "seed": seed, "offset": offset}
        layout = tuple((k, v.shape, v.stride(), v.dtype, v.device) if isinstance(v, torch.Tensor) else (k, None)
                       for k, v in kwargs.items())  # the key `launch` files its template under
        out = self._cold(kwargs, layout, dict(named))
        template = self._templates.get(layout)
        if template is not None and len(self._by_position) < self.MAX_TEMPLATES:  # (none without rows)
            self._by_position[key] = template
        return [out[n] for n in self.op.outputs]

    def template_for(self, tensors: Sequence[torch.Tensor]) -> LaunchTemplate | None:
        """The launch template `run_positional` keeps for these tensors' layouts, if it has one."""
        return self._by_position.get(_position_key(tensors))

    def _warm(self, template: LaunchTemplate, tensors: dict[str, torch.Tensor], scalars: dict[str, float], seed: int,
              offset: int) -> dict[str, torch.Tensor] | None:
        """Launch from a remembered layout; None when this call's pointers need the checked path (overlap)."""
        with self._lock:
            filled = template.fill(tensors, scalars, seed, offset)
            if filled is None:
                return None
            entry, outputs = filled
            self._observe(tensors)
            self._backend.run(entry.name, template.arguments.params, template.grid, template.threads,
                              template.smem_bytes, template.device)
            if template.finalize is not None:
                self._finalize(template.finalize.params, template.device)
            return outputs

    def _cold(self, kwargs: dict[str, Any], key: tuple, tensors: dict[str, torch.Tensor]) -> Outputs:
        """The checked path: bind and check every argument, launch, and remember the layout under `key`."""
        launch = self.prepare(**kwargs)
        device = next(iter(launch.outputs.values())).device
        if launch.grid:
            params, _values = launch.kernel_params()
            self._observe({**{k: v for k, v in kwargs.items() if isinstance(v, torch.Tensor)}, **launch.outputs,
                           **launch.scratch})
            self._backend.run(launch.entry.name, params, launch.grid, launch.threads, launch.smem_bytes, device)
        if launch.finalize is not None:  # zeros when there are no rows
            params, _values = launch.finalize_params()
            self._observe({**launch.outputs, **launch.scratch})
            self._finalize(params, device)
        if launch.grid:
            if len(self._templates) < self.MAX_TEMPLATES:
                self._templates[key] = LaunchTemplate.of(self.block, self.plan, launch, dict(tensors))
        return Outputs(launch.outputs)

    def _finalize(self, params: ctypes.Array, device: torch.device) -> None:
        """The column reductions' second kernel: sum each column's partials in order."""
        self._backend.run(self.plan.finalize.name, params, self.plan.finalize_grid(), self.plan.FINALIZE_THREADS,
                          0, device)

    def _observe(self, tensors: dict[str, torch.Tensor]) -> None:
        """A sanitizing backend learns the memory of this call's tensors before the launch."""
        if self._sanitizing:
            self._backend.observe(tensors)

    def __repr__(self) -> str:
        return f"<Kernel {self.plan.name} backend={self.backend}>"


def compile(block: Block, hidden: int, backend: str = "auto", config: LaunchConfig | str | None = None,
            arch: str | None = None, rows: int | None = None,
            sanitize: bool = False) -> Kernel:  # noqa: A001 - DESIGN.md's name
    """Specialize `block` for `hidden`, generate its kernel and build it for `backend`.

    backend: "cuda" (a GPU through CuPy), "emu" (the CPU emulator) or "auto" (cuda when usable).
    config: a LaunchConfig or "tpr=..,vec=.." overrides; None takes what `resgen tune` stored for
    this block, size and GPU (`rows` picks the rows bucket), else the heuristic's choice (which,
    given `rows`, spreads too few rows to fill the GPU over thread-block clusters).
    sanitize: build the emu kernel with the sanitizer (rg.verify(..., sanitize=True) reads it).
    """
    if not isinstance(block, Block):
        raise LaunchError(f"compile: argument 'block' must be a resgen Block, got {type(block).__name__}")
    if config is not None and not isinstance(config, (LaunchConfig, str)):
        raise PlanError(f"compile: argument 'config' must be a LaunchConfig or a 'tpr=..,rows=..' string, got "
                        f"{type(config).__name__} (a dict: LaunchConfig(**d))")
    name = resolve_backend(backend)
    if sanitize and name != "emu":
        raise BackendUnavailableError("sanitize=True runs on the emu backend only; pass backend='emu'")
    if arch is None:
        arch = device_arch() if name == "cuda" else DEFAULT_ARCH
    if config is None and name == "cuda":
        from resgen.tune.db import lookup

        config = lookup(block, hidden, torch.cuda.get_device_name(), arch, rows)
    plan, source = plan_and_source(block, hidden, config, arch, rows)
    if name == "emu":
        from resgen.runtime.emu import EmuBackend

        runner: Backend = EmuBackend(plan, source, sanitize=sanitize)
    else:
        from resgen.runtime.cuda import CudaBackend

        runner = CudaBackend(plan, source)
    return Kernel(block, hidden, plan, source, runner)
