"""PPO over the LSTM policy: NAS-FPN's controller.

NAS-FPN (Ghiasi, Lin, Le, CVPR 2019) trains an RNN controller with Proximal Policy Optimization;
the paper gives no controller size or PPO hyperparameters, so every default here is our choice
(``controllers/ppo.yaml`` says so). Each update takes one batch of rewarded samples and runs
``epochs`` gradient steps on the clipped surrogate (Schulman et al., 2017) with an entropy bonus.
Every decision is an action of a one-episode task whose return is the reward, so each decision
has its own clipped ratio, all with the sequence's advantage; the behaviour log-probabilities
are those of the policy at the start of the update.
"""
from __future__ import annotations

from typing import Any

import torch

from ..space import SearchSpace
from .policy import PolicyController
from .util import check_float, check_int


class PPO(PolicyController):
    """Proximal Policy Optimization with a clipped probability ratio.

    Args:
        epochs: gradient steps per batch.
        clip: the ratio is clipped to ``[1 - clip, 1 + clip]``.
        (others: see :class:`~nasfpn.controllers.policy.PolicyController`)
    """

    name = "ppo"

    def __init__(self, space: SearchSpace, *, epochs: int = 4, clip: float = 0.2, **settings: Any):
        super().__init__(space, **settings)
        self.settings.update(epochs=check_int("epochs", epochs, low=1),
                             clip=check_float("clip", clip, low=0, high=1, open_low=True))

    def _update(self, decisions: torch.Tensor, masks: torch.Tensor, advantages: torch.Tensor) -> None:
        clip, weight = self.settings["clip"], self.settings["entropy_weight"]
        with torch.no_grad():
            old, _ = self.policy.log_probs(decisions, masks, per_decision=True)
        advantages = advantages.unsqueeze(1)
        for _ in range(self.settings["epochs"]):
            logp, entropy = self.policy.log_probs(decisions, masks, per_decision=True)
            ratio = torch.exp((logp - old).clamp(max=20.0))  # off-policy samples (neighbours) stay finite
            surrogate = torch.min(ratio * advantages, ratio.clamp(1 - clip, 1 + clip) * advantages).sum(1)
            self._step(-(surrogate.mean() + weight * entropy.mean()))
