"""The device tests: every check that scripts/gpu_check.sh runs on a GPU.

Each test's logic runs on both backends (`backend` is "emu" in every CI run, and "cuda", marked
`gpu`, where a GPU is usable), so a broken test body fails CI instead of waiting for a GPU. Only
what truly needs a device is GPU-only: CUDA graphs, streams, the tuner's timing, the benchmark,
and emu-vs-cuda agreement. Sizes are smaller on emu, where every thread is a CPU fiber.
"""

from __future__ import annotations

import shutil
import threading

import pytest
import torch

import resgen as rg
from resgen.nn import FusedAddLayerNorm, FusedAddRMSNorm
from resgen.passes.autodiff import grad
from resgen.runtime import native, ops
from resgen.verification import compare, random_inputs
from tests.conftest import BACKENDS, CATALOG, DTYPES, device_of, fit, op_arguments, python_path

gpu = pytest.mark.gpu


def per_backend(emu: list, cuda: list) -> list:
    """(backend, value) parameters: `emu` values on the emulator, `cuda` values on a GPU."""
    return [pytest.param("emu", v, id=f"emu-{v}") for v in emu] + [
        pytest.param("cuda", v, id=f"cuda-{v}", marks=gpu) for v in cuda]


@pytest.mark.parametrize("backend, hidden", per_backend([4097], [1000, 4096, 4097, 16384, 65536]))
@pytest.mark.parametrize("dt", DTYPES, ids=str)
@pytest.mark.parametrize("name", CATALOG)
def test_catalog_verifies(backend, hidden, dt, name):
    for rows in (1, 37):
        report = rg.verify(rg.catalog[name](dt), fit(name, hidden), rows, backend=backend, seed=rows)
        assert report.ok, report.table()


FAMILY_CONFIGS = ["cache=registers", "cache=smem", "cache=global", "tpr=32,rows=4,cache=smem",
                  "tpr=256,rows=1,cache=smem,cluster=2", "tpr=128,rows=1,cache=registers,cluster=4"]


@pytest.mark.parametrize("config", FAMILY_CONFIGS)
@pytest.mark.parametrize("backend, rows", per_backend([37], [300]))
def test_config_families_verify(backend, rows, config):
    report = rg.verify(rg.catalog.gpt2(rg.bf16), 4096, rows, backend=backend, config=config)
    assert report.ok, report.table()


@pytest.mark.parametrize("backend, rows", per_backend([2], [9]))
@pytest.mark.parametrize("name", ["llama", "gpt2", "bert"])
def test_cluster_kernels_for_very_large_rows(backend, rows, name):
    report = rg.verify(rg.catalog[name](rg.bf16), 262144, rows, backend=backend,
                       config="tpr=1024,rows=1,vec=8,cache=smem,cluster=8")
    assert report.ok, report.table()


@pytest.mark.parametrize("backend", BACKENDS)
def test_large_shared_memory_cache_opts_in_past_48k(backend):
    block = rg.catalog.parallel_residual(rg.f32)
    k = rg.compile(block, 16384, backend=backend, config="tpr=512,cache=smem")
    assert k.plan.smem_bytes > 48 * 1024
    report = rg.verify(block, 16384, 33, backend=backend, config=k.config)
    assert report.ok, report.table()


@pytest.mark.parametrize("backend", BACKENDS)
def test_in_place_strided_and_misaligned_inputs(backend):
    block = rg.catalog.llama_fp32_residual(rg.bf16)
    k = rg.compile(block, 1024, backend=backend)
    big = random_inputs(block, (6, 4), 1032, seed=1, device=device_of(backend))
    # Every view is [6, 2, 1024] with one row stride of 2 x 1032 elements; residual is written in place.
    args = {"x": big["x"][:, ::2, 8:], "residual": big["residual"][:, 1::2, :1024], "weight": big["weight"][:1024]}
    want = rg.reference(block, **args)
    residual = args["residual"]
    got = k(**args)
    assert got.residual_out.data_ptr() == residual.data_ptr()
    assert compare("residual_out", rg.f32, residual, want.residual_out).ok
    assert compare("y", rg.bf16, got.y, want.y).ok
    shifted = {**args, "x": big["x"][:, ::2, 1:1025], "residual": big["residual"][:, ::2, :1024]}
    assert k.prepare(**shifted).entry.name.endswith("_narrow")
    want = rg.reference(block, **shifted)
    assert compare("y", rg.bf16, k(**shifted).y, want.y).ok


