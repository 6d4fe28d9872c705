from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import resgen as rg

GOLDEN = Path(__file__).parent / "golden"
UPDATE_GOLDEN = os.environ.get("RESGEN_UPDATE_GOLDEN") == "1"

DTYPES = [rg.f32, rg.f16, rg.bf16]
CATALOG = list(rg.catalog)


def check_golden(path: Path, text: str) -> None:
    """Compare `text` with a committed golden file (RESGEN_UPDATE_GOLDEN=1 rewrites it)."""
    if UPDATE_GOLDEN:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"missing golden file {path}; run with RESGEN_UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{path} differs; rerun with RESGEN_UPDATE_GOLDEN=1 if intended"


def random_args(block: rg.Block, lead: tuple[int, ...], hidden: int, *, seed: int = 0,
                device: str = "cpu") -> dict[str, object]:
    """Fresh random arguments for every parameter of `block` (never zeros)."""
    gen = torch.Generator().manual_seed(seed)
    args: dict[str, object] = {}
    for p in block.params:
        if p.op == "scalar":
            args[p.name] = 0.5 + torch.rand((), generator=gen).item()
            continue
        shape = (*lead, hidden) if p.op == "input" else (hidden,)
        t = torch.randn(shape, generator=gen) if p.op == "input" else 1.0 + 0.5 * torch.randn(shape, generator=gen)
        args[p.name] = t.to(p.dtype.torch_dtype).to(device)
    return args


def gpu_available() -> bool:
    return torch.cuda.is_available()


requires_gpu = pytest.mark.skipif(not gpu_available(), reason="needs a CUDA device; none is visible (torch.cuda.is_available() is False)")
