"""A toy reward that proves a controller learns, in microseconds instead of GPU-hours.

A hidden target genotype of the space (sampled with a seed, or given) and a reward in [0, 1]:
the fraction of the target's *free* decisions (those that had more than one valid option on the
target's own walk) that the proposal matches. The input picks of one node are compared as a
set, so a node reading ``(P4, n1)`` matches one reading ``(n1, P4)``. Only the target gets 1.0
(and genotypes that differ from it in spelling alone, e.g. the inputs of a node swapped);
a genotype outside the space gets 0.0.
"""
from __future__ import annotations

import random
from typing import Sequence

from ..genotype import Genotype, GenotypeError
from ..space import SearchSpace, SpaceError


class ToyReward:
    """``reward = ToyReward(space, seed=0); reward(genotype_or_decisions) -> float in [0, 1]``.

    Args:
        space: the search space.
        target: the hidden genotype (or its decisions); by default sampled with ``seed``.
        seed: seeds the target when none is given.

    Raises:
        ValueError: the given target is not in the space.
    """

    def __init__(self, space: SearchSpace, target: Genotype | Sequence[int] | None = None, *, seed: int = 0):
        self.space = space
        if target is None:
            decisions = space.sample(random.Random(seed))
        elif isinstance(target, Genotype):
            try:
                decisions = space.encode(target)
            except (SpaceError, GenotypeError) as err:
                raise ValueError(f"toy target is not in space {space.name!r}: {err}") from None
        else:
            decisions = list(target)
        self.target = space.decode(decisions)
        self.target_decisions = list(decisions)
        # Free positions on the target's walk; the input picks of one node slot form a group.
        walk, groups, single = space.walk(), {}, []
        for t, (d, choice) in enumerate(zip(space.decisions, decisions)):
            if len(walk.choices()) > 1:
                if d.kind == "input":
                    groups.setdefault(d.slot, []).append(t)
                else:
                    single.append(t)
            walk.step(choice)
        self._single = single
        self._groups = list(groups.values())
        self._total = len(single) + sum(len(g) for g in self._groups)

    def __call__(self, proposal: Genotype | Sequence[int]) -> float:
        if isinstance(proposal, Genotype):
            try:
                decisions = self.space.encode(proposal)
            except (SpaceError, GenotypeError):
                return 0.0
        else:
            decisions = proposal
        if self._total == 0:
            return 1.0
        target = self.target_decisions
        hits = sum(decisions[t] == target[t] for t in self._single)
        for group in self._groups:
            hits += len({target[t] for t in group} & {decisions[t] for t in group})
        return hits / self._total

    def __repr__(self) -> str:
        return f"ToyReward(space={self.space.name!r}, free_decisions={self._total})"
