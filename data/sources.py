"""Reading and validating Parquet inputs: files of a path, edge sources in record batches, raw-ID maps, features.

Every check names the file and the column (or config key) at fault and raises UserError: one line, exit 2.
"""
from __future__ import annotations

import fnmatch
import glob
import os
from collections import Counter
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq


from gnnrec import UserError

# ---------------------------------------------------------------- reading and validating Parquet inputs

def list_files(path: str) -> tuple[pafs.FileSystem, list[str]]:
    """The Parquet files behind a file, a directory (recursive), a glob, or a filesystem URI; below a
    directory or a glob's fixed part, what Spark, Hive and Hadoop do not count as data is skipped
    (names starting with _ or .: _SUCCESS, _temporary/ attempt files, .crc)."""
    try:
        if "://" in path:
            fs, root = pafs.FileSystem.from_uri(path)
        else:
            fs, root = pafs.LocalFileSystem(), str(Path(path).absolute())
        if any(ch in root for ch in "*?["):
            parent = root[:min(root.find(ch) for ch in "*?[" if ch in root)].rsplit("/", 1)[0]
            if isinstance(fs, pafs.LocalFileSystem):
                files = [f for f in glob.glob(root, recursive=True) if os.path.isfile(f)]
            else:
                infos = fs.get_file_info(pafs.FileSelector(parent, recursive=True))
                files = [i.path for i in infos if i.type == pafs.FileType.File and fnmatch.fnmatch(i.path, root)]
        else:
            info = fs.get_file_info(root)
            if info.type == pafs.FileType.NotFound:
                raise UserError(f"{path}: no such file or directory")
            if info.type == pafs.FileType.File:
                return fs, [root]
            parent = root
            files = [i.path for i in fs.get_file_info(pafs.FileSelector(root, recursive=True))
                     if i.type == pafs.FileType.File]
    except (OSError, pa.ArrowInvalid) as e:
        raise UserError(f"{path}: cannot be listed ({e})") from None
    files = sorted(f for f in files if not any(part.startswith(("_", "."))
                                               for part in PurePosixPath(f).relative_to(parent).parts))
    if not files:
        raise UserError(f"{path}: no input files found")
    return fs, files


def _open(fs, file: str) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(fs.open_input_file(file), pre_buffer=False)
    except (OSError, pa.ArrowException) as e:
        raise UserError(f"{file}: not a readable Parquet file ({e})") from None


def _kind(t: pa.DataType) -> str | None:
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "str"
    if pa.types.is_floating(t):
        return "float"
    if pa.types.is_timestamp(t):
        return "time"
    if pa.types.is_dictionary(t):
        return _kind(t.value_type)
    return None


# What each column role accepts, and how it is normalized.
ROLE_KINDS = {"src": ("int", "str"), "dst": ("int", "str"), "weight": ("int", "float"), "timestamp": ("int", "time")}


def _normalize(role: str, arr: pa.Array) -> pa.Array:
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    kind = _kind(arr.type)
    if kind == "str":
        return arr.cast(pa.large_string())
    if role == "weight":
        return arr.cast(pa.float64())
    if kind == "time":  # seconds: finer units (Spark's ms, pandas' ns) floored to the second
        return pc.floor_temporal(arr, unit="second").cast(pa.timestamp("s")).cast(pa.int64())
    return arr.cast(pa.int64())


