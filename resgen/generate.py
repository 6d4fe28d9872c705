"""The emitted CUDA of the built-in catalog, as committed under generated/."""

from __future__ import annotations

from pathlib import Path

from resgen.catalog import catalog
from resgen.codegen import emit
from resgen.errors import SpecError
from resgen.ir.dtypes import bf16

#: (hidden sizes, dtype, arch) the committed files are emitted for: a common size and an odd one.
GENERATED_HIDDEN = (4096, 4097)
GENERATED_ARCH = "sm_90"


def default_out() -> Path:
    """generated/ of the source checkout resgen runs from, wherever the command is run."""
    root = Path(__file__).resolve().parents[1]
    if (root / "pyproject.toml").is_file() and (root / "generated").is_dir():
        return root / "generated"
    raise SpecError("resgen is not running from a source checkout, which holds generated/; pass --out FOLDER")


def generated_files() -> dict[str, str]:
    """File name -> emitted source, for every catalog block at every GENERATED_HIDDEN size, and the
    backward (rg.grad) of every trainable one at the first size."""
    from resgen.passes.autodiff import grad

    forward = {
        f"{name}_{bf16}_h{hidden}.cu": emit(entry(bf16), hidden, arch=GENERATED_ARCH)
        for name, entry in catalog.items()
        for hidden in (entry.fit(h) for h in GENERATED_HIDDEN)  # block-scaled entries: whole blocks
    }
    backward = {f"{name}_grad_{bf16}_h{GENERATED_HIDDEN[0]}.cu": emit(grad(entry(bf16)), GENERATED_HIDDEN[0],
                                                                    arch=GENERATED_ARCH)
                for name, entry in catalog.items() if entry.trainable}
    return {**forward, **backward}


def stale_files(out: Path) -> list[str]:
    """Names under `out` that differ from what resgen emits now, are missing, or are left over."""
    if out.exists() and not out.is_dir():
        raise SpecError(f"{out} is not a folder")
    want = generated_files()
    have = {p.name for p in out.glob("*.cu")} if out.is_dir() else set()
    differ = [n for n, text in want.items() if not (out / n).is_file() or (out / n).read_text() != text]
    return sorted(differ + list(have - set(want)))


def write_generated(out: Path) -> list[str]:
    """Rewrite `out` to hold exactly the current generated files; returns their names."""
    want = generated_files()
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.cu"):
        if old.name not in want:
            old.unlink()
    for name, text in want.items():
        (out / name).write_text(text)
    return sorted(want)
