#!/usr/bin/env python3
"""What a warm kernel call costs on the host: the Python between the call and the launch.

The backend's launch is stubbed out, so the figure is the same with or without a GPU (emu kernels,
CPU tensors): argument checks, the layout lookup, pointer reads, alignment and overlap checks, the
argument slots, output allocation. The best of many batches, because shared machines are noisy.
The last column is the same call through the custom op `resgen::run` (what torch.compile graphs
and the modules run): the dispatcher, then the op's C++ warm path (resgen.runtime.native), whose
launch calls an empty C function in place of the emulator; or its Python kernels when they serve
the op (RESGEN_NATIVE_OP=0). A second table times the resgen.nn modules called eagerly (no grad)
beside the raw call of the kernel they run.

    .venv/bin/python scripts/host_overhead.py [--blocks llama,gpt2,bert] [--rows 1,64]
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

import resgen as rg
from resgen.nn import FusedAddLayerNorm, FusedAddRMSNorm
from resgen.runtime import ops
from resgen.runtime.emu import host_compiler
from resgen.verification import random_inputs


def best_us(call: Callable[[], object], batch: int = 2000, batches: int = 30) -> float:
    call()
    times = []
    for _ in range(batches):
        start = time.perf_counter()
        for _ in range(batch):
            call()
        times.append((time.perf_counter() - start) / batch)
    return 1e6 * min(times)


@functools.cache
def empty_launcher() -> ctypes._CFuncPtr:
    """An empty C function with the emulator's launcher signature, built once."""
    folder = Path(tempfile.mkdtemp(prefix="resgen-host-"))
    source = folder / "noop.c"
    source.write_text("int noop(void **a, long long g, unsigned t, unsigned long long s, char *e,\n"
                      "         unsigned long long n) { return 0; }\n")
    subprocess.run([host_compiler()[0], "-O2", "-shared", "-fPIC", "-x", "c", str(source), "-o",
                    str(folder / "noop.so")], check=True)
    return ctypes.CDLL(str(folder / "noop.so")).noop


def stub_launches(kernel: rg.Kernel) -> None:
    """Launch nothing: the Python warm path's backend.run does nothing, and the entry points the C++ warm
    path is handed are the empty launcher."""
    kernel._backend.run = lambda *a, **k: None
    kernel._backend._launchers = dict.fromkeys(kernel._backend._launchers, empty_launcher())


def through_op(kernel: rg.Kernel, arguments: dict) -> Callable[[], object]:
    tensors = [arguments[n] for n in kernel.op.tensors]
    scalars = [float(arguments[n]) for n in kernel.op.scalars]
    return lambda: torch.ops.resgen.run.default(kernel.op.text, kernel.op_kernel, tensors, scalars, 0, 0, False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", default="llama,gpt2,bert")
    parser.add_argument("--rows", default="1,64")
    parser.add_argument("--hidden", type=int, default=4096)
    args = parser.parse_args()
    print(f"resgen::run kernels: {'C++' if ops.NATIVE is None else 'Python (' + ops.NATIVE + ')'}\n")
    print(f"{'block':<10} {'rows':>5} {'outputs allocated':>18} {'outputs passed':>15} {'through the op':>15}")
    for name in args.blocks.split(","):
        block = rg.catalog[name](rg.bf16)
        kernel = rg.compile(block, args.hidden, backend="emu")
        for rows in (int(r) for r in args.rows.split(",")):
            inputs = random_inputs(block, (rows,), args.hidden)
            passed = {**inputs, **{o.name: torch.empty(rows, args.hidden, dtype=o.dtype.torch_dtype)
                                   for o in block.outputs}}
            kernel(**inputs)
            kernel(**passed)
            stub_launches(kernel)  # the host side only
            allocated_us = best_us(lambda: kernel(**inputs))  # noqa: B023 - called before the loop moves on
            passed_us = best_us(lambda: kernel(**passed))  # noqa: B023
            op_us = best_us(through_op(kernel, inputs))
            print(f"{name:<10} {rows:>5} {allocated_us:>15.1f} us {passed_us:>12.1f} us {op_us:>12.1f} us")
    print(f"\n{'module':<18} {'rows':>5} {'its kernel, raw':>16} {'the module':>11}")
    for module in (FusedAddRMSNorm(args.hidden, dtype=torch.bfloat16),
                   FusedAddLayerNorm(args.hidden, dtype=torch.bfloat16)):
        kernel = module.kernel_for("cpu")
        for rows in (int(r) for r in args.rows.split(",")):
            x, residual = (torch.randn(rows, args.hidden, dtype=torch.bfloat16) for _ in range(2))
            params = {n: p.detach() for n, p in module.named_parameters()}
            with torch.no_grad():
                stub_launches(kernel)
                module(x, residual)
                raw_us = best_us(lambda: kernel(x=x, residual=residual, **params))  # noqa: B023
                module_us = best_us(lambda: module(x, residual))  # noqa: B023
                print(f"{type(module).__name__:<18} {rows:>5} {raw_us:>13.1f} us {module_us:>8.1f} us")


if __name__ == "__main__":
    main()
