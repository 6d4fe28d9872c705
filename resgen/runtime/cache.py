"""An on-disk cache of compiled artifacts, safe across processes and self-healing.

Each entry is one JSON file written to a temporary name and renamed into place, so a reader
sees a whole entry or none; every entry carries a checksum, and one that fails it is removed
and rebuilt.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def cache_root() -> Path:
    """$RESGEN_CACHE_DIR, else $XDG_CACHE_HOME/resgen, else ~/.cache/resgen."""
    if os.environ.get("RESGEN_CACHE_DIR"):
        return Path(os.environ["RESGEN_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "resgen"


def cache_key(*parts: str) -> str:
    return hashlib.sha256("\x1e".join(parts).encode()).hexdigest()


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that no reader ever sees a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _digest(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class DiskCache:
    """Entries of one kind (a namespace) under the cache root: key -> JSON-able dict with bytes."""

    def __init__(self, namespace: str, root: Path | None = None) -> None:
        self.dir = (root or cache_root()) / namespace

    def path(self, key: str) -> Path:
        return self.dir / f"{key}.json"

    def load(self, key: str) -> dict[str, Any] | None:
        """The entry, or None when absent or corrupt (a corrupt entry is deleted)."""
        path = self.path(key)
        try:
            record = json.loads(path.read_bytes())
            payload = record["payload"]
            if record["sha256"] != _digest(payload):
                raise ValueError("checksum mismatch")
            return {k: base64.b64decode(v[1]) if isinstance(v, list) and v[:1] == ["b64"] else v
                    for k, v in payload.items()}
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError, OSError):
            path.unlink(missing_ok=True)
            return None

    def store(self, key: str, entry: dict[str, Any]) -> None:
        payload = {k: ["b64", base64.b64encode(v).decode()] if isinstance(v, bytes) else v for k, v in entry.items()}
        atomic_write(self.path(key), json.dumps({"sha256": _digest(payload), "payload": payload}).encode())

    def get_or_build(self, key: str, build: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        found = self.load(key)
        if found is None:
            found = build()
            self.store(key, found)
        return found
