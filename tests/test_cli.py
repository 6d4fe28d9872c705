"""The `resgen` command: subcommands, SPEC forms, and one-line errors with exit code 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from resgen.catalog import catalog
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


@pytest.mark.parametrize("command", ["ir", "emit", "inspect", "verify", "tune"])
def test_help_names_every_spec_form_and_config_key(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert ".rgir" in text and ".py:name" in text
    if command in ("emit", "inspect", "verify"):
        assert "cluster" in text


@pytest.mark.parametrize("config, hidden, want", [
    ("cluster=2", 64, {"cluster": 2}),  # the heuristic's 64 rows per CTA cannot hold a cluster
    ("tpr=64", 64, {"threads_per_row": 64}),  # nor 64 rows of 64 threads
    ("tpr=32,rows=4", 4096, {"threads_per_row": 32, "rows_per_cta": 4}),  # too many floats for registers
])
def test_a_partial_config_is_completed_to_fit_what_the_user_set(config, hidden, want):
    import resgen as rg
    from resgen.codegen import plan_and_source

    plan, _ = plan_and_source(rg.catalog.gpt2(rg.bf16), hidden, config)
    assert all(getattr(plan.config, k) == v for k, v in want.items())
    assert rg.verify(rg.catalog.gpt2(rg.bf16), hidden, 3, backend="emu", config=config).ok


def test_the_emitted_header_says_how_to_emit_the_same_source(capsys):
    import shlex

    import resgen as rg

    source = rg.emit(rg.catalog.gpt2(rg.f16), 1000, arch="sm_80", config="tpr=64")
    command = source.splitlines()[1].split("`")[1]
    assert main(shlex.split(command)[1:]) == 0
    assert capsys.readouterr().out == source
    b = rg.Block("mine")
    b.output("y", b.input("x") * 2.0)
    assert "rg.emit(block, hidden=64" in rg.emit(b, 64).splitlines()[1]
    llama_named = rg.Block("llama")  # a user block that only shares a catalog name
    llama_named.output("y", llama_named.input("x") * 3.0)
    assert "resgen emit" not in rg.emit(llama_named, 64).splitlines()[1]


def test_generate_check_works_from_any_folder_and_says_when_up_to_date(tmp_path):
    result = subprocess.run([sys.executable, "-m", "resgen.cli", "generate", "--check"], capture_output=True,
                            text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    files = 2 * len(catalog) + sum(e.trainable for e in catalog.values())  # forward at 4096, 4097; backward at 4096
    assert f"is up to date ({files} files)" in result.stdout


def test_progress_without_a_terminal_prints_a_bounded_number_of_lines():
    import io

    from resgen.tune.search import ProgressBar

    stream = io.StringIO()
    bar = ProgressBar(1000, "pruning", stream=stream)
    for i in range(1000):
        bar(f"candidate {i}")
    lines = stream.getvalue().splitlines()
    assert 10 <= len(lines) <= 20 and lines[-1].startswith("pruning [") and "1000/1000" in lines[-1]