@pytest.mark.parametrize("backend", BACKENDS)
def test_dropout_masks_match_the_reference(backend):
    block = rg.catalog.bert(rg.f32)
    k = rg.compile(block, 1000, backend=backend)
    args = random_inputs(block, (37,), 1000, seed=6, device=device_of(backend))
    got, want = k(**args, seed=99, offset=5), rg.reference(block, **args, seed=99, offset=5)
    assert compare("y", rg.f32, got.y, want.y).ok


@pytest.mark.parametrize("backend", BACKENDS)
def test_modules_run_on_the_tensors_device(backend):
    device = device_of(backend)
    with torch.no_grad():
        for module, dtype, rdt in ((FusedAddRMSNorm(4096, dtype=torch.bfloat16), rg.bf16, torch.bfloat16),
                                   (FusedAddLayerNorm(4096, dtype=torch.float16), rg.f16, torch.float32)):
            module = module.to(device)
            x = torch.randn(8, 4096, device=device, dtype=dtype.torch_dtype)
            r = torch.randn(8, 4096, device=device, dtype=rdt)
            y, residual = module(x, r)
            assert y.device.type == device and residual.dtype == r.dtype
            assert module.kernel_for(x.device, x.dtype).backend == backend


@pytest.mark.parametrize("backend", BACKENDS)
def test_device_mismatch_names_the_argument(backend):
    k = rg.compile(rg.catalog.llama(rg.bf16), 256, backend=backend)
    args = random_inputs(rg.catalog.llama(rg.bf16), (4,), 256, device=device_of(backend))
    args["weight"] = args["weight"].to("meta")
    with pytest.raises(rg.LaunchError, match="'weight' is on meta"):
        k(**args)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_thread_that_never_used_the_device_can_launch(backend):
    block = rg.catalog.llama(rg.bf16)
    k = rg.compile(block, 512, backend=backend)
    args = random_inputs(block, (16,), 512, seed=3, device=device_of(backend))
    results: list[object] = []

    def call() -> None:
        try:
            out = k(**args)
            if backend == "cuda":
                torch.cuda.synchronize()
            results.append(out)
        except Exception as exc:  # noqa: BLE001 - handed back to the test's thread
            results.append(exc)

    for _ in range(2):  # the first thread loads the module, the second only launches
        worker = threading.Thread(target=call)
        worker.start()
        worker.join()
    want = rg.reference(block, **args)
    for out in results:
        assert not isinstance(out, Exception), out
        assert compare("y", rg.bf16, out.y, want.y).ok


NATIVE_CASES = {  # (block, what its call exercises)
    "llama": rg.catalog.llama(rg.bf16),  # wide and narrow entries, fresh outputs
    "llama_fp32_residual": rg.catalog.llama_fp32_residual(rg.bf16),  # an in-place output: written to a copy
    "bert": rg.catalog.bert(rg.f32),  # dropout: seed and offset, a runtime p
    "deepnorm": rg.catalog.deepnorm(rg.f16),  # a runtime scalar
    "gpt2_backward": grad(rg.catalog.gpt2(rg.bf16)),  # column sums: workspaces and the finalize kernel
}


