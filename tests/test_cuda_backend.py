"""The cuda backend's host side, on the CPU: module loading per device, the opt-in for large shared
memory, and the exact argument array handed to cuLaunchKernel (CuPy's driver calls are recorded)."""

from __future__ import annotations

import contextlib
import ctypes

import numpy as np
import pytest
import torch

import resgen as rg
from resgen.codegen import plan_and_source
from resgen.runtime.cuda import CudaBackend
from resgen.runtime.kernel import Kernel
from resgen.verification import random_inputs

cupy = pytest.importorskip("cupy")
cupy_driver = cupy.cuda.driver


class RecordingDriver:
    def __init__(self) -> None:
        self.loads: list[bytes] = []
        self.attributes: list[tuple[int, int, int]] = []
        self.launches: list[dict] = []
        self.kinds: list[str] = []  # how to read the parameter array, set by the test

    def moduleLoadData(self, image: bytes) -> int:  # noqa: N802 - CuPy's names
        self.loads.append(image)
        return 1000 + len(self.loads)

    def moduleGetFunction(self, module: int, name: str) -> int:  # noqa: N802
        return hash((module, name)) & 0xFFFF

    def ctxGetCurrent(self) -> int:  # noqa: N802
        return 0xC0DE

    def funcSetAttribute(self, function: int, attribute: int, value: int) -> None:  # noqa: N802
        self.attributes.append((function, attribute, value))

    def launchKernel(self, f, gx, gy, gz, bx, by, bz, smem, stream, params, extra):  # noqa: N802
        # Read the array now, as cuLaunchKernel does: its values live only for the call.
        self.launches.append(dict(function=f, grid=(gx, gy, gz), block=(bx, by, bz), smem=smem, stream=stream,
                                  values=_decode(params, self.kinds)))


@pytest.fixture
def driver(monkeypatch):
    recording = RecordingDriver()
    for name in ("moduleLoadData", "moduleGetFunction", "funcSetAttribute", "launchKernel", "ctxGetCurrent"):
        monkeypatch.setattr(cupy_driver, name, getattr(recording, name))
    monkeypatch.setattr("cupy.cuda.Device", lambda index: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)

    class Stream:
        cuda_stream = 0x5EED

    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream())
    return recording


def _decode(address: int, kinds: list[str]) -> list[int | float]:
    """Read back the values a void*[] kernel-parameter array points to."""
    ctype = {"ptr": ctypes.c_void_p, "i64": ctypes.c_longlong, "u64": ctypes.c_ulonglong, "f32": ctypes.c_float}
    pointers = (ctypes.c_void_p * len(kinds)).from_address(address)
    values = [ctype[k].from_address(p).value for k, p in zip(kinds, pointers, strict=True)]
    return [v or 0 for v in values]


def _expected(launch) -> list[int | float]:
    return [float(np.float32(v)) if kind == "f32" else v for kind, v in launch.args]


def test_launch_passes_the_same_abi_array_as_the_emulator(driver):
    block = rg.catalog.deepnorm(rg.bf16)
    plan, source = plan_and_source(block, 1024)
    backend = CudaBackend(plan, source)
    backend.device_type = "cpu"  # CPU tensors stand in for device memory; nothing is dereferenced
    run = backend.run
    backend.run = lambda entry, params, grid, threads, smem, device: run(entry, params, grid, threads, smem,
                                                                        torch.device("cuda", 0))
    kernel = Kernel(block, 1024, plan, source, backend)
    args = random_inputs(block, (37,), 1024)
    outputs = {"y": torch.empty(37, 1024, dtype=torch.bfloat16)}
    launch = kernel.prepare(**args, **outputs)
    kinds = driver.kinds = [kind for kind, _ in launch.args]
    kernel(**args, **outputs)  # cold path
    kernel(**args, **outputs)  # warm path: same layout, same buffers
    assert len(driver.launches) == 2 and len(driver.loads) == 1  # the module loads once per device
    for call in driver.launches:
        assert call["grid"] == (launch.grid, 1, 1) and call["block"] == (plan.threads, 1, 1)
        assert call["stream"] == 0x5EED and call["smem"] == plan.smem_bytes
        assert call["values"] == _expected(launch)
    assert kinds[0] == "f32" and launch.args[0][1] == args["alpha"]  # alpha leads deepnorm's ABI


def test_large_shared_memory_is_opted_in_once_per_entry(driver):
    block = rg.catalog.parallel_residual(rg.f32)
    plan, source = plan_and_source(block, 16384, "tpr=512,rows=1,vec=4,cache=smem")
    assert plan.smem_bytes > 48 * 1024
    backend = CudaBackend(plan, source)
    backend.functions(0)
    backend.functions(0)
    assert len(driver.loads) == 1
    assert [(a, v) for _, a, v in driver.attributes] == [(8, plan.smem_bytes)] * len(plan.entries)
    backend.functions(1)
    assert len(driver.loads) == 2  # a second device gets its own module