class EdgeSource:
    """One edge input (interactions, social, test): its files, columns and validation.

    `columns` maps a role (src, dst, weight, timestamp) to (column name, config key naming it);
    `min_weight`, (weight, config key naming it), drops the rows weighing less, as rows with nulls are.
    """

    def __init__(self, name: str, path: str, columns: dict[str, tuple[str, str]], nulls: str, stats: Counter,
                 min_weight: tuple[float, str] | None = None):
        self.name, self.path, self.columns, self.nulls, self.stats = name, path, columns, nulls, stats
        self.min_weight = min_weight
        self.fs, self.files = list_files(path)
        self.num_rows = 0  # rows kept, known after the first pass
        self.kinds: dict[str, str] = {}

    def check_schema(self, file: str, pf: pq.ParquetFile) -> None:
        schema = pf.schema_arrow
        for role, (col, key) in self.columns.items():
            if col not in schema.names:
                raise UserError(f"{file}: missing column '{col}' ({key})")
            kind = _kind(schema.field(col).type)
            if kind not in ROLE_KINDS[role]:
                raise UserError(f"{file}: column '{col}' has type {schema.field(col).type}; "
                                f"{role} must be {' or '.join(ROLE_KINDS[role])}")
            if role in ("src", "dst"):
                if self.kinds.setdefault(role, kind) != kind:
                    raise UserError(f"{file}: column '{col}' holds {kind} IDs but earlier files hold "
                                    f"{self.kinds[role]} IDs")

    def batches(self, batch_rows: int, first_pass: bool = False):
        """Yield dicts role -> normalized pyarrow array, rows with nulls dropped (or rejected)."""
        nonnull = Counter()
        seen = 0
        for file in self.files:
            pf = _open(self.fs, file)
            self.check_schema(file, pf)
            names = [col for col, _ in self.columns.values()]
            try:
                for batch in pf.iter_batches(batch_size=batch_rows, columns=names):
                    yield self._clean(file, batch, nonnull, first_pass)
                    seen += batch.num_rows
                    del batch
                    pa.default_memory_pool().release_unused()
            except (OSError, pa.ArrowException) as e:
                raise UserError(f"{file}: corrupt Parquet data ({e})") from None
        if first_pass:
            for role, (col, key) in self.columns.items():
                if seen and nonnull[role] == 0:
                    raise UserError(f"{self.path}: column '{col}' ({key}) is entirely null")
            if self.num_rows == 0:
                if self.stats[f"{self.name}_below_min_weight_dropped"]:
                    raise UserError(f"{self.path}: no row weighs {self.min_weight[0]} or more ({self.min_weight[1]})")
                raise UserError(f"{self.path}: no rows (empty input)")

    def _clean(self, file, batch: pa.RecordBatch, nonnull: Counter, first_pass: bool) -> dict[str, pa.Array]:
        arrays = {role: batch.column(col) for role, (col, _) in self.columns.items()}
        valid = None
        for role, arr in arrays.items():
            if arr.null_count:
                col, key = self.columns[role]
                if self.nulls == "reject":
                    raise UserError(f"{file}: column '{col}' has null values (ingest.nulls=reject)")
                ok = pc.is_valid(arr)
                valid = ok if valid is None else pc.and_(valid, ok)
            nonnull[role] += len(arr) - arr.null_count
        if valid is not None:
            dropped = len(batch) - pc.sum(valid).as_py() if len(batch) else 0
            if first_pass:
                self.stats[f"{self.name}_rows_with_nulls_dropped"] += dropped
            arrays = {role: arr.filter(valid) for role, arr in arrays.items()}
        arrays = {role: _normalize(role, arr) for role, arr in arrays.items()}
        if "weight" in arrays and len(arrays["weight"]):
            w = arrays["weight"].to_numpy()
            if not np.isfinite(w).all() or (w < 0).any():
                raise UserError(f"{file}: column '{self.columns['weight'][0]}' has negative, NaN or infinite weights")
            if self.min_weight:
                heavy = w >= self.min_weight[0]
                if first_pass:
                    self.stats[f"{self.name}_below_min_weight_dropped"] += len(w) - int(heavy.sum())
                if not heavy.all():
                    arrays = {role: arr.filter(pa.array(heavy)) for role, arr in arrays.items()}
        if first_pass:
            self.num_rows += len(arrays["src"])
            self.stats[f"{self.name}_rows_read"] += len(batch)
        return arrays


# ---------------------------------------------------------------- raw IDs <-> contiguous ids

class IdCollector:
    """Distinct raw IDs of one node type, gathered batch by batch with bounded memory."""

    def __init__(self, node_type: str):
        self.node_type, self.parts, self.kind = node_type, [], None

    def add(self, arr: pa.Array, where: str) -> None:
        kind = "str" if pa.types.is_large_string(arr.type) else "int"
        if self.kind not in (None, kind):
            raise UserError(f"{where}: {self.node_type} IDs are {kind} here but {self.kind} elsewhere")
        self.kind = kind
        self.parts.append(pc.unique(arr))
        if len(self.parts) > 16:
            self.parts = [pc.unique(pa.concat_arrays(self.parts))]

    def finish(self) -> "IdMap":
        merged = pc.unique(pa.concat_arrays(self.parts)) if self.parts else pa.array([], pa.int64())
        return IdMap(merged.take(pc.sort_indices(merged)))


