"""`rg.compile`: a block specialized, lowered, rendered, built for a backend, and callable."""

from __future__ import annotations

import functools
from typing import Any, Protocol

import torch

from resgen.codegen import LaunchConfig, plan_and_source
from resgen.codegen.arch import DEFAULT_ARCH
from resgen.codegen.plan import KernelPlan
from resgen.errors import BackendUnavailableError, LaunchError
from resgen.ir.block import Block
from resgen.runtime.compile import compile_for_device
from resgen.runtime.launch import Launch, prepare
from resgen.runtime.nvrtc import Resources, parse_resources
from resgen.signature import Outputs, bind

BACKENDS = ("auto", "cuda", "emu")


class Backend(Protocol):
    name: str
    device_type: str

    def run(self, launch: Launch) -> None: ...


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


class Kernel:
    """A compiled block. Call it with tensors by parameter name (plus seed=, offset=, runtime
    scalars, and optionally preallocated outputs by output name); it returns outputs by name."""

    def __init__(self, block: Block, hidden: int, plan: KernelPlan, source: str, backend: Backend) -> None:
        self.block = block
        self.hidden = hidden
        self.plan = plan
        self.source = source
        self._backend = backend

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
        launch = self.prepare(**kwargs)
        if launch.grid:
            self._backend.run(launch)
        return Outputs(launch.outputs)

    def __repr__(self) -> str:
        return f"<Kernel {self.plan.name} backend={self.backend}>"


def compile(block: Block, hidden: int, backend: str = "auto", config: LaunchConfig | str | None = None,
            arch: str | None = None) -> Kernel:  # noqa: A001 - the public name DESIGN.md gives
    """Specialize `block` for `hidden`, generate its kernel and build it for `backend`.

    backend: "cuda" (a GPU through CuPy), "emu" (the CPU emulator) or "auto" (cuda when usable).
    config: a LaunchConfig or "tpr=..,vec=.." overrides; None takes the tuned or heuristic choice.
    """
    name = resolve_backend(backend)
    if arch is None:
        arch = device_arch() if name == "cuda" else DEFAULT_ARCH
    plan, source = plan_and_source(block, hidden, config, arch)
    if name == "emu":
        from resgen.runtime.emu import EmuBackend

        runner: Backend = EmuBackend(plan, source)
    else:
        from resgen.runtime.cuda import CudaBackend

        runner = CudaBackend(plan, source)
    return Kernel(block, hidden, plan, source, runner)
