"""The `resgen` command: subcommands, SPEC forms, and one-line errors with exit code 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from resgen.cli import main


def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "resgen.cli", *argv], capture_output=True, text=True)


def test_catalog_lists_every_block(capsys):
    assert main(["catalog"]) == 0
    out = capsys.readouterr().out
    for name in ("llama", "gpt2", "bert", "deepnorm", "gemma", "gemma2_sandwich", "parallel_residual"):
        assert name in out


def test_ir_print_after_all_shows_each_pass(capsys):
    assert main(["ir", "llama", "--hidden", "4096", "--print-after-all"]) == 0
    out = capsys.readouterr().out
    for name in ("input", "verify", "infer-types", "decompose-norms", "canonicalize", "cse", "dce", "specialize"):
        assert f"// ----- after {name} -----" in out or name == "input"
    assert "rms_norm" in out.split("after decompose-norms")[0]
    assert "1/4096" in out


def test_spec_from_file_and_module(tmp_path, capsys, monkeypatch):
    (tmp_path / "myblocks.py").write_text(
        "import resgen as rg\n"
        "b = rg.Block('mine')\n"
        "b.output('y', rg.rms_norm(b.input('x', rg.f16)))\n"
        "def factory(dt):\n"
        "    c = rg.Block('fac')\n"
        "    c.output('y', rg.layer_norm(c.input('x', dt)))\n"
        "    return c\n"
    )
    assert main(["ir", f"{tmp_path}/myblocks.py:b"]) == 0
    assert "block @mine" in capsys.readouterr().out
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["ir", "myblocks:factory", "--dtype", "f16"]) == 0
    assert "row<f16>" in capsys.readouterr().out


@pytest.mark.parametrize("spec", ["nope", "missing_file.py:b", "no.such.module:b", "resgen:__version__"])
def test_bad_spec_is_one_line_and_exit_2(spec):
    result = run("ir", spec)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "error" in result.stderr


@pytest.mark.parametrize("command", ["catalog", "ir"])
def test_every_subcommand_has_help(command):
    result = run(command, "--help")
    assert result.returncode == 0 and "usage" in result.stdout


@pytest.mark.parametrize("script", ["scripts/gpu_check.sh", "scripts/bench_sweep.sh", "scripts/test.sh", "scripts/main.sh", ".ci/run"])
def test_scripts_are_valid_bash(script):
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / script
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0


@pytest.mark.parametrize("command", ["emit", "inspect", "verify", "tune", "bench", "generate"])
def test_later_subcommands_have_help(command):
    result = run(command, "--help")
    assert result.returncode == 0 and "usage" in result.stdout
