"""The model stages: the training loop, checkpoints, layer-wise inference, infer, mine, evaluate, recommend."""
