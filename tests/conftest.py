from __future__ import annotations

import math
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import resgen as rg
from resgen.codegen import LaunchConfig, default_config, lower
from resgen.errors import PlanError
from resgen.runtime import ops

GOLDEN = Path(__file__).parent / "golden"
UPDATE_GOLDEN = os.environ.get("RESGEN_UPDATE_GOLDEN") == "1"
#: Set by scripts/gpu_check.sh: on the device, a `gpu` test that would skip is a failure, so a broken
#: CUDA or CuPy install cannot pass as green.
REQUIRE_GPU = os.environ.get("RESGEN_REQUIRE_GPU") == "1"

DTYPES = [rg.f32, rg.f16, rg.bf16]
CATALOG = list(rg.catalog)
#: The catalog blocks with a gradient (quantized outputs have none).
TRAINABLE = [n for n in rg.catalog if rg.catalog[n].trainable]


def op_arguments(kernel: rg.Kernel, args: dict, training: bool = False, seed: int = 0) -> tuple:
    """The arguments of `resgen::run` for a call of `kernel` on `args`."""
    tensors = [args[n] for n in kernel.op.tensors]
    return (kernel.op.text, kernel.op_kernel, tensors, [float(args[n]) for n in kernel.op.scalars], seed, 0, training)


def python_path(call: tuple) -> list[torch.Tensor]:
    """What the op's Python kernel computes for the op arguments `call` (ops.launch, no dispatcher)."""
    text, kernel, tensors, scalars, seed, offset, training = call
    return ops.launch(ops.signature(text, training), kernel, tensors, scalars, seed, offset)


def fit(name: str, hidden: int | None) -> int | None:
    """`hidden` made a size catalog entry `name` takes: block-scaled formats need whole blocks (MXFP8 a
    multiple of 32, NVFP4 of 16), so their odd sizes are the next multiple (4097 -> 4128: a tail
    chunk still, and a block count that is no power of two)."""
    return hidden if hidden is None else rg.catalog[name].fit(hidden)


#: The device-test logic runs on both backends: emu in every CI run, cuda where a GPU is usable.
BACKENDS = ["emu", pytest.param("cuda", marks=pytest.mark.gpu)]


FAMILIES = ["warp-per-row", "cta-per-row", "smem-staged", "global-staged", "cluster"]


def family_config(block: rg.Block, hidden: int, family: str) -> LaunchConfig | None:
    """A config of `family` for this size, or None when no valid one exists."""
    base = default_config(block, hidden)
    if family == "warp-per-row":
        tpr = min(32, 1 << max(0, math.ceil(math.log2(math.ceil(hidden / base.vec)))))
        config = LaunchConfig(tpr, max(1, 128 // tpr), base.vec, "registers")
    elif family == "cta-per-row":
        config = LaunchConfig(128, 1, base.vec, "registers")
    elif family == "cluster":
        config = LaunchConfig(64, 1, base.vec, "smem", cluster=2)
    else:
        config = replace(base, cache=family.split("-")[0])
    try:
        lower(block, hidden, config)
    except PlanError:
        return None
    return config


def device_of(backend: str) -> str:
    """The torch device a backend's tensors live on."""
    return "cuda" if backend == "cuda" else "cpu"


def check_golden(path: Path, text: str) -> None:
    """Compare `text` with a committed golden file (RESGEN_UPDATE_GOLDEN=1 rewrites it)."""
    if UPDATE_GOLDEN:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"missing golden file {path}; run with RESGEN_UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{path} differs; rerun with RESGEN_UPDATE_GOLDEN=1 if intended"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` skip, saying why, where resgen's cuda backend cannot run (with
    RESGEN_REQUIRE_GPU=1 they fail instead)."""
    from resgen.runtime.kernel import cuda_usable

    reason = cuda_usable()
    if reason is None:
        return
    if REQUIRE_GPU:
        return  # pytest_runtest_setup fails them instead
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(pytest.mark.skip(
                reason=f"gpu test: {reason}; scripts/gpu_check.sh runs these on a GPU machine"))


def pytest_runtest_setup(item: pytest.Item) -> None:
    """With RESGEN_REQUIRE_GPU=1, a `gpu` test on a machine where the cuda backend is unusable fails."""
    if REQUIRE_GPU and "gpu" in item.keywords:
        from resgen.runtime.kernel import cuda_usable

        reason = cuda_usable()
        if reason is not None:
            pytest.fail(f"RESGEN_REQUIRE_GPU=1 but the cuda backend is unusable: {reason}", pytrace=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    """With RESGEN_REQUIRE_GPU=1, a `gpu` test that skipped itself (pytest.skip, importorskip) fails."""
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_GPU and report.skipped and "gpu" in item.keywords:
        report.outcome = "failed"
        report.longrepr = f"RESGEN_REQUIRE_GPU=1: gpu test skipped instead of running: {report.longrepr}"
