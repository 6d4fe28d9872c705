"""The README's Python examples run as written (those that need a GPU or a Hugging Face model excepted)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import resgen as rg

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
RUNNABLE = [b for b in BLOCKS if ".cuda()" not in b and "hf_layer" not in b and "from_pretrained" not in b]


def test_readme_has_runnable_examples():
    assert len(RUNNABLE) >= 2


@pytest.mark.parametrize("code", RUNNABLE, ids=[f"example{i}" for i in range(len(RUNNABLE))])
def test_readme_example_runs(code):
    hidden = 4096
    namespace = {"rg": rg, "torch": torch,
                 "X": torch.randn(8, hidden).bfloat16(), "R": torch.randn(8, hidden).bfloat16(),
                 "W": torch.randn(hidden).bfloat16()}
    exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 - the README's own example


#: The README's command samples: ```text blocks whose first line is `$ resgen ...`.
SAMPLES = [b for b in re.findall(r"```text\n(.*?)```", README.read_text(), re.S) if b.startswith("$ resgen ")]
#: Commands whose numbers come from NVRTC's register allocation (they move with its version).
NUMBERS_VARY = ("inspect", "tune")


def matches(sample: list[str], output: list[str]) -> bool:
    """True when `output` is `sample`, a line `...` in the sample standing for any run of lines."""
    if not sample:
        return not output
    if sample[0] == "...":
        return any(matches(sample[1:], output[i:]) for i in range(len(output) + 1))
    return bool(output) and sample[0] == output[0] and matches(sample[1:], output[1:])


def test_readme_has_command_samples():
    assert {s.split()[2] for s in SAMPLES} >= {"ir", "inspect", "verify", "tune"}


@pytest.mark.parametrize("sample", SAMPLES, ids=[s.splitlines()[0][2:] for s in SAMPLES])
def test_readme_command_samples_are_what_the_commands_print(sample, capsys):
    import shlex

    from resgen.cli import main
    from resgen.runtime.kernel import cuda_usable

    command, *expected = sample.rstrip("\n").splitlines()
    argv = shlex.split(command)[2:]
    if cuda_usable() is None and argv[0] in ("tune", "verify"):
        pytest.skip("the sample shows the output of a machine without a GPU")
    main(argv)
    output = capsys.readouterr().out.rstrip("\n").splitlines()
    if argv[0] in NUMBERS_VARY:
        expected, output = ([re.sub(r"\d+", "N", ln) for ln in lines] for lines in (expected, output))
    assert matches(expected, output), "\n".join(["README:", *expected, "", "printed:", *output])
