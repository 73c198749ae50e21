"""Input data: Parquet ingest, the synthetic generator, and the readers of the dataset and partition directories."""
import os

# pyarrow's default mimalloc pool keeps freed segments, so a stage's RSS stays at its Parquet high-water
# mark; the system allocator gives them back (partition.csr.return_freed_memory does the same for numpy).
# Only takes effect if pyarrow is not imported yet.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
