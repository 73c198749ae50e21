"""Where a training step's time goes: seconds per phase, summed over steps and reported per step.

    phases = Phases()
    for batch in phases.timed("wait for batch", batches):
        with phases("forward"):
            loss = model(batch)
    metrics["phases"] = phases.per_step(steps)

The sampler runs in its own thread (samplers/prefetch.py) with its own Phases: its figures are time
that overlaps the trainer's, and "wait for batch" is what the trainer lost to it.
"""
from __future__ import annotations

import contextlib
import time
from collections import Counter

_END = object()


class Phases:
    def __init__(self):
        self.seconds = Counter()

    @contextlib.contextmanager
    def __call__(self, name: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - started

    def timed(self, name: str, iterable):
        """The items of `iterable`, the time spent waiting for each counted as `name`."""
        items = iter(iterable)
        while True:
            with self(name):
                item = next(items, _END)
            if item is _END:
                return
            yield item

    def per_step(self, steps: int, prefix: str = "") -> dict[str, float]:
        """Seconds per step of each phase since the last call, which starts a new count."""
        out = {prefix + name: round(s / max(steps, 1), 6) for name, s in self.seconds.items()}
        self.seconds.clear()
        return out
