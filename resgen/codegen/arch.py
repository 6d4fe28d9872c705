"""Per-architecture limits the planner and the resource checks use."""

from __future__ import annotations

from dataclasses import dataclass

from resgen.errors import PlanError


@dataclass(frozen=True)
class Arch:
    """Limits of an architecture, and (for the cost model) the SM count and L2 size of its typical
    data-center part: A100 for sm_80, A10 for sm_86, L40S for sm_89, H100/H200 for sm_90, B200 for
    sm_100, RTX 5090 for sm_120."""

    name: str  # "sm_90"
    max_dynamic_smem: int  # bytes per CTA, opt-in maximum
    sms: int
    l2_bytes: int
    regs_per_sm: int = 65536
    max_threads_per_sm: int = 2048
    clusters: bool = False

    @property
    def number(self) -> int:
        return int(self.name.split("_")[1])


ARCHS: dict[str, Arch] = {a.name: a for a in (
    Arch("sm_80", 166912, sms=108, l2_bytes=40 << 20),
    Arch("sm_86", 101376, sms=72, l2_bytes=6 << 20, max_threads_per_sm=1536),
    Arch("sm_89", 101376, sms=142, l2_bytes=96 << 20, max_threads_per_sm=1536),
    Arch("sm_90", 232448, sms=132, l2_bytes=50 << 20, clusters=True),
    Arch("sm_100", 232448, sms=148, l2_bytes=126 << 20, clusters=True),
    Arch("sm_120", 101376, sms=170, l2_bytes=96 << 20, max_threads_per_sm=1536, clusters=True),
)}
DEFAULT_ARCH = "sm_90"


def get_arch(name: str) -> Arch:
    key = name if name.startswith("sm_") else f"sm_{name}"
    try:
        return ARCHS[key]
    except KeyError:
        raise PlanError(f"arch: unknown {name!r}; expected one of {', '.join(ARCHS)}") from None
