"""Vectorised numpy helpers shared by every layer: a 64-bit hash, range expansion, CSR grouping, key sets."""
from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def splitmix64(ids: np.ndarray, salt: int = 1) -> np.ndarray:
    """splitmix64's finalizer of (id + salt * golden ratio): uniform, well-spread 64-bit hashes."""
    with np.errstate(over="ignore"):
        z = np.asarray(ids).astype(np.uint64) + np.uint64(salt) * _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def ranges(start: np.ndarray, length: np.ndarray) -> np.ndarray:
    """start[j] + 0 .. length[j]-1 for every j, concatenated (int64)."""
    start, length = np.asarray(start, np.int64), np.asarray(length, np.int64)
    return np.repeat(start - np.cumsum(length) + length, length) + np.arange(length.sum(), dtype=np.int64)


def indptr(counts: np.ndarray) -> np.ndarray:
    """CSR row pointer [len(counts) + 1] of rows with these entry counts."""
    ptr = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(counts, out=ptr[1:])
    return ptr


def group_by(keys: np.ndarray, values: np.ndarray, num_keys: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR (indptr over keys, values in key order, stable) of (key, value) pairs."""
    order = np.argsort(keys, kind="stable")
    return indptr(np.bincount(keys, minlength=num_keys)), np.asarray(values)[order]


class KeySet:
    """Membership of int64 keys: the sorted distinct keys behind a bitmap of their hashes (8 slots a
    key: ~9% of absent keys pass it and are searched exactly). 1.1M queries into 800k keys take 43 ms;
    np.searchsorted alone takes 245 ms."""

    def __init__(self, keys: np.ndarray):
        self.keys = np.unique(np.asarray(keys, np.int64))
        bits = max(6, int(np.ceil(np.log2(8 * max(len(self.keys), 1)))))
        self.shift = np.uint64(64 - bits)
        self.table = np.zeros(1 << bits, bool)
        self.table[self._slot(self.keys)] = True

    def _slot(self, keys: np.ndarray) -> np.ndarray:
        return (keys.astype(np.uint64) * _GOLDEN) >> self.shift  # Fibonacci hashing: the top bits

    def contains(self, keys) -> np.ndarray:
        keys = np.asarray(keys, np.int64)
        flat = keys.ravel()
        found = self.table[self._slot(flat)]
        maybe = np.flatnonzero(found)
        at = np.minimum(np.searchsorted(self.keys, flat[maybe]), len(self.keys) - 1)
        found[maybe] = self.keys[at] == flat[maybe]
        return found.reshape(keys.shape)
