"""resgen inside a torch.distributed job: two CPU ranks (gloo, emu backend) share one cache folder
and one tuning database, compile the same kernels at the same moment, and agree bit for bit."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2
HIDDEN = 96


def _rank(rank: int, root: str) -> None:
    os.environ["RESGEN_CACHE_DIR"] = f"{root}/cache"  # before resgen reads it
    os.environ["RESGEN_TUNING_DB"] = f"{root}/tuning.json"
    os.environ["RESGEN_EMU_THREADS"] = "1"  # two ranks on a small machine
    dist.init_process_group("gloo", init_method=f"file://{root}/rendezvous", rank=rank, world_size=WORLD)
    import resgen as rg
    from resgen.nn import FusedAddRMSNorm
    from resgen.tune import db
    from resgen.verification import random_inputs

    dist.barrier()  # from here both ranks build the same kernels into the one empty cache at once
    outputs: dict = {}
    names = set()
    for name in ("llama", "gpt2"):
        block = rg.catalog[name](rg.bf16)
        kernel = rg.compile(block, HIDDEN, backend="emu")
        result = kernel(**random_inputs(block, (5,), HIDDEN, seed=7))
        names.add(kernel.name)
        outputs.update({f"{name}.{k}": v.float().tolist() for k, v in result.items()})
    db.store(f"rank{rank}", {"config": "tpr=32,rows=4,vec=1", "time_us": 1.0 + rank, "gbps": 1.0,
                             "frac_copy": 0.5, "date": "2026-11-30"})

    torch.manual_seed(0)  # one training step of a resgen module under DistributedDataParallel
    model = torch.nn.parallel.DistributedDataParallel(FusedAddRMSNorm(HIDDEN, dtype=torch.float32))
    data = torch.randn(4, HIDDEN, generator=torch.Generator().manual_seed(rank))
    y, residual = model(data, data.flip(0))
    (y.square().mean() + residual.mean()).backward()  # gradients all-reduced across the ranks
    outputs["weight.grad"] = model.module.weight.grad.tolist()
    from resgen.runtime import ops

    outputs["kernels"] = sorted(names | {k.name for k in ops.kernels._built.values()})

    gathered: list = [None] * WORLD
    dist.all_gather_object(gathered, outputs)
    if rank == 0:
        Path(root, "verdict.json").write_text(json.dumps(gathered))
    dist.destroy_process_group()


def test_two_ranks_share_the_cache_and_the_tuning_database(tmp_path):
    mp.start_processes(_rank, args=(str(tmp_path),), nprocs=WORLD, start_method="spawn", join=True)
    first, second = json.loads((tmp_path / "verdict.json").read_text())
    assert first == second  # identical kernel outputs and all-reduced gradients on both ranks
    assert any(v != 0 for v in first["weight.grad"])
    libraries = sorted(p.name for p in (tmp_path / "cache" / "emu").glob("*.so"))
    assert len(libraries) == len(first["kernels"]), (libraries, first["kernels"])  # one cache entry per kernel
    leftovers = [p for p in (tmp_path / "cache").rglob("*") if p.name.startswith(".") and "probe" not in p.name]
    assert not leftovers, leftovers  # no half-built files or temporary folders left behind
    stored = json.loads((tmp_path / "tuning.json").read_text())
    assert set(stored) == {"rank0", "rank1"}  # neither rank lost the other's entry
