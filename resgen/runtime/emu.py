"""The `emu` backend: the emitted CUDA compiled by the host C++ compiler against resgen's SIMT
runtime (templates/simt_runtime.h, and libresgen_emu.so built once from simt_runtime.cpp), loaded
with ctypes and run on torch CPU tensors."""

from __future__ import annotations

import ctypes
import functools
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from resgen.codegen.plan import KernelPlan
from resgen.codegen.render import environment, template_dir
from resgen.errors import BackendUnavailableError, CompileError, LaunchError
from resgen.runtime.cache import cache_key, cache_root, file_stem, install_verified, is_verified
from resgen.runtime.launch import byte_span
from resgen.runtime.nvrtc import source_context
from resgen.runtime.toolkit import include_dirs

#: Host flags: no FMA contraction and no fast-math, so float32 arithmetic rounds like the reference's.
HOST_FLAGS = ("-std=c++17", "-O1", "-fPIC", "-shared", "-pthread", "-ffp-contract=off", "-fno-fast-math", "-w")
#: Added for a sanitizing build (rg.verify(..., sanitize=True)): every RG_CHECK reports to the runtime.
SANITIZE_FLAGS = ("-DRG_SANITIZE=1",)
#: The emulator's schedules (templates/simt_runtime.h): in order, in reverse, random with eager release.
SCHEDULES = {"forward": 0, "reverse": 1, "random": 2}


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
    return f'#include "simt_runtime.h"\n#line 1 "{_unit(plan.name)}.cu"\n{source}\n#line 1 "launcher.cpp"\n{launchers}'


def _unit(name: str) -> str:
    """The file-name stem of a kernel's translation unit (bounded: block names can be long)."""
    return file_stem(name)


def _include_flags() -> list[str]:
    return [f"-I{template_dir()}", *(f"-I{d}" for d in include_dirs())]


def precompiled_header_dir(flags: tuple[str, ...] = HOST_FLAGS) -> Path | None:
    """A folder holding simt_runtime.h.gch for these flags (built once, cached, checksum-sealed);
    None if it cannot be built.

    g++ looks for the .gch before the header in each include folder and silently falls back to the
    header when the .gch does not match, so this only ever saves time; a damaged one is rebuilt.
    """
    return _precompiled_header(cache_root(), flags)


@functools.cache
def _precompiled_header(root: Path, flags: tuple[str, ...]) -> Path | None:
    compiler, version = host_compiler()
    header = template_dir() / "simt_runtime.h"
    pch_flags = [f for f in flags if f != "-shared"]
    try:
        return built_once(root / "emu", "pch", "simt_runtime.h.gch",
                          (header.read_text(), " ".join(flags), " ".join(_include_flags())),
                           lambda out: [compiler, *pch_flags, *_include_flags(), "-x", "c++-header", str(header),
                                        "-o", str(out)])
    except CompileError:
        return None


def runtime_library_dir() -> Path:
    """The folder holding libresgen_emu.so: the emulator's scheduler, launches and sanitizer
    (templates/simt_runtime.cpp), built once per toolchain and linked by every emulated kernel."""
    return _runtime_library(cache_root())


@functools.cache
def _runtime_library(root: Path) -> Path:
    compiler, _ = host_compiler()
    sources = [template_dir() / "simt_runtime.h", template_dir() / "simt_runtime.cpp"]
    inputs = (*(f.read_text() for f in sources), " ".join(HOST_FLAGS), " ".join(_include_flags()))
    return built_once(root / "emu", "rt", "libresgen_emu.so", inputs,
                      lambda out: [compiler, *HOST_FLAGS, *_include_flags(), str(sources[1]), "-o", str(out)])


def built_once(root: Path, kind: str, name: str, inputs: tuple[str, ...],
               command: Callable[[Path], list[str]]) -> Path:
    """The folder `<root>/<kind>-<key>` holding `name`, built by the host compiler's `command(out)`
    the first time (keyed by `inputs`, the compiler and resgen's version; sealed and checked before
    use, so a damaged one is built again). CompileError when the compiler fails."""
    from resgen import __version__

    _, version = host_compiler()
    key = cache_key(*inputs, version, __version__)
    folder = root / f"{kind}-{key[:24]}"
    target = folder / name
    if is_verified(target):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".build-") as tmp:
        out = Path(tmp) / name
        result = subprocess.run(command(out), capture_output=True, text=True)
        if result.returncode != 0:
            raise CompileError(f"the host compiler could not build {name}:\n{result.stderr[:4000]}")
        install_verified(out, target)
    return folder


def _build(text: str, name: str, target: Path, flags: tuple[str, ...]) -> None:
    compiler, _ = host_compiler()
    target.parent.mkdir(parents=True, exist_ok=True)
    pch = precompiled_header_dir(flags)
    runtime = runtime_library_dir()
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as tmp:
        src = Path(tmp) / f"{_unit(name)}.cpp"
        src.write_text(text)
        out = Path(tmp) / "kernel.so"
        cmd = [compiler, *flags, *([f"-I{pch}"] if pch else []), *_include_flags(), str(src), "-o", str(out),
               f"-L{runtime}", "-lresgen_emu", f"-Wl,-rpath,{runtime}"]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise CompileError(_format_error(result.stderr, text, name))
        install_verified(out, target)  # atomic, sealed: a reader sees the whole library or rebuilds it


