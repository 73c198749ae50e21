"""The training graph of a dataset as compressed sparse rows on disk (.npy, memory-mappable).

Node ids are the dataset's: users 0..U-1, items 0..I-1 (two id spaces). Edge ids are row numbers:
training interaction e is row e of edges/train.parquet (sorted by user, then item), social edge s is
row s of edges/social.parquet (sorted by src, then dst). Arrays (int32 ids while they fit, else int64):

    user_ptr [U+1], user_items [E]     items of each user; position in user_items == edge id
    item_ptr [I+1], item_users [E], item_eids [E]    users of each item (stable counting sort)
    follow_out_ptr [U+1], follow_out [S]             followees of each user; position == social edge id
    follow_in_ptr [U+1], follow_in [S], follow_in_eids [S]  followers of each user
    edge_<name> [E]                                  count / weight / timestamp of each training edge
    user_val_count [U], user_test_count [U]          held-out edges of each user (for balance)

Built by streaming Parquet record batches into preallocated arrays, so the peak is the arrays
themselves plus one batch. `load_csr(dir, mmap=True)` maps them instead of reading them.
"""
from __future__ import annotations

import ctypes
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gnnrec import UserError
from gnnrec.arrays import indptr, ranges

BATCH = 1 << 20


def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to tune
        return None


def return_freed_memory() -> None:
    """Let freed arrays go back to the OS, so RSS tracks live data: glibc otherwise serves arrays below
    its dynamic mmap threshold (which grows to 32 MB) from heaps it keeps, and pyarrow's mimalloc pool
    keeps its segments. Process-wide, harmless for other stages."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(-3, 1 << 16)  # M_MMAP_THRESHOLD: 64 KiB, no longer adjusted upward
        libc.mallopt(-1, 1 << 16)  # M_TRIM_THRESHOLD: give back a free heap top over 64 KiB
    pa.set_memory_pool(pa.system_memory_pool())


def trim() -> None:
    """Hand free heap memory of every malloc arena back to the OS (between phases)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def id_dtype(n: int):
    return np.int32 if n < 2**31 - 1 else np.int64


def _counting_sort(keys_path: Path, payload, num_keys: int, n: int, out_dir: Path, names: tuple[str, str, str]):
    """Group edges by key (stable): writes <names[0]> ptr, <names[1]> payload, <names[2]> edge ids.

    `payload(start, stop)` gives the other endpoint of edges start..stop; keys are read from keys_path.
    """
    keys = np.load(keys_path, mmap_mode="r")
    counts = np.zeros(num_keys, np.int64)
    for a in range(0, n, BATCH):
        counts += np.bincount(keys[a:a + BATCH], minlength=num_keys)
    ptr = indptr(counts)
    del counts
    dtype = id_dtype(max(n, 1))
    others = np.lib.format.open_memmap(out_dir / f"{names[1]}.npy", "w+", payload(0, 0).dtype, (n,))
    eids = np.lib.format.open_memmap(out_dir / f"{names[2]}.npy", "w+", dtype, (n,))
    cursor = ptr[:-1].copy()
    for a in range(0, n, BATCH):
        k = np.asarray(keys[a:a + BATCH])
        order = np.argsort(k, kind="stable")
        k = k[order]
        first = np.r_[True, k[1:] != k[:-1]]
        starts = np.flatnonzero(first)
        rank = np.arange(len(k)) - np.repeat(starts, np.diff(np.r_[starts, len(k)]))
        pos = cursor[k] + rank
        others[pos] = payload(a, a + len(k))[order]
        eids[pos] = (order + a).astype(dtype)
        np.add.at(cursor, k[starts], np.diff(np.r_[starts, len(k)]))
    others.flush()
    eids.flush()
    del others, eids
    np.save(out_dir / f"{names[0]}.npy", ptr)


