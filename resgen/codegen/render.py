"""Rendering: a KernelPlan through the Jinja templates to CUDA source."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import jinja2

from resgen.codegen.plan import KernelPlan


def template_dir() -> Path:
    """The templates folder: inside an installed package (`resgen.templates`), or at the top of a
    source checkout."""
    spec = importlib.util.find_spec("resgen.templates")
    for location in (spec.submodule_search_locations or []) if spec else []:
        if (Path(location) / "kernel.cu.j2").is_file():
            return Path(location)
    return Path(__file__).resolve().parents[2] / "templates"


@functools.lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    """The templates' environment. Compiled templates are kept in the resgen cache (Jinja's bytecode
    cache, keyed by the template's text and written by rename): compiling kernel.cu.j2 takes ~0.2 s,
    which every fresh process (a CLI call) would pay again."""
    from resgen.runtime.cache import cache_root

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir())),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        bytecode_cache=jinja2.FileSystemBytecodeCache(str(_folder(cache_root() / "templates"))),
    )


def _folder(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def render(plan: KernelPlan) -> str:
    """The CUDA source of `plan`: self-contained apart from the CUDA fp16/bf16 headers."""
    from resgen import __version__

    env = environment()
    try:
        return env.get_template("kernel.cu.j2").render(
            plan=plan,
            version=__version__,
            prelude=env.loader.get_source(env, "prelude.cuh")[0].rstrip(),
            philox=env.loader.get_source(env, "philox.cuh")[0].rstrip(),
            cluster=env.loader.get_source(env, "cluster.cuh")[0].rstrip(),
        )
    except jinja2.TemplateSyntaxError as exc:
        lines = (exc.source or "").splitlines()
        around = "\n".join(f"{i + 1:5d}| {lines[i]}" for i in range(max(0, exc.lineno - 4), min(len(lines), exc.lineno + 3)))
        raise jinja2.TemplateSyntaxError(f"{exc.message}\n{around}", exc.lineno, exc.name, exc.filename) from exc
