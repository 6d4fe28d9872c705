"""resgen::run's C++ kernels (resgen.runtime.native): what they keep, what they hand back to Python,
and the Python kernels that serve the op without them. Their outputs against the Python path's, on
every backend: tests/test_gpu.py::test_the_ops_cpp_warm_path_matches_its_python_path."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

import resgen as rg
from resgen.runtime import native, ops
from resgen.verification import random_inputs
from tests.conftest import op_arguments, python_path

ROOT = Path(__file__).resolve().parents[1]

needs_native = pytest.mark.skipif(ops.NATIVE is not None, reason=f"the op's kernels are Python here: {ops.NATIVE}")


def test_ci_serves_the_op_from_cpp():
    # CI has a C++ compiler and torch's headers: a failed build there is a bug, not a fallback
    assert ops.NATIVE is None, ops.NATIVE


@needs_native
def test_a_layout_is_handed_to_cpp_once_and_a_new_one_goes_to_python():
    block = rg.catalog.gpt2(rg.bf16)
    kernel = rg.compile(block, 328, backend="emu")
    args = random_inputs(block, (7,), 328, seed=1)
    call = op_arguments(kernel, args)
    start = native.counts()
    for _ in range(3):
        ops.run(*call)
    after = native.counts()
    assert (after["misses"] - start["misses"], after["hits"] - start["hits"]) == (1, 2)
    assert after["templates"] == start["templates"] + 1
    wider = op_arguments(kernel, random_inputs(block, (9,), 328, seed=2))  # other shapes: another template
    ops.run(*wider)
    ops.run(*wider)
    last = native.counts()
    assert (last["misses"] - after["misses"], last["hits"] - after["hits"]) == (1, 1)


@needs_native
def test_a_sanitizing_kernel_stays_in_python_where_it_reports():
    block = rg.catalog.llama(rg.f32)
    kernel = rg.compile(block, 64, backend="emu", sanitize=True)
    call = op_arguments(kernel, random_inputs(block, (3,), 64, seed=3))
    start = native.counts()
    for _ in range(2):
        ops.run(*call)
    after = native.counts()
    assert after["misses"] - start["misses"] == 2 and after["templates"] == start["templates"]


@needs_native
def test_errors_from_the_python_side_keep_their_type_and_message():
    block = rg.catalog.llama(rg.bf16)
    kernel = rg.compile(block, 64, backend="emu")
    args = random_inputs(block, (3,), 64)
    text, spec, tensors, scalars, *rest = op_arguments(kernel, args)
    with pytest.raises(rg.LaunchError, match="takes 3 tensors"):
        ops.run(text, spec, tensors[:2], scalars, *rest)
    with pytest.raises(rg.LaunchError, match="'weight'"):  # a layout the C++ kernel has never seen
        ops.run(text, spec, [*tensors[:2], tensors[2][:32]], scalars, *rest)


@needs_native
def test_remember_rejects_a_template_that_points_outside_the_call():
    block = rg.catalog.llama(rg.bf16)
    kernel = rg.compile(block, 64, backend="emu")
    args = random_inputs(block, (2,), 64)
    tensors = [args[n] for n in kernel.op.tensors]
    table, dtypes = native.encode(kernel, kernel.template_for(tensors) or _warmed(kernel, tensors))
    at = 4 + table[3]  # past backend, runtime, context and the copies: the allocations' sizes, then the outputs
    for _ in dtypes:
        at += 1 + table[at]
    assert table[at] == len(kernel.op.outputs)
    bad = list(table)
    bad[at + 1] = 99  # an output that is no value of the call
    with pytest.raises(RuntimeError, match="resgen::_remember: no value 99"):
        torch.ops.resgen._remember("never", "called", False, tensors, dtypes, bad)
    with pytest.raises(RuntimeError, match="ends early|runs past"):
        torch.ops.resgen._remember("never", "called", False, tensors, dtypes, table[:-3])
    bad[at] = -(1 << 62)  # a length that would allocate without end
    with pytest.raises(RuntimeError, match="runs past the template's end"):
        torch.ops.resgen._remember("never", "called", False, tensors, dtypes, bad)
    with pytest.raises(RuntimeError, match="left over"):
        torch.ops.resgen._remember("never", "called", False, tensors, dtypes, [*table, 0])


def _warmed(kernel: rg.Kernel, tensors: list[torch.Tensor]):
    kernel.run_positional(tensors, [], 0, 0)
    return kernel.template_for(tensors)


@needs_native
def test_threads_calling_the_op_get_their_own_results():
    block = rg.catalog.llama(rg.bf16)
    kernel = rg.compile(block, 256, backend="emu")
    calls = [op_arguments(kernel, random_inputs(block, (rows,), 256, seed=rows)) for rows in (1, 2, 3, 4)]
    want = [python_path(c) for c in calls]
    failures: list[str] = []

    def worker(k: int) -> None:
        for _ in range(20):
            for a, b in zip(ops.run(*calls[k]), want[k], strict=True):
                if not torch.equal(a, b):
                    failures.append(f"call {k}")

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures


def test_the_python_kernels_serve_the_op_without_the_cpp_ones():
    # RESGEN_NATIVE_OP=0 (or a failed build) leaves the op to its Python kernels: the op's own tests pass there
    env = {**os.environ, native.SETTING: "0"}
    probe = subprocess.run([sys.executable, "-c", "from resgen.runtime import ops; print(ops.NATIVE)"], env=env,
                           capture_output=True, text=True, cwd=ROOT)
    assert probe.stdout.strip() == f"{native.SETTING}=0", probe.stderr
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                             "tests/test_torch_integration.py"], env=env, capture_output=True, text=True, cwd=ROOT,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