@pytest.mark.skipif(ops.NATIVE is not None, reason=f"the op's kernels are Python here: {ops.NATIVE}")
@pytest.mark.parametrize("backend, hidden", per_backend([1, 1000, 4097], [1000, 4096, 4097]))
@pytest.mark.parametrize("case", NATIVE_CASES)
def test_the_ops_cpp_warm_path_matches_its_python_path(backend, hidden, case):
    block = NATIVE_CASES[case]
    kernel = rg.compile(block, hidden, backend=backend)
    device = device_of(backend)
    for lead, seed in (((1,), 5), ((3, 5), 6), ((3, 5), 2**64 - 1)):  # rows 1 and 15, a seed past int64
        args = random_inputs(block, lead, hidden, seed=len(lead), device=device)
        call = op_arguments(kernel, args, seed=seed - (1 << 64) if seed >= 1 << 63 else seed)
        before = {n: t.clone() for n, t in zip(kernel.op.tensors, call[2], strict=True)}
        want = python_path(call)
        first = native.counts()
        got = [ops.run(*call) for _ in range(2)]  # the second call finds the template the first left
        assert native.counts()["hits"] - first["hits"] >= 1
        for name, t in zip(kernel.op.tensors, call[2], strict=True):
            assert torch.equal(t, before[name]), f"{name} changed: the op is functional"
        for outputs in got:
            for name, a, b in zip(kernel.op.outputs, outputs, want, strict=True):
                assert a.shape == b.shape and a.dtype == b.dtype, name
                assert torch.equal(a, b), f"{case} {name}: {(a != b).sum()} elements differ"
    if hidden % 8 == 0 and block.params[0].op == "input":  # a row start off the wide entry's alignment
        big = random_inputs(block, (4,), hidden + 1, seed=9, device=device)
        args = {n: (t[..., 1:] if t.dim() == 2 and t.shape[-1] == hidden + 1 else
                    t[1:] if t.dim() == 1 and t.shape[0] == hidden + 1 else t) for n, t in big.items()}
        call = op_arguments(kernel, args)
        want = python_path(call)
        for _ in range(2):
            for a, b in zip(ops.run(*call), want, strict=True):
                assert torch.equal(a, b)


# ---- GPU only: these measure or use what only a device has ----

@gpu
def test_the_op_captures_in_a_cuda_graph_and_follows_the_current_stream():
    block = rg.catalog.llama(rg.bf16)
    k = rg.compile(block, 4096, backend="cuda")
    args = random_inputs(block, (64,), 4096, seed=2, device="cuda")
    call = op_arguments(k, args)
    ops.run(*call)  # the Python kernel runs it and leaves the C++ kernel its template
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        on_stream = ops.run(*call)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = ops.run(*call)
    fresh = random_inputs(block, (64,), 4096, seed=3, device="cuda")
    want_before = rg.reference(block, **args)
    for name in ("x", "residual"):
        args[name].copy_(fresh[name])
    graph.replay()
    torch.cuda.synchronize()
    assert compare("y", rg.bf16, on_stream[0], want_before.y).ok
    assert compare("y", rg.bf16, captured[0], rg.reference(block, **args).y).ok


@gpu
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


@gpu
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


@gpu
@pytest.mark.skipif(shutil.which("g++") is None, reason="the emu backend needs g++")
def test_emu_and_cuda_agree():
    block = rg.catalog.gemma2_sandwich(rg.bf16)
    args = random_inputs(block, (9,), 2048, seed=7)
    on_cpu = rg.compile(block, 2048, backend="emu")(**args)
    on_gpu = rg.compile(block, 2048, backend="cuda")(**{k: v.cuda() for k, v in args.items()})
    for name in on_cpu:
        assert compare(name, rg.bf16, on_gpu[name].cpu(), on_cpu[name]).ok


@gpu
def test_tune_measures_stores_and_compile_uses_the_result(tmp_path, monkeypatch):
    from resgen.runtime.kernel import device_arch
    from resgen.tune import db
    from resgen.tune.search import measure, prune

    monkeypatch.setenv("RESGEN_TUNING_DB", str(tmp_path / "tuning.json"))
    block, arch = rg.catalog.llama(rg.bf16), device_arch()
    survivors, _ = prune(block, 4096, arch, progress=lambda _: None)
    results = measure(block, 4096, 4096, survivors[:4], progress=lambda _: None)
    assert results and all(r["gbps"] > 0 for r in results)
    best = results[0]
    db.store(db.entry_key(block, 4096, torch.cuda.get_device_name(), arch, 4096), {**best, "date": "test"})
    assert rg.compile(block, 4096, backend="cuda", rows=4096).config == rg.LaunchConfig.parse(best["config"])


