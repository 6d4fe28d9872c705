"""Compiling emitted source for a GPU arch, through the disk cache."""

from __future__ import annotations

from dataclasses import dataclass

from resgen.runtime import nvrtc
from resgen.runtime.cache import DiskCache, cache_key
from resgen.runtime.nvrtc import Resources, global_access_bits, parse_resources


@dataclass(frozen=True)
class DeviceBinary:
    """A cubin and what is known about it without running it."""

    name: str
    arch: str
    cubin: bytes
    ptx: str
    log: str
    resources: Resources

    @property
    def access_bits(self) -> dict[str, int]:
        return global_access_bits(self.ptx)


def compile_for_device(source: str, name: str, arch: str, extra: tuple[str, ...] = ()) -> DeviceBinary:
    """The cubin of kernel `name` in `source` for `arch`, from the cache when already built."""
    from resgen import __version__

    major, minor = nvrtc.version()
    key = cache_key(source, " ".join(nvrtc.BASE_OPTIONS + extra), arch, f"nvrtc{major}.{minor}", __version__)

    def build() -> dict:
        c = nvrtc.compile_cubin(source, name, arch, extra)
        return {"cubin": c.cubin, "ptx": c.ptx, "log": c.log}

    entry = DiskCache("cubin").get_or_build(key, build)
    return DeviceBinary(name, arch, entry["cubin"], entry["ptx"], entry["log"], parse_resources(entry["log"], name))
