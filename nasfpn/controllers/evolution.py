"""Regularised (aging) evolution: Real, Aggarwal, Huang, Le, "Regularized Evolution for Image
Classifier Architecture Search" (AAAI 2019), the search behind AmoebaNet.

The first ``population`` proposals are uniform random samples (warm-start genotypes inside the
space take the first places). After that, each proposal picks ``sample`` members of the
population uniformly at random (with replacement, as the paper's Algorithm 1), takes the best
as the parent and changes one of its decisions (``space.mutate``). Every rewarded genotype joins
the population, and the oldest member leaves once it holds more than ``population``: age, not
reward, decides who dies. Asynchronous use is natural: until the first rewards arrive,
proposals stay random.
"""
from __future__ import annotations

from typing import Any, Mapping

from ..space import SearchSpace
from .base import Controller
from .util import check_int


class Evolution(Controller):
    """Regularised evolution with tournament selection and one-decision mutation.

    Args:
        population: the population size P (the paper's main runs: P = 100, S = 25 over 20,000
            models; our default P = 64, S = 16 keeps its ratio S/P = 1/4 for budgets of hundreds
            to a few thousand evaluations).
        sample: the tournament size S.
        (others: see :class:`~nasfpn.controllers.base.Controller`)
    """

    name = "evolution"

    def __init__(self, space: SearchSpace, *, population: int = 64, sample: int = 16, **settings: Any):
        super().__init__(space, **settings)
        population = check_int("population", population, low=2)
        sample = check_int("sample", sample, low=1)
        if sample > population:
            raise ValueError(f"sample must be at most population ({population}), got {sample}")
        self.settings.update(population=population, sample=sample)
        warm_inside = sum(space.contains(g) for g in self._warm)
        self._random_left = max(0, population - warm_inside)
        self.population: list[tuple[list[int], float]] = []   # oldest first

    def _propose(self) -> list[int]:
        if self._random_left > 0 or not self.population:
            self._random_left = max(0, self._random_left - 1)
            return self.space.sample(self.rng)
        contenders = [self.population[self.rng.randrange(len(self.population))]
                      for _ in range(self.settings["sample"])]
        parent = max(contenders, key=lambda member: member[1])
        return self.space.mutate(parent[0], self.rng)

    def _observe(self, decisions: list[int], reward: float) -> None:
        self.population.append((list(decisions), reward))
        if len(self.population) > self.settings["population"]:
            self.population.pop(0)

    def _algorithm_state(self) -> dict[str, Any]:
        return {"random_left": self._random_left,
                "population": [[list(d), r] for d, r in self.population]}

    def _load_algorithm_state(self, state: Mapping[str, Any]) -> None:
        self._random_left = int(state["random_left"])
        self.population = [([int(x) for x in d], float(r)) for d, r in state["population"]]
