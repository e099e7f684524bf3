"""REINFORCE with a moving-average baseline (Williams, 1992): the simpler policy-gradient
controller (NAS-FCOS's choice), on the same LSTM policy as PPO: one gradient step per batch."""
from __future__ import annotations

from typing import Any

import torch

from ..space import SearchSpace
from .policy import PolicyController


class Reinforce(PolicyController):
    """REINFORCE: minimise ``-(advantage * log p(sequence)) - entropy_weight * entropy``.

    Args: see :class:`~nasfpn.controllers.policy.PolicyController`.
    """

    name = "reinforce"

    def __init__(self, space: SearchSpace, *, lr: float = 0.01, **settings: Any):
        super().__init__(space, lr=lr, **settings)  # one step per batch: a larger step than PPO's

    def _update(self, decisions: torch.Tensor, masks: torch.Tensor, advantages: torch.Tensor) -> None:
        logp, entropy = self.policy.log_probs(decisions, masks)
        self._step(-((advantages * logp).mean() + self.settings["entropy_weight"] * entropy.mean()))
