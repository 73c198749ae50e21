"""Options a user passes by name to a registry entry (a model class, a loss function), checked against
the entry's own signature: the keyword parameters with a default, and the type of that default."""
from __future__ import annotations

import inspect


def defaults(fn, skip=()) -> dict:
    """The parameters of `fn` that have a default, with it; `skip` names ones the caller sets itself."""
    return {p.name: p.default for p in inspect.signature(fn).parameters.values()
            if p.default is not p.empty and p.name not in skip}


def check(owner: str, known: dict, options: dict) -> dict:
    """`options` if every key is one of `known` and each value has its default's type (an int is a
    float; a default of None stands for an optional int); else a ValueError naming the option."""
    for key, value in options.items():
        if key not in known:
            raise ValueError(f"{owner} has no option {key!r} (its options: {', '.join(known) or 'none'})")
        kind = int if known[key] is None else type(known[key])
        fits = isinstance(value, (int, float)) if kind is float else isinstance(value, kind)
        if not fits or isinstance(value, bool) != (kind is bool):
            raise ValueError(f"{owner} option {key!r} takes a {kind.__name__}, got {value!r}")
    return options
