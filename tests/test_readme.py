"""The README's Python examples run as written (those that need a GPU or a Hugging Face model excepted)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import resgen as rg

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
RUNNABLE = [b for b in BLOCKS if ".cuda()" not in b and "hf_layer" not in b]


def test_readme_has_runnable_examples():
    assert len(RUNNABLE) >= 2


@pytest.mark.parametrize("code", RUNNABLE, ids=[f"example{i}" for i in range(len(RUNNABLE))])
def test_readme_example_runs(code):
    hidden = 4096
    namespace = {"rg": rg, "torch": torch,
                 "X": torch.randn(8, hidden).bfloat16(), "R": torch.randn(8, hidden).bfloat16(),
                 "W": torch.randn(hidden).bfloat16()}
    exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 - the README's own example
