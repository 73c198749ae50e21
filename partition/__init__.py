"""Partition algorithms (METIS, random, random-walk), the on-disk CSR they read and the DGL partition writer."""
import gnnrec.data  # noqa: F401  (sets pyarrow's allocator before pyarrow is imported)
