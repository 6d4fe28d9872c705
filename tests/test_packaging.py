"""An installed wheel (not the source checkout) carries the templates and generates kernels."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_ships_templates_and_emits_from_them(tmp_path):
    wheel_dir, target = tmp_path / "wheel", tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheel_dir), str(ROOT)], check=True,
                   capture_output=True)
    [wheel] = wheel_dir.glob("resgen-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True, capture_output=True)
    script = ("import resgen, sys\n"
              "from resgen.codegen.render import template_dir\n"
              "assert resgen.__file__.startswith(sys.argv[1]), resgen.__file__\n"
              "assert str(template_dir()).startswith(sys.argv[1]), template_dir()\n"
              "print(resgen.emit(resgen.catalog.llama(), 4096).splitlines()[0])\n")
    result = subprocess.run([sys.executable, "-c", script, str(target)], cwd=tmp_path, capture_output=True, text=True,
                            env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert "rg_llama_bf16_h4096" in result.stdout
