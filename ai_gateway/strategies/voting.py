"""Vote counting for the consensus strategy, over answers normalised by :mod:`ai_gateway.answers`.

Ordering rule (documented in docs/strategies.md): groups are ranked by votes,
most first; equal votes are ranked by the request position of the group's
first model. A group's displayed answer is the raw text of its first model in
request order. Consensus is reached only when the leading group holds a strict
majority of the successful answers, so a tie at the top is never a consensus.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ai_gateway.answers import normalise


@dataclass(slots=True)
class Group:
    normalized: str
    members: list[int] = field(default_factory=list)  # request positions, ascending

    @property
    def votes(self) -> int:
        return len(self.members)


@dataclass(slots=True)
class Tally:
    """Votes counted so far, by normalised answer."""

    requested: int
    groups: dict[str | int, Group] = field(default_factory=dict)  # by normalised answer (an empty one: by position)
    answered: int = 0
    decided_early: bool = False

    def add(self, position: int, text: str) -> Group:
        key = normalise(text)
        # An answer with nothing left once normalised ("...", "The answer is:", one cut off at a tiny max_tokens)
        # holds nothing to agree on: it counts as answered but joins no other answer, so two are never a consensus.
        slot: str | int = key if key else position
        group = self.groups.setdefault(slot, Group(key))
        group.members.append(position)
        group.members.sort()
        self.answered += 1
        return group

    def has_majority_of_requested(self) -> bool:
        """True once no answer still outstanding could change the outcome."""
        return any(2 * g.votes > self.requested for g in self.groups.values())

    def ranked(self) -> list[Group]:
        return sorted(self.groups.values(), key=lambda g: (-g.votes, g.members[0]))

    def leader(self) -> Group | None:
        ranked = self.ranked()
        return ranked[0] if ranked else None

    def reached(self) -> bool:
        # An answer with nothing in it agrees with no other, so it cannot be one either: "..." from the only model
        # that answered is no consensus.
        leader = self.leader()
        return leader is not None and bool(leader.normalized) and 2 * leader.votes > self.answered
