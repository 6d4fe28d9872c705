"""The `emu` backend: the emitted CUDA compiled by the host C++ compiler against resgen's SIMT
runtime (templates/simt_runtime.h), loaded with ctypes and run on torch CPU tensors."""

from __future__ import annotations

import ctypes
import functools
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from resgen.codegen.plan import KernelPlan
from resgen.codegen.render import environment, template_dir
from resgen.errors import BackendUnavailableError, CompileError, LaunchError
from resgen.runtime.cache import cache_key, cache_root
from resgen.runtime.nvrtc import source_context
from resgen.runtime.toolkit import include_dirs

#: Host flags: no FMA contraction and no fast-math, so float32 arithmetic rounds like the reference's.
HOST_FLAGS = ("-std=c++17", "-O1", "-fPIC", "-shared", "-ffp-contract=off", "-fno-fast-math", "-w")


@functools.lru_cache(maxsize=1)
def host_compiler() -> tuple[str, str]:
    """(path, version line) of the host C++ compiler: $CXX, else g++, else c++."""
    for candidate in filter(None, (os.environ.get("CXX"), "g++", "c++")):
        path = shutil.which(candidate)
        if path:
            version = subprocess.run([path, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
            return path, version
    raise BackendUnavailableError("the emu backend needs a host C++ compiler (g++ or $CXX); none was found")


def host_source(plan: KernelPlan, source: str) -> str:
    """The translation unit the host compiler sees: runtime, the emitted kernel verbatim, launchers."""
    launchers = environment().get_template("emu_launcher.cpp.j2").render(plan=plan)
    return f'#include "simt_runtime.h"\n#line 1 "{plan.name}.cu"\n{source}\n#line 1 "launcher.cpp"\n{launchers}'


def _include_flags() -> list[str]:
    return [f"-I{template_dir()}", *(f"-I{d}" for d in include_dirs())]


@functools.lru_cache(maxsize=1)
def precompiled_header_dir() -> Path | None:
    """A folder holding simt_runtime.h.gch for these flags (built once, cached); None if it cannot be built.

    g++ looks for the .gch before the header in each include folder and silently falls back to the
    header when the .gch does not match, so this only ever saves time.
    """
    from resgen import __version__

    compiler, version = host_compiler()
    header = template_dir() / "simt_runtime.h"
    key = cache_key(header.read_text(), " ".join(HOST_FLAGS), " ".join(_include_flags()), version, __version__)
    folder = cache_root() / "emu" / f"pch-{key[:24]}"
    target = folder / "simt_runtime.h.gch"
    if target.exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".build-") as tmp:
        out = Path(tmp) / "simt_runtime.h.gch"
        flags = [f for f in HOST_FLAGS if f != "-shared"]
        result = subprocess.run([compiler, *flags, *_include_flags(), "-x", "c++-header", str(header), "-o", str(out)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            return None
        os.replace(out, target)
    return folder


def _build(text: str, name: str, target: Path) -> None:
    compiler, _ = host_compiler()
    target.parent.mkdir(parents=True, exist_ok=True)
    pch = precompiled_header_dir()
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as tmp:
        src = Path(tmp) / f"{name}.cpp"
        src.write_text(text)
        out = Path(tmp) / "kernel.so"
        cmd = [compiler, *HOST_FLAGS, *([f"-I{pch}"] if pch else []), *_include_flags(), str(src), "-o", str(out)]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise CompileError(_format_error(result.stderr, text, name))
        os.replace(out, target)  # atomic: a reader sees the whole library or none


def _format_error(stderr: str, text: str, name: str) -> str:
    message = [f"the host compiler could not build {name} for the emu backend:", stderr.strip()[:4000]]
    m = re.search(rf"{re.escape(name)}\.cu:(\d+):", stderr)
    if m:
        kernel = text.split(f'#line 1 "{name}.cu"\n', 1)[1]
        message += ["", "emitted source around the first error:", source_context(kernel, int(m.group(1)))]
    return "\n".join(message)


class EmuBackend:
    """Runs a kernel on the CPU: the emulator library with one launcher per entry point of the plan."""

    name = "emu"
    device_type = "cpu"

    def __init__(self, plan: KernelPlan, source: str) -> None:
        from resgen import __version__

        text = host_source(plan, source)
        compiler, version = host_compiler()
        key = cache_key(text, " ".join(HOST_FLAGS), version, __version__)
        self.path = cache_root() / "emu" / f"{plan.name}-{key[:24]}.so"
        self.plan = plan
        if not self.path.exists():
            _build(text, plan.name, self.path)
        try:
            self._launchers = self._load()
        except (OSError, AttributeError):  # a damaged cache entry: rebuild it once
            self.path.unlink(missing_ok=True)
            _build(text, plan.name, self.path)
            self._launchers = self._load()
        for fn in self._launchers.values():
            fn.restype = ctypes.c_int
            fn.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_longlong, ctypes.c_uint, ctypes.c_ulonglong,
                           ctypes.c_char_p, ctypes.c_ulonglong]

    def _load(self) -> dict[str, ctypes._CFuncPtr]:
        self.lib = ctypes.CDLL(str(self.path))  # held so the library stays loaded
        return {e.name: getattr(self.lib, f"{e.name}_launch") for e in self.plan.entries}

    def run(self, entry: str, params: ctypes.Array, grid: int, threads: int, smem_bytes: int,
            device: torch.device) -> None:
        err = ctypes.create_string_buffer(512)
        status = self._launchers[entry](params, grid, threads, smem_bytes, err, len(err))
        if status != 0:
            raise LaunchError(f"emu: {entry}: {err.value.decode()}")
