"""Where the CUDA pieces live: NVRTC's library and the headers NVRTC and the emulator include.

CUDA_PATH / CUDA_HOME win when set; then the pip wheels (nvidia-cuda-nvrtc, nvidia-cuda-runtime,
nvidia-cuda-crt) and CCCL's headers inside CuPy; a toolkit in /usr/local/cuda comes last.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
from pathlib import Path

from resgen.errors import CompileError

#: header -> the package that provides it, for the error message when it is missing.
REQUIRED_HEADERS = {
    "cuda_fp16.h": "nvidia-cuda-runtime",
    "cuda_bf16.h": "nvidia-cuda-runtime",
    "vector_types.h": "nvidia-cuda-runtime",
    "crt/host_defines.h": "nvidia-cuda-crt",
    "nv/target": "cupy-cuda13x (bundles CCCL's libcudacxx)",
}


def _toolkit_roots() -> list[Path]:
    roots = [Path(os.environ[v]) for v in ("CUDA_PATH", "CUDA_HOME") if os.environ.get(v)]
    for entry in sys.path:
        for sub in ("nvidia/cu13", "nvidia/cuda_runtime", "nvidia/cuda_nvrtc", "nvidia/cuda_crt", "nvidia/cu12"):
            candidate = Path(entry or ".") / sub
            if candidate.is_dir():
                roots.append(candidate)
    return roots + [Path("/usr/local/cuda")]  # a system toolkit, last


def _cccl_dirs() -> list[Path]:
    dirs = []
    spec = importlib.util.find_spec("cupy")
    if spec is not None and spec.submodule_search_locations:
        base = Path(next(iter(spec.submodule_search_locations))) / "_core" / "include" / "cupy" / "_cccl"
        dirs += [base / "libcudacxx", base / "cub", base / "thrust"]
    return [d for d in dirs if d.is_dir()]


@functools.lru_cache(maxsize=1)
def include_dirs() -> tuple[str, ...]:
    """Include folders holding every header in REQUIRED_HEADERS; raises naming a missing one."""
    candidates = [r / "include" for r in _toolkit_roots()] + [r / "targets" / "x86_64-linux" / "include" for r in _toolkit_roots()]
    candidates += _cccl_dirs()
    found: list[str] = []
    for header, package in REQUIRED_HEADERS.items():
        home = next((d for d in candidates if (d / header).exists()), None)
        if home is None:
            raise CompileError(
                f"CUDA header {header!r} not found (looked in {', '.join(map(str, candidates)) or 'nothing'}); "
                f"install {package} or set CUDA_PATH to a CUDA toolkit"
            )
        if str(home) not in found:
            found.append(str(home))
    return tuple(found)


@functools.lru_cache(maxsize=1)
def nvrtc_library() -> Path:
    """The NVRTC shared library; raises CompileError saying how to install it when absent."""
    names = ("libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so")
    for root in _toolkit_roots():
        for lib in ("lib", "lib64", "targets/x86_64-linux/lib"):
            for name in names:
                if (root / lib / name).exists():
                    return root / lib / name
    raise CompileError("NVRTC (libnvrtc.so) not found; `pip install nvidia-cuda-nvrtc` or set CUDA_PATH")


def environment_report() -> list[tuple[str, str]]:
    """(what, value) lines describing the toolchain: each line says what failed instead of raising."""
    import platform

    import torch

    def attempt(fn) -> str:
        try:
            return str(fn())
        except Exception as exc:  # noqa: BLE001 - a report line, not a failure
            return f"unavailable ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"

    def cupy_version() -> str:
        import cupy

        return cupy.__version__

    def driver() -> str:
        import cupy

        version = cupy.cuda.runtime.driverGetVersion()
        return f"CUDA {version // 1000}.{(version % 1000) // 10}" if version else "none (no CUDA driver)"

    def gpu() -> str:
        if not torch.cuda.is_available():
            return "none (torch.cuda.is_available() is False)"
        major, minor = torch.cuda.get_device_capability()
        return f"{torch.cuda.get_device_name()} (sm_{major}{minor}, {torch.cuda.device_count()} device(s))"

    def nvrtc_version() -> str:
        from resgen.runtime import nvrtc

        return ".".join(map(str, nvrtc.version()))

    def headers() -> str:
        dirs = include_dirs()
        return "; ".join(f"{h} in {next(d for d in dirs if (Path(d) / h).exists())}" for h in REQUIRED_HEADERS)

    def host() -> str:
        from resgen.runtime.emu import host_compiler

        path, version = host_compiler()
        return f"{path} ({version})"

    def op_kernels() -> str:
        from resgen.runtime import ops

        return "C++ (resgen.runtime.native)" if ops.NATIVE is None else f"Python: {ops.NATIVE}"

    from resgen import __version__

    return [
        ("resgen", __version__),
        ("op kernels", attempt(op_kernels)),
        ("python", f"{platform.python_version()} ({sys.executable})"),
        ("torch", f"{torch.__version__} (CUDA {torch.version.cuda})"),
        ("cupy", attempt(cupy_version)),
        ("gpu", attempt(gpu)),
        ("driver", attempt(driver)),
        ("nvrtc library", attempt(nvrtc_library)),
        ("nvrtc version", attempt(nvrtc_version)),
        ("include dirs", attempt(lambda: ", ".join(include_dirs()))),
        ("headers", attempt(headers)),
        ("host compiler", attempt(host)),
        ("cache", attempt(lambda: __import__("resgen.runtime.cache", fromlist=["cache_root"]).cache_root())),
    ]
