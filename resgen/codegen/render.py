"""Rendering: a KernelPlan through the Jinja templates to CUDA source."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Any

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


class TemplateCache(jinja2.BytecodeCache):
    """Compiled templates in the resgen cache (wherever it is when a template is first compiled), like
    every other artifact there: checksummed entries written by rename, a damaged one compiled again
    (Jinja itself checks the template's text and the Python version). Compiling kernel.cu.j2 takes
    ~0.3 s, which every fresh process would pay. A cache that cannot be written costs only that."""

    @staticmethod
    def _disk() -> Any:
        from resgen.runtime.cache import DiskCache

        return DiskCache("templates")

    def load_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        try:
            entry = self._disk().load(bucket.key)
        except OSError:
            return
        if entry is not None:
            bucket.bytecode_from_string(entry["code"])

    def dump_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        try:
            self._disk().store(bucket.key, {"code": bucket.bytecode_to_string()})
        except OSError:
            pass  # rendering never fails for the cache's sake


@functools.lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir())),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        bytecode_cache=TemplateCache(),
    )


def render(plan: KernelPlan, env: jinja2.Environment | None = None) -> str:
    """The CUDA source of `plan`: self-contained apart from the CUDA fp16/bf16 headers."""
    from resgen import __version__

    env = env or environment()
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
