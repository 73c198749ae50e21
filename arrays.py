"""Vectorised numpy helpers shared by every layer: a 64-bit hash, range expansion, CSR grouping."""
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
