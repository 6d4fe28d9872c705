"""NVRTC through ctypes: CUDA source -> cubin for a named arch, with ptxas's resource report.

NVRTC is called directly, so compiling needs no GPU and no driver.
"""

from __future__ import annotations

import ctypes
import functools
import re
from dataclasses import dataclass

from resgen.errors import CompileError
from resgen.runtime.toolkit import include_dirs, nvrtc_library

#: Options every resgen kernel is compiled with. --fmad=false keeps a*b+c as two roundings, as
#: the reference and the emulator compute it.
BASE_OPTIONS = ("-std=c++17", "-lineinfo", "--fmad=false", "-Xptxas=-v", "-default-device")


@dataclass(frozen=True)
class Resources:
    """What ptxas reports for one kernel."""

    registers: int
    spill_stores: int
    spill_loads: int
    stack_frame: int
    shared_static: int
    barriers: int

    @property
    def spills(self) -> int:
        return self.spill_stores + self.spill_loads

    def as_dict(self) -> dict[str, int]:
        return dict(registers=self.registers, spill_stores=self.spill_stores, spill_loads=self.spill_loads,
                    stack_frame=self.stack_frame, shared_static=self.shared_static, barriers=self.barriers)


@dataclass(frozen=True)
class Compiled:
    cubin: bytes
    ptx: str
    log: str
    arch: str
    options: tuple[str, ...]


def _num(pattern: str, text: str) -> int:
    m = re.search(pattern, text)
    return int(m.group(1)) if m else 0


def parse_resources(log: str, kernel: str) -> Resources:
    """The ptxas -v report of `kernel` in an NVRTC log."""
    m = re.search(rf"Compiling entry function '{re.escape(kernel)}'(.*?)(?=Compiling entry function|\Z)", log, re.S)
    if m is None:
        raise CompileError(f"the ptxas report has no entry function {kernel!r}")
    section = m.group(1)
    return Resources(
        registers=_num(r"Used (\d+) registers", section),
        spill_stores=_num(r"(\d+) bytes spill stores", section),
        spill_loads=_num(r"(\d+) bytes spill loads", section),
        stack_frame=_num(r"(\d+) bytes stack frame", section),
        shared_static=_num(r"(\d+) bytes smem", section),
        barriers=_num(r"used (\d+) barriers", section),
    )


@functools.lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL:
    lib = ctypes.CDLL(str(nvrtc_library()))
    lib.nvrtcGetErrorString.restype = ctypes.c_char_p
    return lib


def version() -> tuple[int, int]:
    major, minor = ctypes.c_int(), ctypes.c_int()
    _lib().nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
    return major.value, minor.value


def _check(status: int, what: str) -> None:
    if status != 0:
        raise CompileError(f"NVRTC {what} failed: {_lib().nvrtcGetErrorString(status).decode()}")


def _get(prog: ctypes.c_void_p, size_fn: str, get_fn: str) -> bytes:
    lib, size = _lib(), ctypes.c_size_t()
    _check(getattr(lib, size_fn)(prog, ctypes.byref(size)), size_fn)
    buf = ctypes.create_string_buffer(size.value)
    _check(getattr(lib, get_fn)(prog, buf), get_fn)
    return buf.raw[: size.value]


def source_context(source: str, line: int, radius: int = 3) -> str:
    """The lines of `source` around 1-based `line`, numbered, the line itself marked."""
    lines = source.splitlines()
    lo, hi = max(1, line - radius), min(len(lines), line + radius)
    return "\n".join(f"{'>' if i == line else ' '}{i:5d}| {lines[i - 1]}" for i in range(lo, hi + 1))


def compile_cubin(source: str, name: str, arch: str, extra: tuple[str, ...] = ()) -> Compiled:
    """Compile `source` for `arch` (e.g. "sm_90") to a cubin; CompileError shows the failing lines."""
    lib = _lib()
    options = (f"-arch={arch}", *BASE_OPTIONS, *extra, *(f"-I{d}" for d in include_dirs()))
    prog = ctypes.c_void_p()
    _check(lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), f"{name}.cu".encode(), 0, None, None),
           "nvrtcCreateProgram")
    try:
        argv = (ctypes.c_char_p * len(options))(*(o.encode() for o in options))
        status = lib.nvrtcCompileProgram(prog, len(options), argv)
        log = _get(prog, "nvrtcGetProgramLogSize", "nvrtcGetProgramLog").rstrip(b"\0").decode(errors="replace")
        if status != 0:
            raise CompileError(format_compile_error(log, source, name, arch))
        cubin = _get(prog, "nvrtcGetCUBINSize", "nvrtcGetCUBIN")
        ptx = _get(prog, "nvrtcGetPTXSize", "nvrtcGetPTX").rstrip(b"\0").decode()
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))
    return Compiled(cubin, ptx, log, arch, options)


def format_compile_error(log: str, source: str, name: str, arch: str) -> str:
    message = [f"NVRTC could not compile {name} for {arch}:", log.strip()]
    m = re.search(rf"{re.escape(name)}\.cu\((\d+)\)", log)
    if m:
        message += ["", "emitted source around the first error:", source_context(source, int(m.group(1)))]
    return "\n".join(message)


def global_access_bits(ptx: str) -> dict[str, int]:
    """The widest global load and store in PTX, in bits (e.g. 128 for ld.global.v4.u32)."""
    widths = {"load": 0, "store": 0}
    pattern = re.compile(r"\b(ld|st)\.global(?:\.nc)?(?:\.[a-z]+\d*)*?(?:\.v(\d))?\.([usbf])(\d+)\b")
    for m in pattern.finditer(ptx):
        kind = "load" if m.group(1) == "ld" else "store"
        bits = int(m.group(4)) * int(m.group(2) or 1)
        widths[kind] = max(widths[kind], bits)
    return widths
