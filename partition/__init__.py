"""Parquet ingest, the synthetic generator, partition algorithms and the DGL adapter."""
