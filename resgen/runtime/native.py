"""`resgen::run`'s kernels in C++ (templates/op_warm_path.cpp): built once per compiler and torch,
loaded when resgen.runtime.ops is imported, and given the launch template of each layout the op's
Python kernel has run.

A call through the dispatcher then costs about what a plain torch op does: the C++ kernel finds the
template by the call's block, kernel and tensor layouts, allocates the outputs, writes pointers and
scalars into the kernel's arguments and launches. A miss, a sanitizing kernel, or a failed build
falls back to the Python kernels, which do the same work in Python.

RESGEN_NATIVE_OP=0 keeps the Python kernels (the C++ ones are not built).
"""

from __future__ import annotations

import ctypes
import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from resgen.codegen.render import template_dir
from resgen.errors import BackendUnavailableError, CompileError

if TYPE_CHECKING:
    from resgen.runtime.kernel import Kernel
    from resgen.runtime.launch import ArgumentSlots, LaunchTemplate

SETTING = "RESGEN_NATIVE_OP"
LIBRARY = "libresgen_op.so"
FLAGS = ("-std=c++20", "-O2", "-fPIC", "-shared", "-w")

# How an ABI argument gets its value: the codes op_warm_path.cpp reads.
POINTER, CONSTANT, SEED, OFFSET, SCALAR = range(5)
BACKENDS = {"emu": 0, "cuda": 1}


@functools.cache
def load() -> str | None:
    """Load the C++ kernels of `resgen::run` (building them the first time); None when they serve
    the op, else why the Python kernels do. Call after the op's schemas are defined."""
    if os.environ.get(SETTING, "1") == "0":
        return f"{SETTING}=0"
    try:
        from resgen.runtime.cache import cache_root
        from resgen.runtime.emu import built_once, host_compiler

        compiler, _ = host_compiler()
        source = template_dir() / "op_warm_path.cpp"
        torch_dir = Path(torch.__file__).parent
        flags = [*FLAGS, f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
                 f"-I{torch_dir / 'include'}", f"-L{torch_dir / 'lib'}", f"-Wl,-rpath,{torch_dir / 'lib'}"]
        folder = built_once(cache_root() / "native", "op", LIBRARY, (source.read_text(), torch.__version__, *flags),
                            lambda out: [compiler, *flags, str(source), "-o", str(out), "-lc10", "-ltorch_cpu",
                                         "-ldl"])
        torch.ops.load_library(str(folder / LIBRARY))
    except (BackendUnavailableError, CompileError, OSError, RuntimeError) as exc:
        return f"the C++ kernels could not be built or loaded: {str(exc).strip().splitlines()[0][:300]}"
    return None


def counts() -> dict[str, int]:
    """The C++ kernels' templates, and the calls that found one (hits) or went to Python (misses)."""
    templates, hits, misses = torch.ops.resgen._native_counts()
    return {"templates": templates, "hits": hits, "misses": misses}


def remember(kernel: Kernel, template: LaunchTemplate | None, call: tuple[str, str, bool],
             tensors: list[torch.Tensor]) -> bool:
    """Give the C++ kernel the template `kernel` ran a call of `resgen::run(*call, tensors, ...)`
    with (call: its block, kernel and training arguments), so that later calls with these layouts
    skip Python. False when there is nothing to give: no template (no rows), or a sanitizing kernel,
    which reports its findings from Python."""
    if template is None or getattr(kernel._backend, "sanitize", False) or kernel.backend not in BACKENDS:
        return False
    table, dtypes = encode(kernel, template)
    torch.ops.resgen._remember(*call, tensors, dtypes, table)
    return True


def encode(kernel: Kernel, template: LaunchTemplate) -> tuple[list[int], list[torch.Tensor]]:
    """The template as the int list `resgen::_remember` reads (op_warm_path.cpp), and one empty
    tensor per allocation giving its dtype. Values are numbered: the op's tensors in parameter order,
    then the allocations (outputs, then workspaces)."""
    sig, plan, backend = kernel.op, kernel.plan, kernel._backend
    index = {n: i for i, n in enumerate(sig.tensors)}
    allocations = [(n, shape, dtype) for n, shape, dtype in template.allocate] + [
        (n, shape, torch.float32) for n, shape in template.workspaces]
    for k, (name, _shape, _dtype) in enumerate(allocations):
        index[name] = len(sig.tensors) + k
    for out, source in template.aliases:  # written into a copy of the input (the op is functional)
        index[out] = index[source]
    device = template.device

    def entry(name: str) -> int:
        if kernel.backend == "emu":
            return ctypes.cast(backend._launchers[name], ctypes.c_void_p).value
        return backend.functions(device.index)[name]

    def launch(slots: ArgumentSlots, grid: int, threads: int, smem: int) -> list[int]:
        return [grid, threads, smem, *arguments(slots, index, sig.scalars)]

    peel = next((e for e in plan.entries if e.peel), None)
    table = [BACKENDS[kernel.backend], *_runtime(kernel, device),
             len(template.aliases), *(index[source] for _out, source in template.aliases)]
    for _name, shape, _dtype in allocations:
        table += [len(shape), *shape]
    for names in (template.outputs, template.rows, template.weights):
        table += [len(names), *(index[n] for n in names)]
    table += [plan.entries[0].align, int(template.strides_aligned), int(template.peel_strides),
              entry(plan.entries[0].name), entry(peel.name) if peel else 0, entry(plan.entries[-1].name)]
    table += launch(template.arguments, template.grid, template.threads, template.smem_bytes)
    if template.finalize is not None:
        table += [entry(plan.finalize.name), *launch(template.finalize, plan.finalize_grid(), plan.FINALIZE_THREADS, 0)]
    else:
        table.append(0)
    return table, [torch.empty(0, dtype=dtype, device=device) for _n, _s, dtype in allocations]


def _runtime(kernel: Kernel, device: torch.device) -> tuple[int, int]:
    """(emu: the runtime's rg_emu_set_sanitizing, cuda: the device's primary context)."""
    if kernel.backend == "emu":
        return ctypes.cast(kernel._backend.lib.rg_emu_set_sanitizing, ctypes.c_void_p).value, 0
    from cupy.cuda import driver

    from resgen.runtime.cuda import make_context_current

    make_context_current(device.index)
    with torch.cuda.device(device):
        return 0, driver.ctxGetCurrent()


def arguments(slots: ArgumentSlots, index: dict[str, int], scalars: tuple[str, ...]) -> list[int]:
    """[count, (source, value) per ABI argument] for one launch's argument slots."""
    sources = {id(slot): (POINTER, index[name]) for slot, name in slots.pointers}
    sources.update((id(slot), (SCALAR, scalars.index(name))) for slot, name in slots.scalars)
    sources.update((id(slot), (SEED if role == "seed" else OFFSET, 0)) for slot, role in slots.calls)
    out = [len(slots.values)]
    for slot in slots.values:
        source, value = sources.get(id(slot), (CONSTANT, None))
        if source == CONSTANT:
            assert isinstance(slot, (ctypes.c_longlong, ctypes.c_ulonglong)), f"a {type(slot).__name__} constant"
            value = slot.value - (1 << 64) if slot.value >= 1 << 63 else slot.value
        out += [source, value]
    return out
