"""An on-disk cache of compiled artifacts, safe across processes and self-healing.

Each entry is one JSON file written to a temporary name and renamed into place, so a reader
sees a whole entry or none; every entry carries a checksum, and one that fails it is removed
and rebuilt.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: Longest file-name stem resgen writes; longer names keep their head and end in a hash.
MAX_STEM = 96


def configured_root() -> tuple[Path, str]:
    """The cache folder the environment asks for, and which setting asked for it."""
    if os.environ.get("RESGEN_CACHE_DIR"):
        return Path(os.environ["RESGEN_CACHE_DIR"]), "RESGEN_CACHE_DIR"
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "resgen", "XDG_CACHE_HOME"
    return Path.home() / ".cache" / "resgen", "the default ~/.cache/resgen"


@functools.cache
def _usable_root(root: Path, setting: str) -> Path:
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".probe-"):
            pass
        return root
    except OSError as exc:
        fallback = Path(tempfile.mkdtemp(prefix="resgen-cache-"))
        print(f"resgen: warning: cache folder {root} (from {setting}) is not a writable folder "
              f"({exc.strerror or exc}); using a private temporary cache {fallback} for this process",
              file=sys.stderr)
        return fallback


def cache_root() -> Path:
    """$RESGEN_CACHE_DIR, else $XDG_CACHE_HOME/resgen, else ~/.cache/resgen; when that is not a
    writable folder (read-only, or a file), a private temporary folder, with a one-line warning."""
    return _usable_root(*configured_root())


def file_stem(name: str) -> str:
    """`name` as a file-name stem of at most MAX_STEM characters (a long name keeps its head and
    ends in a hash of the whole, so distinct names stay distinct)."""
    if len(name) <= MAX_STEM:
        return name
    return f"{name[:MAX_STEM - 17]}-{hashlib.sha256(name.encode()).hexdigest()[:16]}"


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


def _seal_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def file_digest(path: Path) -> str:
    data = path.read_bytes()
    return f"{len(data)} {hashlib.sha256(data).hexdigest()}"


def install_verified(built: Path, target: Path) -> None:
    """Move the file `built` to `target` atomically, with a seal (size and checksum) beside it that
    `is_verified` checks before anything loads the file."""
    seal = file_digest(built)
    os.replace(built, target)
    atomic_write(_seal_path(target), seal.encode())


def is_verified(path: Path) -> bool:
    """True when `path` exists and matches its seal; a file without a seal, or truncated, or
    changed, is not to be loaded (build it again)."""
    try:
        return _seal_path(path).read_text() == file_digest(path)
    except OSError:
        return False


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
