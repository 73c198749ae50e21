"""Neighbour and random-walk samplers, negative samplers, hard-negative mining."""
