"""Resolve a SPEC (a catalog name, `path/to/file.py:name`, `package.module:name`, or a textual-IR
file `path/to/block.rgir`) to a Block."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

from resgen.catalog import catalog
from resgen.errors import SpecError
from resgen.ir.block import Block
from resgen.ir.dtypes import DType, as_dtype, bf16


def resolve(spec: str, dtype: DType | str | None = None) -> Block:
    """The block SPEC names; a factory (catalog entry or callable) is called with `dtype`."""
    dt = bf16 if dtype is None else as_dtype(dtype, what="--dtype")
    if spec.endswith(".rgir"):
        return _load_ir(spec, dtype)
    if ":" not in spec:
        if spec not in catalog:
            raise SpecError(f"unknown SPEC {spec!r}: not a catalog block ({', '.join(catalog)}) "
                            f"and not of the form file.py:name or module:name")
        return catalog[spec](dt)
    where, _, attr = spec.rpartition(":")
    if not where or not attr.isidentifier():
        raise SpecError(f"SPEC {spec!r}: expected file.py:name or module:name, with both parts")
    module = _load_file(where) if where.endswith(".py") else _import(where)
    if not hasattr(module, attr):
        raise SpecError(f"SPEC {spec!r}: {where} has no attribute {attr!r}")
    obj = getattr(module, attr)
    if isinstance(obj, Block):
        if dtype is not None:
            raise SpecError(f"SPEC {spec!r} is a Block with fixed dtypes; --dtype needs a factory function")
        return obj
    if callable(obj):
        block = obj(dt)
        if isinstance(block, Block):
            return block
    raise SpecError(f"SPEC {spec!r}: expected a resgen Block or a function of dtype returning one")


def _load_ir(path: str, dtype: DType | str | None) -> Block:
    from resgen.ir.parser import parse_block

    if dtype is not None:
        raise SpecError(f"SPEC {path!r} is textual IR with fixed dtypes; --dtype does not apply")
    return parse_block(read_user_file(path, "a textual-IR file"))


def read_user_file(path: str | Path, what: str) -> str:
    """The text of a file the user named; SpecError says in one line why it cannot be read."""
    try:
        return Path(path).read_text()
    except FileNotFoundError:
        raise SpecError(f"{path}: no such file (expected {what})") from None
    except IsADirectoryError:
        raise SpecError(f"{path}: is a directory, not {what}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: cannot be read as {what}: {exc}") from None


def _load_file(path: str) -> object:
    file = Path(path)
    if not file.is_file():
        raise SpecError(f"SPEC file {path!r} does not exist")
    module_spec = importlib.util.spec_from_file_location(f"resgen_spec_{file.stem}", file)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:  # the user's file: report, don't crash
        raise SpecError(f"SPEC file {path!r} failed to import: {type(exc).__name__}: {exc}") from exc
    return module


def _import(name: str) -> object:
    try:
        return importlib.import_module(name)
    except (ImportError, ValueError) as exc:
        raise SpecError(f"SPEC module {name!r} cannot be imported: {exc}") from exc
