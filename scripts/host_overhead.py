#!/usr/bin/env python3
"""What a warm kernel call costs on the host: the Python between the call and the launch.

The backend's launch is stubbed out, so the figure is the same with or without a GPU (emu kernels,
CPU tensors): argument checks, the layout lookup, pointer reads, alignment and overlap checks, the
argument slots, output allocation. The best of many batches, because shared machines are noisy.

    .venv/bin/python scripts/host_overhead.py [--blocks llama,gpt2,bert] [--rows 1,64]
"""

from __future__ import annotations

import argparse
import time

import torch

import resgen as rg
from resgen.verification import random_inputs


def best_us(kernel: rg.Kernel, arguments: dict, batch: int = 2000, batches: int = 30) -> float:
    kernel(**arguments)
    times = []
    for _ in range(batches):
        start = time.perf_counter()
        for _ in range(batch):
            kernel(**arguments)
        times.append((time.perf_counter() - start) / batch)
    return 1e6 * min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", default="llama,gpt2,bert")
    parser.add_argument("--rows", default="1,64")
    parser.add_argument("--hidden", type=int, default=4096)
    args = parser.parse_args()
    print(f"{'block':<10} {'rows':>5} {'outputs allocated':>18} {'outputs passed':>15}")
    for name in args.blocks.split(","):
        block = rg.catalog[name](rg.bf16)
        kernel = rg.compile(block, args.hidden, backend="emu")
        for rows in (int(r) for r in args.rows.split(",")):
            inputs = random_inputs(block, (rows,), args.hidden)
            passed = {**inputs, **{o.name: torch.empty(rows, args.hidden, dtype=o.dtype.torch_dtype)
                                   for o in block.outputs}}
            kernel(**inputs)
            kernel(**passed)
            kernel._backend.run = lambda *a, **k: None  # the host side only
            allocated_us, passed_us = best_us(kernel, inputs), best_us(kernel, passed)
            del kernel._backend.run
            print(f"{name:<10} {rows:>5} {allocated_us:>15.1f} us {passed_us:>12.1f} us")


if __name__ == "__main__":
    main()