@gpu
def test_bench_produces_records_in_the_shared_format():
    from resgen.tune import bench

    records = bench.run_bench([bench.Case("llama", rg.catalog.llama(rg.bf16), "bf16")], [4096], [64, 4096],
                              ["torch", "compile"], progress=lambda _: None)
    assert {r["system"] for r in records} >= {"resgen", "torch", "compile"}
    for r in records:
        assert set(bench.RECORD_KEYS) <= set(r) and r["gbps"] > 0 and r["copy_gbps"] > 0
        assert r["p10_us"] <= r["time_us"] <= r["p90_us"]
        assert ("call_us" in r) == (r["rows"] <= bench.LATENCY_ROWS)
    compiled = [r for r in records if r["system"] == "compile"]
    assert all(r["ran"] == "torch.compile (inductor)" for r in compiled), compiled


@pytest.mark.parametrize("backend, hidden", per_backend([1000], [4096, 16384]))
@pytest.mark.parametrize("name", ["llama", "gpt2", "bert"])
def test_kernel_gradients_match_torch_autograd(backend, hidden, name):
    from resgen.verification import GRAD_TOLERANCES

    block = rg.catalog[name](rg.bf16)
    device = device_of(backend)
    args = random_inputs(block, (33,), hidden, seed=8, device=device)
    diff = [p.name for p in block.params if p.op in ("input", "weight")]
    results = []
    for run in (rg.compile(block, hidden, backend=backend), lambda **a: rg.reference(block, **a)):
        leaves = {k: v.clone().requires_grad_(k in diff) if isinstance(v, torch.Tensor) else v for k, v in args.items()}
        out = run(**leaves, seed=8)
        loss = sum((out[o.name].float() * (i + 1)).square().mean() for i, o in enumerate(block.outputs))
        results.append(torch.autograd.grad(loss, [leaves[n] for n in diff]))
    for n, got, want in zip(diff, *results, strict=True):
        check = compare(f"d_{n}", rg.bf16, got, want, GRAD_TOLERANCES)
        assert check.ok, (n, check)


def _has_transformers() -> bool:
    import importlib.util

    return importlib.util.find_spec("transformers") is not None


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_model_of_resgen_modules_compiles_as_one_graph_and_trains(backend):
    """torch.compile(fullgraph=True): the default backend (inductor) on a GPU, aot_eager on emu."""
    from tests.test_torch_integration import Net

    device = device_of(backend)
    torch.manual_seed(0)
    net = Net().to(device)
    x = torch.randn(4, 64, 16, device=device)
    loss = net(x)
    loss.backward()
    want = {n: p.grad.clone() for n, p in net.named_parameters()}
    net.zero_grad()
    compiled = torch.compile(net, fullgraph=True, backend="inductor" if backend == "cuda" else "aot_eager")
    got = compiled(x)
    got.backward()
    torch.testing.assert_close(got, loss, rtol=1e-4, atol=1e-5)
    for n, p in net.named_parameters():
        torch.testing.assert_close(p.grad, want[n], rtol=1e-3, atol=1e-5, msg=n)


@pytest.mark.parametrize("backend", ["emu", *([pytest.param("cuda", marks=gpu)] if _has_transformers() else [])])
def test_a_patched_hugging_face_model_compiles_as_one_graph(backend):
    pytest.importorskip("transformers")
    import resgen.hf
    from tests.test_hf import logits, make, tokens

    device = device_of(backend)
    model = make("llama").to(device=device, dtype=torch.bfloat16)
    want = logits(model, tokens().to(device))
    resgen.hf.patch(model, rounding="hf")
    compiled = torch.compile(model, fullgraph=True, backend="inductor" if backend == "cuda" else "aot_eager")
    got = logits(compiled, tokens().to(device))
    assert torch.equal(got.argmax(-1), want.argmax(-1))
    if backend == "emu":  # on a GPU, torch's own rsqrt and reductions are not the CPU's: compare values
        assert (got == want).float().mean().item() >= 0.99
    assert ((got.float() - want.float()).norm() / want.float().norm()).item() <= 1e-2
