"""The graph's relations (DGL's edge types), in one table that every module naming one reads.

    interacted_by  item -> user   the interactions reversed: a user hears the items it interacted with
    interacts      user -> item   the interactions: an item hears its users
    follows        user -> user   social ties (follower -> followee)
    followed_by    user -> user   the same reversed (partitions only)
"""
from __future__ import annotations

from typing import NamedTuple


class Relation(NamedTuple):
    src: str  # node type
    dst: str
    reverse: str  # the relation of the same edges the other way
    timed: bool  # its edges carry the interactions' timestamps

    @property
    def ends(self) -> tuple[str, str]:
        return self.src, self.dst


RELATIONS = {  # in the order samplers visit them
    "interacted_by": Relation("item", "user", "interacts", True),
    "interacts": Relation("user", "item", "interacted_by", True),
    "follows": Relation("user", "user", "followed_by", False),
    "followed_by": Relation("user", "user", "follows", False),
}
WALK_STEPS = {"user->item": "interacts", "item->user": "interacted_by"}  # a random walk's step: the relation it takes


def canonical(relation: str) -> tuple[str, str, str]:
    """DGL's canonical edge type of a relation: (src type, name, dst type)."""
    return RELATIONS[relation].src, relation, RELATIONS[relation].dst
