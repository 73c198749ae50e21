"""Fail points: named places in the workers where a fault is made to happen on purpose, to show how
the job behaves when it does (the pattern of fail-rs and FreeBSD's fail(9)). Off unless the driver's
environment names them, e.g.

    GNNREC_FAIL_POINTS="train.step=hang@3"    # the 3rd training step's thread blocks for ever
    GNNREC_FAIL_POINTS="train.step=raise"     # the first one raises FailPointError

`hang` blocks the calling thread while the process and its other threads (the heartbeat) go on, as a
deadlock would; `raise` is an error in the code, which a restart would repeat. `@N`: the N-th pass in
each worker process (default 1). The job runtime hands the driver's setting to its workers (`arm`).
"""
from __future__ import annotations

import os
import threading

from gnnrec import UserError

ENV = "GNNREC_FAIL_POINTS"
ACTIONS = ("hang", "raise")
_armed: dict[str, tuple[str, int]] = {}
_passes: dict[str, int] = {}


class FailPointError(RuntimeError):
    pass


def parse(spec: str | None) -> dict[str, tuple[str, int]]:
    """{point: (action, on which pass)} of a GNNREC_FAIL_POINTS value."""
    points = {}
    for item in filter(None, (s.strip() for s in (spec or "").split(","))):
        point, _, action = item.partition("=")
        action, _, nth = action.partition("@")
        if not point or action not in ACTIONS or not (nth or "1").isdigit() or int(nth or 1) < 1:
            raise UserError(f"{ENV}={spec}: {item!r} is not point=action[@N] with action one of {', '.join(ACTIONS)}")
        points[point] = (action, int(nth or 1))
    return points


def arm(spec: str | None) -> None:
    """Arm this process's fail points from a GNNREC_FAIL_POINTS value (None: none)."""
    _armed.clear()
    _armed.update(parse(spec))
    _passes.clear()


def fail_point(point: str) -> None:
    if point not in _armed:
        return
    _passes[point] = _passes.get(point, 0) + 1
    action, nth = _armed[point]
    if _passes[point] != nth:
        return
    if action == "raise":
        raise FailPointError(f"fail point {point} ({ENV})")
    threading.Event().wait()


def from_environment() -> str | None:
    spec = os.environ.get(ENV)
    parse(spec)  # a mistyped value is refused in the driver, before any worker starts
    return spec