class IdMap:
    """Distinct raw IDs; the new id of a raw ID is its position (sorted, or `extended`: a base dataset's
    IDs keep their ids and the new ones follow, sorted)."""

    def __init__(self, raw: pa.Array):
        self.raw = raw
        self.size = len(raw)
        self.is_int = not pa.types.is_large_string(raw.type)
        if self.is_int:
            self._np = raw.to_numpy()
            self._lo = int(self._np.min()) if self.size else 0
            span = int(self._np.max()) - self._lo + 1 if self.size else 0
            self._table = None  # raw - lo -> id, when the raw range is not much larger than the id count
            if span <= max(4 * self.size, 1 << 20):
                self._table = np.full(span, -1, np.int64)
                self._table[self._np - self._lo] = np.arange(self.size)
            else:
                self._order = np.argsort(self._np, kind="stable")
                self._sorted = self._np[self._order]
        else:
            self._index = pd.Index(raw.to_numpy(zero_copy_only=False), dtype=object)

    def extended(self, base: pa.Array, where: str) -> "IdMap":
        """The map whose first ids are `base`'s raw IDs (a previous dataset's, in its order), then this
        map's other IDs in order: old IDs keep their ids. UserError naming `where` if the types differ."""
        if pa.types.is_large_string(base.type) != (not self.is_int):
            raise UserError(f"{where}: its IDs are {base.type}, this input's {self.raw.type}")
        base = base.cast(self.raw.type)
        new = self.raw.filter(pc.invert(pc.is_in(self.raw, value_set=base)))
        return IdMap(pa.concat_arrays([base, new]))

    def lookup(self, arr: pa.Array) -> np.ndarray:
        """New ids of raw IDs; -1 where the raw ID is unknown."""
        if not self.is_int:
            return self._index.get_indexer(arr.to_numpy(zero_copy_only=False)).astype(np.int64)
        values = arr.to_numpy()
        if self._table is not None:
            offset = values - self._lo
            inside = (offset >= 0) & (offset < len(self._table))
            return np.where(inside, self._table[np.where(inside, offset, 0)], -1)
        at = np.minimum(np.searchsorted(self._sorted, values), self.size - 1)  # size >= 1 without a table
        return np.where(self._sorted[at] == values, self._order[at], -1)

    def table(self) -> pa.Table:
        return pa.table({"id": np.arange(self.size, dtype=np.int64), "raw_id": self.raw})

    def subset(self, keep: np.ndarray) -> tuple["IdMap", np.ndarray]:
        """The map of the raw IDs where `keep` holds, renumbered in order, and old id -> new id (-1: left out)."""
        new_id = np.full(self.size, -1, np.int64)
        new_id[keep] = np.arange(int(np.count_nonzero(keep)))
        return IdMap(self.raw.filter(pa.array(keep))), new_id


# ---------------------------------------------------------------- features

def read_features(path: str, spec, id_map: IdMap, node_type: str, batch_rows: int, stats: Counter) -> np.ndarray:
    """A float32 [num_nodes, dim] matrix from a feature table keyed by raw id; missing nodes are zeros."""
    fs, files = list_files(path)
    key = f"ingest.{node_type}_features"
    feats, seen = None, np.zeros(id_map.size, bool)
    for file in files:
        pf = _open(fs, file)
        schema = pf.schema_arrow
        columns = spec.columns or [c for c in schema.names if c != spec.id_column]
        for col in [spec.id_column, *columns]:
            if col not in schema.names:
                raise UserError(f"{file}: missing column '{col}' ({key})")
        id_type, id_kind = schema.field(spec.id_column).type, "int" if id_map.is_int else "str"
        if _kind(id_type) != id_kind:  # else a float id is truncated and a str id meets an int map
            raise UserError(f"{file}: column '{spec.id_column}' has type {id_type}; {node_type} IDs are "
                            f"{id_kind} ({key}.id_column)")
        for col in columns:
            if _kind(schema.field(col).type) not in ("int", "float"):
                raise UserError(f"{file}: feature column '{col}' has type {schema.field(col).type}; "
                                "features must be numeric")
        if feats is None:
            feats = np.zeros((id_map.size, len(columns)), np.float32)
        elif feats.shape[1] != len(columns):
            raise UserError(f"{file}: {len(columns)} feature columns, earlier files have {feats.shape[1]}")
        for batch in pf.iter_batches(batch_size=batch_rows, columns=[spec.id_column, *columns]):
            raw = _normalize("src", batch.column(0))
            if raw.null_count or any(batch.column(c).null_count for c in range(1, batch.num_columns)):
                raise UserError(f"{file}: null values in feature table ({key})")
            ids = id_map.lookup(raw)
            known = ids >= 0
            stats[f"{node_type}_feature_rows_unknown_id"] += int((~known).sum())
            ids = ids[known]
            if seen[ids].any() or len(np.unique(ids)) != len(ids):
                raise UserError(f"{file}: duplicate id in column '{spec.id_column}' ({key})")
            seen[ids] = True
            values = np.column_stack([batch.column(c).to_numpy(zero_copy_only=False)
                                      for c in range(1, batch.num_columns)]).astype(np.float32)
            if not np.isfinite(values).all():
                raise UserError(f"{file}: NaN or infinite feature values ({key})")
            feats[ids] = values[known]
    stats[f"{node_type}s_without_features"] = int((~seen).sum())
    return feats
