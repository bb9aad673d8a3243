"""Deficit round-robin between users on input tokens (Shreedhar and Varghese, 1995): each user in
the ring gets `quantum` tokens of credit per visit and is served while its next item fits its
credit, so users with long prompts and users with short ones get about equal tokens over time.
Pure: the store feeds it each user's next item cost and serves whom it names."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping


class DeficitRoundRobin:
    def __init__(self, quantum: int) -> None:
        if quantum <= 0:
            raise ValueError("quantum must be positive")
        self.quantum = quantum
        self.ring: deque[str] = deque()
        self.deficit: dict[str, int] = {}
        self._granted = False  # whether the user at the front got its quantum for this visit

    def pick(self, heads: Mapping[str, int]) -> str | None:
        """The user to serve next, charged for it. `heads` maps each user that has work to the
        cost of its next item; users missing from it leave the ring and lose their credit."""
        if not heads:
            self.ring.clear()
            self.deficit.clear()
            self._granted = False
            return None
        for user in heads:
            if user not in self.deficit:
                self.deficit[user] = 0
                self.ring.append(user)
        # Bounded: every full turn of the ring adds a quantum to each user, so within
        # ceil(max cost / quantum) + 1 turns somebody fits.
        max_cost = max(heads.values())
        for _ in range(len(self.ring) * (max_cost // self.quantum + 2) + 1):
            user = self.ring[0]
            cost = heads.get(user)
            if cost is None:  # no work left: out of the ring, credit forfeited
                self.ring.popleft()
                del self.deficit[user]
                self._granted = False
                continue
            if not self._granted:
                self.deficit[user] += self.quantum
                self._granted = True
            if self.deficit[user] >= cost:
                self.deficit[user] -= cost
                return user
            self.ring.rotate(-1)
            self._granted = False
        raise AssertionError("deficit round-robin failed to pick")  # unreachable by the bound above
