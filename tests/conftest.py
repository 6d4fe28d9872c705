from __future__ import annotations

import os
from pathlib import Path

import pytest

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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` skip, saying why, where resgen's cuda backend cannot run."""
    from resgen.runtime.kernel import cuda_usable

    reason = cuda_usable()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=f"gpu test: {reason}; scripts/gpu_check.sh runs these on a GPU machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
