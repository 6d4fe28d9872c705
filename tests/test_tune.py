"""Tuning and benchmarking, as far as the CPU allows: search space, pruning, the database, rendering."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

import resgen as rg
from resgen.codegen import LaunchConfig
from resgen.tune import bench, db
from resgen.tune.search import MAX_CHUNKS, enumerate_configs, occupancy, prune
from resgen.tune.timing import plan_bytes
from resgen.verification import random_inputs


def test_search_space_holds_only_valid_configs():
    configs = enumerate_configs(rg.catalog.llama(rg.bf16), 4096)
    assert configs and len(set(configs)) == len(configs)
    for c in configs:
        assert 64 <= c.threads <= 1024 and 4096 % c.vec == 0 and c.vec * 2 <= 16
        assert -(-4096 // (c.threads_per_row * c.vec * c.cluster)) <= MAX_CHUNKS
    assert {c.cache for c in configs} == {"registers", "smem", "global"}
    assert {c.vec for c in enumerate_configs(rg.catalog.llama(rg.bf16), 4097)} == {8, 1}  # peeled, or element-wise
    assert all(c.vec == 1 for c in enumerate_configs(rg.grad(rg.catalog.llama(rg.bf16)), 4097))


def test_clusters_join_the_search_only_where_the_gpu_has_them():
    block = rg.catalog.llama(rg.bf16)
    assert any(c.cluster > 1 for c in enumerate_configs(block, 65536, "sm_90"))
    assert not any(c.cluster > 1 for c in enumerate_configs(block, 65536, "sm_80"))
    assert not any(c.cluster > 1 for c in enumerate_configs(block, 4096, "sm_90"))


def test_pruning_drops_plan_rejects_and_keeps_spill_free_kernels():
    survivors, dropped = prune(rg.catalog.gpt2(rg.bf16), 8192, "sm_90", progress=lambda _: None)
    assert survivors and dropped["plan"] > 0
    assert all(c.occupancy >= 0.25 for c in survivors)
    default = rg.LaunchConfig.parse(str(rg.compile(rg.catalog.gpt2(), 8192, backend="emu").config))
    assert default in {c.config for c in survivors}


def test_occupancy_is_limited_by_registers_and_shared_memory():
    c = LaunchConfig(256, 1, 8, "registers")
    assert occupancy(c, 32, 0, "sm_90") == 1.0
    assert occupancy(c, 128, 0, "sm_90") == 0.25
    assert occupancy(c, 32, 100_000, "sm_90") == 0.25


def test_plan_bytes_count_each_input_and_output_once():
    # llama bf16: x, residual read; residual_out, y written; weight once.
    assert plan_bytes(rg.catalog.llama(rg.bf16), 10, 64) == 4 * 10 * 64 * 2 + 64 * 2


def test_database_round_trip(tmp_path):
    path = tmp_path / "tuning.json"
    block = rg.catalog.llama(rg.bf16)
    key = db.entry_key(block, 4096, "NVIDIA H200", "sm_90", 32768)
    db.store(key, {"config": "tpr=256,rows=1,vec=8,cache=registers", "time_us": 1.0}, path)
    found = db.lookup(block, 4096, "NVIDIA H200", "sm_90", path=path)
    assert found == LaunchConfig(256, 1, 8, "registers")
    assert db.lookup(block, 4096, "NVIDIA H200", "sm_90", rows=1, path=path) is None  # other rows bucket
    assert db.lookup(rg.catalog.llama(rg.f16), 4096, "NVIDIA H200", "sm_90", path=path) is None  # dtypes in key
    assert db.lookup(block, 4096, "NVIDIA A100", "sm_80", path=path) is None


def test_database_writes_from_two_processes_both_survive(tmp_path):
    path = tmp_path / "tuning.json"
    script = textwrap.dedent(f"""
        import sys
        from resgen.tune import db
        for i in range(25):
            db.store(f"{{sys.argv[1]}}-{{i}}", {{"config": "tpr=32,rows=4,vec=8,cache=registers"}}, {str(path)!r})
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, name]) for name in ("a", "b")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    assert len(json.loads(path.read_text())) == 50


def test_corrupt_database_is_reported(tmp_path):
    path = tmp_path / "tuning.json"
    path.write_text("{broken")
    with pytest.raises(rg.PlanError, match="not valid JSON"):
        db.read(path)


def test_tune_without_gpu_prunes_and_says_measurement_needs_a_gpu(capsys):
    from resgen.cli import main
    from resgen.runtime.kernel import cuda_usable

    if cuda_usable() is None:
        pytest.skip("a GPU is present")
    assert main(["tune", "llama", "--hidden", "1024", "--budget", "20"]) == 0
    out = capsys.readouterr().out
    assert "candidates survive" in out and "measurement needs a GPU" in out


def _records() -> list[dict]:
    """Synthetic records in the benchmark format (rendering test data, not measurements)."""
    env = {"gpu": "TEST GPU", "driver": "0", "torch": "0", "cupy": "0", "date": "2026-01-01", "copy_gbps": 1000.0}
    out = []
    for system, gbps in (("resgen", 900.0), ("torch", 500.0), ("compile", 700.0)):
        for hidden in (1024, 4096):
            out.append({"system": system, "block": "llama", "dtype": "bf16", "rows": 32768, "hidden": hidden,
                        "time_us": 10.0, "p10_us": 9.5, "p90_us": 10.5, "gbps": gbps, "frac_copy": gbps / 1000.0,
                        "ran": system, **env})
    return out