def build_csr(dataset: Path, meta: dict, out_dir: Path) -> None:
    """Write the CSR arrays of `dataset`'s training graph (and social graph) into out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    nu, ni = meta["num_users"], meta["num_items"]
    train = pq.ParquetFile(dataset / "edges" / "train.parquet")
    n = train.metadata.num_rows
    columns = [c for c in meta["edge_columns"] if c in train.schema_arrow.names]
    user_items = np.lib.format.open_memmap(out_dir / "user_items.npy", "w+", id_dtype(ni), (n,))
    data = {c: None for c in columns}
    user_counts = np.zeros(nu, np.int64)
    pos, last_user, last_item = 0, -1, -1
    for batch in train.iter_batches(batch_size=BATCH, columns=["user", "item", *columns]):
        user = batch.column("user").to_numpy()
        item = batch.column("item").to_numpy()
        k = len(user)
        # sorted by (user, item) with no repeats: what METIS needs and what edge ids rely on
        key_prev = np.r_[last_user, user[:-1]], np.r_[last_item, item[:-1]]
        if k and not np.all((user > key_prev[0]) | ((user == key_prev[0]) & (item > key_prev[1]))):
            raise UserError(f"{dataset}: edges/train.parquet is not sorted by (user, item) without duplicates; "
                            "ingest it again")
        last_user, last_item = (user[-1], item[-1]) if k else (last_user, last_item)
        user_counts += np.bincount(user, minlength=nu)
        user_items[pos:pos + k] = item
        for c in columns:
            values = batch.column(c).to_numpy()
            if data[c] is None:
                data[c] = np.lib.format.open_memmap(out_dir / f"edge_{c}.npy", "w+", values.dtype, (n,))
            data[c][pos:pos + k] = values
        pos += k
    user_items.flush()
    for column in data.values():
        if column is not None:
            column.flush()
    del user_items, data, column
    np.save(out_dir / "user_ptr.npy", indptr(user_counts))
    user_of_edge = lambda a, b: _rows_of(np.load(out_dir / "user_ptr.npy", mmap_mode="r"), a, b, id_dtype(nu))
    _counting_sort(out_dir / "user_items.npy", user_of_edge, ni, n, out_dir, ("item_ptr", "item_users", "item_eids"))

    for split in ("val", "test"):
        counts = np.zeros(nu, np.int32)
        for batch in pq.ParquetFile(dataset / "edges" / f"{split}.parquet").iter_batches(BATCH, columns=["user"]):
            counts += np.bincount(batch.column(0).to_numpy(), minlength=nu).astype(np.int32)
        np.save(out_dir / f"user_{split}_count.npy", counts)

    s = meta.get("social_edges", 0)
    if s:
        social = pq.read_table(dataset / "edges" / "social.parquet", columns=["src", "dst"])
        src = social.column("src").to_numpy().astype(id_dtype(nu))
        dst = social.column("dst").to_numpy().astype(id_dtype(nu))
        del social
        if s > 1 and not np.all((src[1:] > src[:-1]) | ((src[1:] == src[:-1]) & (dst[1:] > dst[:-1]))):
            raise UserError(f"{dataset}: edges/social.parquet is not sorted by (src, dst) without duplicates; "
                            "ingest it again")
        np.save(out_dir / "follow_out_ptr.npy", indptr(np.bincount(src, minlength=nu)))
        np.save(out_dir / "follow_out.npy", dst)
        np.save(out_dir / "_social_dst.npy", dst)
        _counting_sort(out_dir / "_social_dst.npy", lambda a, b: src[a:b], nu, s, out_dir,
                       ("follow_in_ptr", "follow_in", "follow_in_eids"))
        (out_dir / "_social_dst.npy").unlink()


def _rows_of(ptr: np.ndarray, start: int, stop: int, dtype) -> np.ndarray:
    """Row (CSR source) of each position start..stop."""
    return (np.searchsorted(ptr, np.arange(start, stop), side="right") - 1).astype(dtype)


def load_csr(directory: Path, meta: dict, mmap: bool = True) -> SimpleNamespace:
    """The arrays written by build_csr (memory-mapped when `mmap`), plus num_users/num_items/num_edges."""
    mode = "r" if mmap else None
    g = SimpleNamespace(num_users=meta["num_users"], num_items=meta["num_items"], directory=Path(directory))
    for path in sorted(Path(directory).glob("*.npy")):
        if not path.name.startswith("edge_"):
            setattr(g, path.stem, np.load(path, mmap_mode=mode))
    g.edge_columns = sorted(p.stem[5:] for p in Path(directory).glob("edge_*.npy"))
    g.num_edges = len(g.user_items)
    if not hasattr(g, "follow_out"):
        empty_ptr = np.zeros(g.num_users + 1, np.int64)
        g.follow_out_ptr = g.follow_in_ptr = empty_ptr
        g.follow_out = g.follow_in = g.follow_in_eids = np.zeros(0, id_dtype(g.num_users))
    g.num_social = len(g.follow_out)
    return g


def user_degree(g) -> np.ndarray:
    return np.diff(g.user_ptr)


def item_degree(g) -> np.ndarray:
    return np.diff(g.item_ptr)


def gather_rows(ptr: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Positions of all entries of CSR rows `rows` (in the order of `rows`), as int64."""
    rows = np.asarray(rows, np.int64)
    starts = np.asarray(ptr[rows], np.int64)
    return ranges(starts, np.asarray(ptr[rows + 1], np.int64) - starts)


def row_ids(ptr: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """For gather_rows(ptr, rows): the row each position belongs to."""
    rows = np.asarray(rows, np.int64)
    return np.repeat(rows, np.asarray(ptr[rows + 1]) - np.asarray(ptr[rows]))


def read_sorted(path: Path, index: np.ndarray, chunk: int = BATCH) -> np.ndarray:
    """values[index] of a .npy file for an ascending `index`, read sequentially in chunks (no mapping
    stays resident, so peak memory is the result plus one chunk)."""
    arr = np.load(path, mmap_mode="r")
    out = np.empty(len(index), arr.dtype)
    dtype, offset = arr.dtype, arr.offset
    del arr
    with open(path, "rb") as f:
        lo = 0
        while lo < len(index):
            a = int(index[lo])
            hi = int(np.searchsorted(index, a + chunk, side="left"))
            f.seek(offset + a * dtype.itemsize)
            block = np.fromfile(f, dtype, count=int(index[hi - 1]) - a + 1)
            out[lo:hi] = block[index[lo:hi] - a]
            lo = hi
    return out
