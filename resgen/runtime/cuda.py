"""The `cuda` backend: the NVRTC cubin loaded through CuPy's driver bindings and launched on
torch's current stream, with torch tensors' pointers passed directly (no copies, no sync)."""

from __future__ import annotations

import contextlib
import ctypes
import threading

import torch

from resgen.codegen.plan import KernelPlan
from resgen.runtime.compile import compile_for_device

#: CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
_MAX_DYNAMIC_SMEM = 8
_SMEM_WITHOUT_OPT_IN = 48 * 1024


_thread = threading.local()


def make_context_current(device: int) -> None:
    """Give this thread a current CUDA context when it has none (a thread torch has never used):
    the driver calls below need one, and CuPy's and torch's device guards skip setting the device
    when the runtime already names it current. Asked once per thread, not on every launch."""
    if getattr(_thread, "has_context", False):
        return
    from cupy.cuda import driver, runtime

    if driver.ctxGetCurrent() == 0:
        runtime.setDevice(device)
    _thread.has_context = True


class CudaBackend:
    """Loads the cubin once per device, on first use there, and launches the entry the call needs."""

    name = "cuda"
    device_type = "cuda"

    def __init__(self, plan: KernelPlan, source: str) -> None:
        self.plan = plan
        self.binary = compile_for_device(source, plan.name, plan.arch)
        self._functions: dict[int, dict[str, int]] = {}
        self._lock = threading.Lock()

    def functions(self, device: int) -> dict[str, int]:
        """Entry name -> CUfunction handle on `device`, loading the module there the first time."""
        found = self._functions.get(device)
        if found is not None:
            return found
        from cupy.cuda import Device, driver

        make_context_current(device)
        with self._lock, Device(device):
            if device not in self._functions:
                module = driver.moduleLoadData(self.binary.cubin)
                entries = self.plan.entries + ((self.plan.finalize,) if self.plan.finalize else ())
                handles = {e.name: driver.moduleGetFunction(module, e.name) for e in entries}
                if self.plan.smem_bytes > _SMEM_WITHOUT_OPT_IN:
                    for handle in handles.values():
                        driver.funcSetAttribute(handle, _MAX_DYNAMIC_SMEM, self.plan.smem_bytes)
                self._functions[device] = handles
        return self._functions[device]

    def run(self, entry: str, params: ctypes.Array, grid: int, threads: int, smem_bytes: int,
            device: torch.device) -> None:
        """Launch on the device's current torch stream; cuLaunchKernel copies `params` before returning."""
        from cupy.cuda import driver

        make_context_current(device.index)
        function = self.functions(device.index)[entry]
        stream = torch.cuda.current_stream(device).cuda_stream
        # The launch runs in the current context: make it the tensors' device's when it is not already.
        here = device.index == torch.cuda.current_device()
        with contextlib.nullcontext() if here else torch.cuda.device(device):
            driver.launchKernel(function, grid, 1, 1, threads, 1, 1, smem_bytes, stream, ctypes.addressof(params), 0)