def test_bench_renders_table_and_plot_from_stored_json(tmp_path, capsys):
    from resgen.cli import main

    stored = tmp_path / "bench.json"
    stored.write_text(json.dumps(_records()))
    png = tmp_path / "bench.png"
    assert main(["bench", "--from-json", str(stored), "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "resgen" in out and "90.0%" in out
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert set(bench.RECORD_KEYS) <= set(bench.load(stored)[0])


def test_bench_without_gpu_is_a_clear_error(capsys):
    from resgen.cli import main
    from resgen.runtime.kernel import cuda_usable

    if cuda_usable() is None:
        pytest.skip("a GPU is present")
    assert main(["bench", "llama"]) == 2
    assert "--from-json" in capsys.readouterr().err


def test_baselines_compute_what_the_block_does():
    import torch

    from resgen.tune.baselines import TORCH_FORMULAS, eager
    from resgen.verification import random_inputs

    assert eager(rg.catalog.bert()) is None
    for name in TORCH_FORMULAS:  # every hand-written formula and the generic eager one, outputs in block order
        block = rg.catalog[name](rg.f32)
        args = random_inputs(block, (4,), 96)
        want = rg.reference(block, **args)
        got = eager(block)(**args)
        for value, out in zip(got, block.outputs, strict=True):
            torch.testing.assert_close(value, want[out.name], rtol=1e-5, atol=1e-5)
        formula = TORCH_FORMULAS[name](**args)
        for value, out in zip(formula, block.outputs, strict=True):
            torch.testing.assert_close(value.float(), want[out.name].float(), rtol=1e-4, atol=1e-4)


def test_buffer_sets_overflow_l2(monkeypatch):
    import torch

    from resgen.tune.timing import buffer_sets

    class Props:
        L2_cache_size = 60 << 20

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: Props())
    assert buffer_sets(1 << 20, None, cap=1000) == 121  # 1 MiB sets: over twice the 60 MiB L2 in rotation
    assert buffer_sets(1 << 20, None) == 50  # but never more sets than one measurement has calls
    assert buffer_sets(100 << 20, None) == 3
    assert buffer_sets(1 << 30, None) == 1  # one set alone evicts its own beginning


def test_liger_is_optional_and_says_why():
    from resgen.tune.baselines import liger

    try:
        import liger_kernel  # noqa: F401
    except ImportError:
        fn, why = liger("llama")
        assert fn is None and "not importable" in why
    assert liger("bert")[0] is None


def test_plan_bytes_count_row_scalars_and_gradients_by_their_shape():
    from resgen.tune.bench import mode_bytes

    gb = rg.grad(rg.catalog.gpt2(rg.bf16))  # reads x, residual, d_residual_out, d_y, weight, mean, rstd
    rows, hidden = 4, 8
    reads = 4 * rows * hidden * 2 + hidden * 2 + 2 * rows * 4
    writes = 2 * rows * hidden * 2 + 2 * hidden * 2  # d_x, d_residual; d_weight, d_bias (column vectors)
    assert plan_bytes(gb, rows, hidden) == reads + writes
    once = writes - rows * hidden * 2  # d_x and d_residual are one gradient, written once
    assert mode_bytes(rg.catalog.gpt2(rg.bf16), "backward", rows, hidden) == reads + once
    forward = plan_bytes(rg.catalog.gpt2(rg.bf16), rows, hidden) + 2 * rows * 4  # plus the saved statistics
    assert mode_bytes(rg.catalog.gpt2(rg.bf16), "fwd+bwd", rows, hidden) == forward + reads + once


@pytest.mark.parametrize("name", ["llama", "llama_fp32_residual", "gpt2"])
@pytest.mark.parametrize("mode", ["backward", "fwd+bwd"])
def test_bench_grad_steps_compute_the_gradients_torch_does(name, mode):
    from resgen.tune.bench import Case, _grad_systems

    case = Case(name, rg.catalog[name](rg.f32), "f32")
    factories, configs, kernels = _grad_systems(case, 256, ["torch"], "emu", mode, lambda _: None)
    assert set(factories) == {"resgen", "torch"} and kernels["resgen"].block.name == f"{name}_grad"
    args = random_inputs(case.block, (5,), 256, seed=2)
    steps = {system: factory() for system, factory in factories.items()}
    first = {system: step(args) for system, step in steps.items()}
    again = steps["resgen"](args)  # backward: the same graph's backward again; fwd+bwd: a fresh step
    for ours, theirs, repeat in zip(first["resgen"], first["torch"], again, strict=True):
        assert theirs is not None and torch.equal(ours, repeat)
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    assert torch.equal(args["residual"], random_inputs(case.block, (5,), 256, seed=2)["residual"])  # not overwritten


def test_pruning_ranks_survivors_by_the_cost_model():
    # (the configs the pruning test above compiles: NVRTC's cache serves them)
    survivors, _ = prune(rg.catalog.gpt2(rg.bf16), 8192, "sm_90", progress=lambda _: None, rows=32768)
    predicted = [c.predicted for c in survivors]
    assert predicted == sorted(predicted, reverse=True) and predicted[0] > 0.5
    heuristic = rg.compile(rg.catalog.gpt2(rg.bf16), 8192, backend="emu").config
    assert heuristic in {c.config for c in survivors}
