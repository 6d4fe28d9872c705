"""The cuda backend on a real GPU (marked `gpu`: skipped, with the reason, where none is usable).

scripts/gpu_check.sh runs these on a GPU machine.
"""

from __future__ import annotations

import shutil

import pytest
import torch

import resgen as rg
from resgen.nn import FusedAddLayerNorm, FusedAddRMSNorm
from resgen.verification import compare, random_inputs
from tests.conftest import CATALOG, DTYPES

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("hidden", [1000, 4096, 4097, 16384, 65536])
@pytest.mark.parametrize("dt", DTYPES, ids=str)
@pytest.mark.parametrize("name", CATALOG)
def test_catalog_verifies_on_cuda(name, dt, hidden):
    for rows in (1, 37):
        report = rg.verify(rg.catalog[name](dt), hidden, rows, backend="cuda", seed=rows)
        assert report.ok, report.table()


@pytest.mark.parametrize("config", ["cache=registers", "cache=smem", "cache=global", "tpr=32,rows=4",
                                    "tpr=256,rows=1,cache=smem,cluster=2", "tpr=128,rows=1,cache=registers,cluster=4"])
def test_config_families_verify_on_cuda(config):
    report = rg.verify(rg.catalog.gpt2(rg.bf16), 4096, 300, backend="cuda", config=config)
    assert report.ok, report.table()


@pytest.mark.parametrize("name", ["llama", "gpt2", "bert"])
def test_cluster_kernels_for_very_large_rows(name):
    report = rg.verify(rg.catalog[name](rg.bf16), 262144, 9, backend="cuda",
                       config="tpr=1024,rows=1,vec=8,cache=smem,cluster=8")
    assert report.ok, report.table()


def test_large_shared_memory_cache_opts_in_past_48k():
    k = rg.compile(rg.catalog.parallel_residual(rg.f32), 16384, backend="cuda", config="tpr=512,cache=smem")
    assert k.plan.smem_bytes > 48 * 1024
    report = rg.verify(rg.catalog.parallel_residual(rg.f32), 16384, 33, backend="cuda", config=k.config)
    assert report.ok, report.table()


def test_in_place_strided_and_misaligned_inputs():
    block = rg.catalog.llama_fp32_residual(rg.bf16)
    k = rg.compile(block, 1024, backend="cuda")
    big = random_inputs(block, (6, 4), 1032, seed=1, device="cuda")
    args = {"x": big["x"][:, ::2, 8:], "residual": big["residual"][:, :, :1024].clone(), "weight": big["weight"][:1024]}
    want = rg.reference(block, **args)
    residual = args["residual"]
    got = k(**args)
    assert got.residual_out.data_ptr() == residual.data_ptr()
    assert compare("residual_out", rg.f32, residual, want.residual_out).ok
    assert compare("y", rg.bf16, got.y, want.y).ok
    shifted = {**args, "x": big["x"][:, ::2, 1:1025], "residual": big["residual"][:, :, :1024].clone()}
    assert k.prepare(**shifted).entry.name.endswith("_narrow")
    want = rg.reference(block, **shifted)
    assert compare("y", rg.bf16, k(**shifted).y, want.y).ok


def test_cuda_graph_capture_and_replay():
    block = rg.catalog.gpt2(rg.bf16)
    k = rg.compile(block, 4096, backend="cuda")
    args = random_inputs(block, (64,), 4096, seed=2, device="cuda")
    outs = {"y": torch.empty(64, 4096, dtype=torch.bfloat16, device="cuda"),
            "residual_out": torch.empty(64, 4096, dtype=torch.bfloat16, device="cuda")}
    k(**args, **outs)  # load the module and build the warm path outside capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        k(**args, **outs)
    fresh = random_inputs(block, (64,), 4096, seed=3, device="cuda")
    for name in ("x", "residual"):
        args[name].copy_(fresh[name])
    graph.replay()
    torch.cuda.synchronize()
    want = rg.reference(block, **args)
    assert compare("y", rg.bf16, outs["y"], want.y).ok


