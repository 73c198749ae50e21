"""Training: the stage's driver, the training recipe (the worker), batches, the row-wise sparse Adam,
the checkpoint format and warm start, phases, curves."""
