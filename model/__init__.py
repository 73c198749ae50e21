"""The pure-PyTorch layer: blocks, layers, models, losses. Imports neither DGL nor Ray."""