def test_two_streams_run_independently():
    block = rg.catalog.llama(rg.bf16)
    k = rg.compile(block, 8192, backend="cuda")
    a1, a2 = (random_inputs(block, (512,), 8192, seed=s, device="cuda") for s in (4, 5))
    s1, s2 = torch.cuda.Stream(), torch.cuda.Stream()
    torch.cuda.synchronize()
    with torch.cuda.stream(s1):
        o1 = k(**a1)
    with torch.cuda.stream(s2):
        o2 = k(**a2)
    torch.cuda.synchronize()
    for args, out in ((a1, o1), (a2, o2)):
        assert compare("y", rg.bf16, out.y, rg.reference(block, **args).y).ok


def test_dropout_masks_match_the_reference_on_gpu():
    block = rg.catalog.bert(rg.f32)
    k = rg.compile(block, 1000, backend="cuda")
    args = random_inputs(block, (37,), 1000, seed=6, device="cuda")
    got, want = k(**args, seed=99, offset=5), rg.reference(block, **args, seed=99, offset=5)
    assert compare("y", rg.f32, got.y, want.y).ok


@pytest.mark.skipif(shutil.which("g++") is None, reason="the emu backend needs g++")
def test_emu_and_cuda_agree():
    block = rg.catalog.gemma2_sandwich(rg.bf16)
    args = random_inputs(block, (9,), 2048, seed=7)
    on_cpu = rg.compile(block, 2048, backend="emu")(**args)
    on_gpu = rg.compile(block, 2048, backend="cuda")(**{k: v.cuda() for k, v in args.items()})
    for name in on_cpu:
        assert compare(name, rg.bf16, on_gpu[name].cpu(), on_cpu[name]).ok


def test_modules_run_on_the_tensors_device():
    with torch.no_grad():
        for module, dtype in ((FusedAddRMSNorm(4096, dtype=torch.bfloat16), rg.bf16),
                              (FusedAddLayerNorm(4096, dtype=torch.float16, residual_in_fp32=True), rg.f16)):
            module = module.cuda()
            x = torch.randn(8, 4096, device="cuda", dtype=dtype.torch_dtype)
            r = torch.randn(8, 4096, device="cuda", dtype=torch.float32 if module.residual_in_fp32 else x.dtype)
            y, residual = module(x, r)
            assert y.device.type == "cuda" and residual.dtype == r.dtype
            assert module._kernels[x.device].backend == "cuda"


def test_device_mismatch_names_the_argument():
    k = rg.compile(rg.catalog.llama(rg.bf16), 256, backend="cuda")
    args = random_inputs(rg.catalog.llama(rg.bf16), (4,), 256, device="cuda")
    args["weight"] = args["weight"].cpu()
    with pytest.raises(rg.LaunchError, match="'weight'"):
        k(**args)


def test_tune_measures_stores_and_compile_uses_the_result(tmp_path, monkeypatch):
    from resgen.tune import db
    from resgen.tune.search import measure, prune

    monkeypatch.setenv("RESGEN_TUNING_DB", str(tmp_path / "tuning.json"))
    block = rg.catalog.llama(rg.bf16)
    survivors, _ = prune(block, 4096, "sm_90", progress=lambda _: None)
    results = measure(block, 4096, 4096, survivors[:4], progress=lambda _: None)
    assert results and all(r["gbps"] > 0 for r in results)
    best = results[0]
    db.store(db.entry_key(block, 4096, torch.cuda.get_device_name(), "sm_90", 4096), {**best, "date": "test"})
    assert rg.compile(block, 4096, backend="cuda", rows=4096).config == rg.LaunchConfig.parse(best["config"])


def test_bench_produces_records_in_the_shared_format():
    from resgen.tune import bench

    records = bench.run_bench([bench.Case("llama", rg.catalog.llama(rg.bf16), "bf16")], [4096], [64, 4096],
                              ["torch"], progress=lambda _: None)
    assert {r["system"] for r in records} >= {"resgen", "torch"}
    for r in records:
        assert set(bench.RECORD_KEYS) <= set(r) and r["gbps"] > 0 and r["copy_gbps"] > 0
        assert ("call_us" in r) == (r["rows"] <= bench.LATENCY_ROWS)
