"""Random search: every decision drawn uniformly from its valid options (``space.sample``)."""
from __future__ import annotations

from .base import Controller


class RandomSearch(Controller):
    """Uniform random proposals; learns nothing (it still never pays twice).

    Args: see :class:`~nasfpn.controllers.base.Controller`.
    """

    name = "random"

    def _propose(self) -> list[int]:
        return self.space.sample(self.rng)
