"""Philox4x32-10 and the dropout mask resgen derives from it (the CUDA templates use the same form).

Element (row, col) of dropout site k draws word `col % 4` of
philox(counter=(col // 4, row, offset_lo, offset_hi), key=(seed_lo, seed_hi + k mod 2**32)); it is
kept when `(word >> 8) * 2**-24 >= p`, which is exact in float32 on every backend.
"""

from __future__ import annotations

import numpy as np

M0, M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
W0, W1 = np.uint32(0x9E3779B9), np.uint32(0xBB67AE85)
_LO = np.uint64(0xFFFFFFFF)
_SHIFT = np.uint64(32)


def _mulhilo(m: np.uint64, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    product = x.astype(np.uint64) * m
    return (product >> _SHIFT).astype(np.uint32), (product & _LO).astype(np.uint32)


def philox4x32(counter: tuple[np.ndarray, ...], key: tuple[np.ndarray, ...], rounds: int = 10) -> list[np.ndarray]:
    """Philox4x32 of broadcastable uint32 arrays: four counter words, two key words."""
    c0, c1, c2, c3 = (np.asarray(c, dtype=np.uint32) for c in counter)
    k0, k1 = (np.asarray(k, dtype=np.uint32) for k in key)
    with np.errstate(over="ignore"):
        for r in range(rounds):
            if r:
                k0, k1 = k0 + W0, k1 + W1
            hi0, lo0 = _mulhilo(M0, c0)
            hi1, lo1 = _mulhilo(M1, c2)
            c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return [c0, c1, c2, c3]


def split64(value: int, what: str) -> tuple[np.uint32, np.uint32]:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**64:
        raise ValueError(f"{what} must be an int in [0, 2**64), got {value!r}")
    return np.uint32(value & 0xFFFFFFFF), np.uint32(value >> 32)


def keep_mask(rows: int, hidden: int, p: float, seed: int, offset: int, site: int = 0) -> np.ndarray:
    """Boolean [rows, hidden]: True where dropout site `site` keeps the element."""
    cols = np.arange(hidden, dtype=np.uint32)
    row_ids = np.arange(rows, dtype=np.uint32)[:, None]
    seed_lo, seed_hi = split64(seed, "seed")
    key = (seed_lo, np.uint32((int(seed_hi) + site) & 0xFFFFFFFF))
    words = philox4x32((cols[None, :] >> 2, row_ids, *split64(offset, "offset")), key)
    lane = (cols & 3)[None, :]
    word = np.choose(np.broadcast_to(lane, (rows, hidden)), [np.broadcast_to(w, (rows, hidden)) for w in words])
    uniform = (word >> 8).astype(np.float32) * np.float32(2.0**-24)
    return uniform >= np.float32(p)
