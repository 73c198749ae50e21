"""The `gnnrec` CLI, the config, the Ray cluster and the stage runner."""
