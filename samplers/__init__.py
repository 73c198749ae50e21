"""Samplers: neighbour (GraphSAGE) and random-walk (PinSage) neighbourhoods, negatives; hard negatives are mined by inference/mine.py."""
