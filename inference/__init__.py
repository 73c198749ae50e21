"""The stages that apply a trained model: infer, mine, evaluate, recommend, over layer-wise inference
and the reader of a train output."""
