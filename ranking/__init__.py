"""Ranking: chunked masked top-K and full-ranking metrics (pure PyTorch)."""