def _format_error(stderr: str, text: str, name: str) -> str:
    message = [f"the host compiler could not build {name} for the emu backend:", stderr.strip()[:4000]]
    m = re.search(rf"{re.escape(_unit(name))}\.cu:(\d+):", stderr)
    if m:
        kernel = text.split(f'#line 1 "{_unit(name)}.cu"\n', 1)[1]
        message += ["", "emitted source around the first error:", source_context(kernel, int(m.group(1)))]
    return "\n".join(message)


@dataclass(frozen=True)
class Hazard:
    """One sanitizer finding: its kind, the emitted-source line, and who did what where."""

    kind: str
    line: int
    detail: str
    source_line: str = ""

    def __str__(self) -> str:
        where = f"line {self.line}: {self.source_line.strip()}" if self.source_line else f"line {self.line}"
        return f"{self.kind} at {where}\n    {self.detail}"


class EmuBackend:
    """Runs a kernel on the CPU: the emulator library with one launcher per entry point of the plan.

    `sanitize` builds the library with the sanitizer (templates/simt_runtime.h); `schedule` picks
    the emulator's thread schedule for the next launches."""

    name = "emu"
    device_type = "cpu"

    def __init__(self, plan: KernelPlan, source: str, sanitize: bool = False) -> None:
        from resgen import __version__

        self.plan, self.source, self.sanitize = plan, source, sanitize
        self.flags = HOST_FLAGS + (SANITIZE_FLAGS if sanitize else ())
        text = host_source(plan, source)
        compiler, version = host_compiler()
        key = cache_key(text, " ".join(self.flags), version, __version__, str(runtime_library_dir()))
        self.path = cache_root() / "emu" / f"{_unit(plan.name)}-{key[:24]}.so"
        if not is_verified(self.path):
            _build(text, plan.name, self.path, self.flags)
        try:
            self._launchers = self._load()
        except (OSError, AttributeError):  # a damaged cache entry: rebuild it once
            self.path.unlink(missing_ok=True)
            _build(text, plan.name, self.path, self.flags)
            self._launchers = self._load()
        for fn in self._launchers.values():
            fn.restype = ctypes.c_int
            fn.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_longlong, ctypes.c_uint, ctypes.c_ulonglong,
                           ctypes.c_char_p, ctypes.c_ulonglong]
        self.set_schedule("forward")

    def _load(self) -> dict[str, ctypes._CFuncPtr]:
        self.lib = ctypes.CDLL(str(self.path))  # held so the library stays loaded
        entries = self.plan.entries + ((self.plan.finalize,) if self.plan.finalize else ())
        return {e.name: getattr(self.lib, f"{e.name}_launch") for e in entries}

    def set_schedule(self, schedule: str, seed: int = 0) -> None:
        """Run later launches under `schedule` (forward, reverse, random) with `seed`."""
        if schedule not in SCHEDULES:
            raise LaunchError(f"emu: schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
        self.lib.rg_emu_set_schedule(SCHEDULES[schedule], ctypes.c_uint(seed & 0xFFFFFFFF))

    def observe(self, tensors: dict[str, torch.Tensor]) -> None:
        """Start a sanitized launch: global accesses outside these tensors' memory are hazards."""
        spans = [(n, *byte_span(t)) for n, t in tensors.items() if t.numel()]
        lo = (ctypes.c_ulonglong * len(spans))(*(a for _, a, _ in spans))
        hi = (ctypes.c_ulonglong * len(spans))(*(b for _, _, b in spans))
        self.lib.rg_emu_sanitize_begin(lo, hi, "\n".join(n for n, _, _ in spans).encode(), len(spans))

    def hazards(self) -> list[Hazard]:
        """What the sanitizer found since `observe`, each pointing at its line of the emitted source."""
        size = 1 << 16
        buf = ctypes.create_string_buffer(size)
        self.lib.rg_emu_sanitize_report(buf, ctypes.c_ulonglong(size))
        lines = self.source.splitlines()
        found = []
        for entry in buf.value.decode(errors="replace").splitlines():
            kind, line, detail = entry.split("|", 2)
            number = int(line)
            found.append(Hazard(kind, number, detail, lines[number - 1] if 0 < number <= len(lines) else ""))
        return found

    def run(self, entry: str, params: ctypes.Array, grid: int, threads: int, smem_bytes: int,
            device: torch.device) -> None:
        err = ctypes.create_string_buffer(512)
        self.lib.rg_emu_set_sanitizing(int(self.sanitize))  # the runtime is shared by every kernel
        status = self._launchers[entry](params, grid, threads, smem_bytes, err, len(err))
        if status != 0:
            raise LaunchError(f"emu: {entry}: {err.value.decode()}")
