"""Controllers: propose genotypes from a search space and learn from their rewards.

Plain ask / tell objects (no Ray here; the Ray Tune adapter is :mod:`nasfpn.controllers.tune`)::

    from nasfpn import load_space
    from nasfpn.controllers import ToyReward, make_controller

    space = load_space("nasfpn")
    controller = make_controller(space, "ppo", seed=0)   # controllers/ppo.yaml
    reward = ToyReward(space, seed=1)
    for _ in range(64):
        trial_id, genotype = controller.ask()
        controller.tell(trial_id, reward(genotype))
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

from ..genotype import Genotype
from ..space import SearchSpace
from .base import Controller
from .config import CONTROLLER_DIR, controller_config_names, load_controller_config
from .evolution import Evolution
from .policy import DecisionPolicy, PolicyController
from .ppo import PPO
from .random_search import RandomSearch
from .reinforce import Reinforce
from .toy import ToyReward

CONTROLLERS: dict[str, type[Controller]] = {"ppo": PPO, "reinforce": Reinforce, "evolution": Evolution,
                                            "random": RandomSearch}


def make_controller(space: SearchSpace, config: Mapping[str, Any] | str | Path, *, seed: int | None = None,
                    warm_start: Iterable[Genotype] = ()) -> Controller:
    """A controller from a settings mapping, a YAML file or a shipped name (``ppo``...): its
    ``controller`` key picks the class from :data:`CONTROLLERS`.

    Raises:
        ValueError: an unknown controller or setting (the message lists the valid ones).
    """
    data = load_controller_config(config)
    name = data.get("controller")
    if name not in CONTROLLERS:
        raise ValueError(f"controller {name!r} is unknown; choose one of {sorted(CONTROLLERS)}")
    return CONTROLLERS[name].from_config(space, data, seed=seed, warm_start=warm_start)


__all__ = ["CONTROLLERS", "CONTROLLER_DIR", "Controller", "DecisionPolicy", "Evolution", "PPO", "PolicyController",
           "RandomSearch", "Reinforce", "ToyReward", "controller_config_names", "load_controller_config",
           "make_controller"]
