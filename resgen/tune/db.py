"""The tuning database: the best measured LaunchConfig per (block, hidden, GPU, arch, rows bucket).

A JSON file (default `<cache>/tuning.json`, or $RESGEN_TUNING_DB). Writers take an exclusive lock
on a sidecar lock file, re-read, merge and write by temp file + rename, so two `resgen tune`
processes never lose each other's results and a reader never sees half a file.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from resgen.codegen.plan import LaunchConfig
from resgen.errors import PlanError
from resgen.ir.block import Block
from resgen.runtime.cache import atomic_write, cache_root

ROW_BUCKETS = ((64, "rows<=64"), (4096, "rows<=4096"), (None, "rows>4096"))


def db_path() -> Path:
    return Path(os.environ["RESGEN_TUNING_DB"]) if os.environ.get("RESGEN_TUNING_DB") else cache_root() / "tuning.json"


def rows_bucket(rows: int) -> str:
    return next(name for limit, name in ROW_BUCKETS if limit is None or rows <= limit)


def entry_key(block: Block, hidden: int, gpu: str, arch: str, rows: int) -> str:
    """Dtypes are part of the block key (every parameter's dtype is in its node's key)."""
    return f"{block.name}:{block.key}|h{hidden}|{gpu}|{arch}|{rows_bucket(rows)}"


#: What every stored entry holds (written by `resgen tune`).
ENTRY_KEYS = ("config", "time_us", "gbps", "frac_copy", "date")


def read(path: Path | str | None = None) -> dict[str, dict[str, Any]]:
    """Every stored entry by key; PlanError says what is wrong with a file that is not a database."""
    path = Path(path) if path else db_path()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except IsADirectoryError:
        raise PlanError(f"tuning database {path} is a directory, not a JSON file") from None
    except OSError as exc:
        raise PlanError(f"tuning database {path} cannot be read: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise PlanError(f"tuning database {path} is not valid JSON ({exc}); delete it to start over") from exc
    if not isinstance(data, dict):
        raise PlanError(f"tuning database {path} is not a resgen tuning database (expected a JSON object of "
                        f"entries, got {type(data).__name__}); delete it to start over")
    for key, entry in data.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("config"), str):
            raise PlanError(f"tuning database {path}: entry {key!r} is not a tuning record (no 'config'); delete "
                            f"the file to start over")
    return data


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(path.suffix + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def store(key: str, record: dict[str, Any], path: Path | str | None = None) -> None:
    """Insert or replace one entry, keeping every other process's entries."""
    path = Path(path) if path else db_path()
    with _locked(path):
        data = read(path)
        data[key] = record
        atomic_write(path, json.dumps(data, indent=1, sort_keys=True).encode())


def lookup(block: Block, hidden: int, gpu: str, arch: str, rows: int | None = None,
           path: Path | str | None = None) -> LaunchConfig | None:
    """The stored best config for this block and size on this GPU (the given rows bucket, else the
    largest-rows bucket stored), or None when nothing was tuned."""
    data = read(path)
    buckets = [rows_bucket(rows)] if rows is not None else [name for _, name in reversed(ROW_BUCKETS)]
    for bucket in buckets:
        found = data.get(f"{block.name}:{block.key}|h{hidden}|{gpu}|{arch}|{bucket}")
        if found:
            return LaunchConfig.parse(found["config"])
    return None
