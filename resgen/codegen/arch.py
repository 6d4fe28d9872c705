"""Per-architecture limits the planner and the resource checks use."""

from __future__ import annotations

from dataclasses import dataclass

from resgen.errors import PlanError


@dataclass(frozen=True)
class Arch:
    name: str  # "sm_90"
    max_dynamic_smem: int  # bytes per CTA, opt-in maximum
    regs_per_sm: int = 65536
    max_threads_per_sm: int = 2048
    clusters: bool = False

    @property
    def number(self) -> int:
        return int(self.name.split("_")[1])


ARCHS: dict[str, Arch] = {a.name: a for a in (
    Arch("sm_80", 166912),
    Arch("sm_86", 101376, max_threads_per_sm=1536),
    Arch("sm_89", 101376, max_threads_per_sm=1536),
    Arch("sm_90", 232448, clusters=True),
    Arch("sm_100", 232448, clusters=True),
    Arch("sm_120", 101376, max_threads_per_sm=1536, clusters=True),
)}
DEFAULT_ARCH = "sm_90"


def get_arch(name: str) -> Arch:
    key = name if name.startswith("sm_") else f"sm_{name}"
    try:
        return ARCHS[key]
    except KeyError:
        raise PlanError(f"arch: unknown {name!r}; expected one of {', '.join(ARCHS)}") from None
