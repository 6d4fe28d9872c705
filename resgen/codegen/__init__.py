"""Code generation: lower a block to a KernelPlan, render it to CUDA."""

from __future__ import annotations

from resgen.codegen.arch import DEFAULT_ARCH
from resgen.codegen.lower import default_config, lower
from resgen.codegen.plan import KernelPlan, LaunchConfig
from resgen.codegen.render import render
from resgen.errors import PlanError
from resgen.ir.block import Block

__all__ = ["KernelPlan", "LaunchConfig", "default_config", "emit", "lower", "plan_and_source", "render"]


def plan_and_source(block: Block, hidden: int, config: LaunchConfig | str | None = None,
                    arch: str = DEFAULT_ARCH, rows: int | None = None) -> tuple[KernelPlan, str]:
    """The plan and CUDA source of `block` at `hidden`; `config` may be a LaunchConfig or 'k=v,...';
    `rows`, when known, lets the heuristic spread few rows over clusters (default_config)."""
    if isinstance(config, str):
        config = default_config(block, hidden, arch, fixed=LaunchConfig.fields_of(config), rows=rows)
    elif config is None and rows is not None:
        config = default_config(block, hidden, arch, rows=rows)
    elif config is not None and not isinstance(config, LaunchConfig):
        raise PlanError(f"config must be a LaunchConfig or a 'tpr=..,rows=..' string, got {type(config).__name__}")
    plan = lower(block, hidden, config, arch)
    return plan, render(plan)


def emit(block: Block, hidden: int, arch: str = DEFAULT_ARCH, config: LaunchConfig | str | None = None) -> str:
    """The CUDA source resgen compiles for `block` at `hidden` on `arch`, without compiling it."""
    return plan_and_source(block, hidden, config, arch)[1]
