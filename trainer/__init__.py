"""Models, layers, losses, the training loop, checkpoints, evaluation and inference."""
