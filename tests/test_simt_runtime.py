"""The SIMT runtime catches what a GPU could hide: missing and divergent barriers."""

from __future__ import annotations

import pytest
import torch

import resgen as rg
from resgen.codegen import LaunchConfig, plan_and_source
from resgen.runtime.emu import EmuBackend
from resgen.runtime.kernel import Kernel
from resgen.verification import random_inputs

BARRIER = "        __syncthreads();\n"


def kernel_with(source_edit, block: rg.Block, hidden: int, config: LaunchConfig) -> Kernel:
    plan, source = plan_and_source(block, hidden, config)
    assert BARRIER in source
    edited = source_edit(source)
    return Kernel(block, hidden, plan, edited, EmuBackend(plan, edited))


def test_missing_barrier_gives_a_wrong_answer_every_time():
    block = rg.catalog.llama(rg.f32)
    config = LaunchConfig(128, 1, 4, "registers")  # four warps per row: partial sums meet in shared memory
    args = random_inputs(block, (6,), 2048, seed=4)
    want = rg.reference(block, **args)
    good = kernel_with(lambda s: s, block, 2048, config)(**args)
    torch.testing.assert_close(good.y, want.y, rtol=1e-5, atol=1e-5)
    broken = kernel_with(lambda s: s.replace(BARRIER, ""), block, 2048, config)
    for _ in range(3):
        assert not torch.allclose(broken(**args).y, want.y, rtol=1e-2, atol=1e-2)


def test_divergent_barrier_is_reported_not_hung():
    block = rg.catalog.gemma2_sandwich(rg.f32)
    divergent = kernel_with(lambda s: s.replace(BARRIER, "        if (lane % 2) __syncthreads();\n"),
                            block, 2048, LaunchConfig(128, 1, 4, "registers"))
    with pytest.raises(rg.LaunchError, match="deadlock"):
        divergent(**random_inputs(block, (2,), 2048))


def test_dynamic_shared_memory_is_poisoned_per_cta():
    # The smem-staged kernel reads back only what it wrote; every row still verifies.
    report = rg.verify(rg.catalog.gpt2(rg.f32), 1000, 9, backend="emu", config="tpr=32,rows=4,vec=4,cache=smem")
    assert report.ok, report.table()


def test_missing_cluster_barrier_gives_a_wrong_answer():
    block = rg.catalog.gpt2(rg.f32)
    config = LaunchConfig(64, 1, 4, "smem", cluster=4)
    args = random_inputs(block, (3,), 2048, seed=9)
    want = rg.reference(block, **args)
    good = kernel_with(lambda s: s, block, 2048, config)(**args)
    torch.testing.assert_close(good.y, want.y, rtol=1e-5, atol=1e-5)
    exchange = "    rg_cluster_sync();  // every CTA's partials of this phase have arrived: one exchange for all of them\n"
    broken = kernel_with(lambda s: s.replace(exchange, ""), block, 2048, config)
    assert not torch.allclose(broken(**args).y, want.y, rtol=1e-2, atol=1e-2, equal_nan=False)


@pytest.mark.parametrize("threads", ["1", "3"])
def test_ctas_spread_over_os_threads_give_the_same_bits(monkeypatch, threads):
    # Forward (one row per CTA, and a cluster) and backward (persistent CTAs summing columns):
    # every output is bitwise what one OS thread computes.
    cases = [(rg.catalog.llama(rg.bf16), "tpr=64,rows=1,vec=8,cache=registers"),
             (rg.catalog.gpt2(rg.f32), "tpr=64,rows=1,vec=4,cache=smem,cluster=2"),
             (rg.grad(rg.catalog.gpt2(rg.f32)), None)]
    for block, config in cases:
        kernel = rg.compile(block, 1000, backend="emu", config=config)
        args = random_inputs(block, (37,), 1000, seed=5)
        monkeypatch.setenv("RESGEN_EMU_THREADS", "1")
        one = kernel(**args)
        monkeypatch.setenv("RESGEN_EMU_THREADS", threads)
        many = kernel(**args)
        for name, value in one.items():
            assert torch.equal(value.view(torch.uint8), many[name].view(torch.uint8)), (block.name, name)


def test_deadlock_in_one_worker_thread_is_reported(monkeypatch):
    monkeypatch.setenv("RESGEN_EMU_THREADS", "4")
    block = rg.catalog.gemma2_sandwich(rg.f32)
    divergent = kernel_with(lambda s: s.replace(BARRIER, "        if (lane % 2 && blockIdx.x == 5) __syncthreads();\n"),
                            block, 2048, LaunchConfig(128, 1, 4, "registers"))
    with pytest.raises(rg.LaunchError, match="deadlock in CTA 5"):
        divergent(**random_inputs(block, (9,), 2048))
