"""Ray Tune plug-in: any controller as a ``ray.tune.search.Searcher`` (the only controller
module that imports Ray), and a toy trainable for tests and demos.

    searcher = NASSearcher(make_controller(space, "ppo"), metric="ap", mode="max", max_trials=200)
    tuner = tune.Tuner(trainable, tune_config=tune.TuneConfig(
        search_alg=ConcurrencyLimiter(searcher, max_concurrent=4), num_samples=-1))

Each suggestion is ``{"genotype": <plain dict>, "hash": <canonical hash>}``. Give ``metric``
and ``mode`` to the constructor: Tune calls ``set_search_properties`` only when ``param_space``
is non-empty and never on restore. At ``max_trials`` the searcher answers ``FINISHED``, so use
``num_samples=-1``. ``save`` / ``restore`` write and read a versioned dict (``torch.save`` of
plain data and tensors, loaded with ``weights_only=True``; no classes are pickled), written to
a temporary file and renamed.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Mapping

import torch
from ray import tune
from ray.tune.search import Searcher

from ..fsio import atomic_torch_save
from ..genotype import Genotype
from ..space import load_space
from .base import Controller
from .toy import ToyReward
from .util import check_int, genotype_to_plain

logger = logging.getLogger(__name__)

SEARCHER_FORMAT = "nasfpn.tune_searcher"
SEARCHER_VERSION = 1


class NASSearcher(Searcher):
    """A Tune searcher around a :class:`~nasfpn.controllers.base.Controller`.

    Args:
        controller: proposes the genotypes and learns from the results.
        metric: the result key that is the reward. mode: ``max`` or ``min`` (negated for the
            controller, which always maximises).
        max_trials: suggestions in all (``None``: no limit).

    Raises:
        ValueError: a bad mode or budget.
    """

    def __init__(self, controller: Controller, *, metric: str, mode: str = "max", max_trials: int | None = None):
        if not isinstance(controller, Controller):
            raise TypeError(f"controller must be a nasfpn Controller, got {type(controller).__name__}")
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        if not isinstance(metric, str) or not metric:
            raise ValueError(f"metric must be a result key, got {metric!r}")
        super().__init__(metric=metric, mode=mode)
        self.controller = controller
        self.max_trials = None if max_trials is None else check_int("max_trials", max_trials, low=0)
        self.suggested = 0
        self.completed = 0

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self.max_trials is not None and self.suggested >= self.max_trials:
            return Searcher.FINISHED
        trial_id, genotype = self.controller.ask(trial_id)
        self.suggested += 1
        return {"genotype": genotype_to_plain(genotype), "hash": self.controller.trial_hash(trial_id)}

    def on_trial_complete(self, trial_id: str, result: Mapping[str, Any] | None = None, error: bool = False) -> None:
        if not self.controller.is_pending(trial_id):
            logger.warning("result of trial %s, which the controller is not waiting for; ignored", trial_id)
            return
        value = None if error or not result else result.get(self.metric)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            if not error:
                logger.warning("trial %s: metric %r is %r; counted as a failure", trial_id, self.metric, value)
            value = None
        elif self.mode == "min":
            value = -value
        self.controller.tell(trial_id, value)
        self.completed += 1

    def state_dict(self) -> dict[str, Any]:
        return {"format": SEARCHER_FORMAT, "version": SEARCHER_VERSION, "metric": self.metric, "mode": self.mode,
                "max_trials": self.max_trials, "suggested": self.suggested, "completed": self.completed,
                "controller": self.controller.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not isinstance(state, Mapping) or state.get("format") != SEARCHER_FORMAT:
            raise ValueError("not a NASSearcher state")
        if state.get("version") != SEARCHER_VERSION:
            raise ValueError(f"NASSearcher state version {state.get('version')!r}; this code reads {SEARCHER_VERSION}")
        if (state["metric"], state["mode"]) != (self.metric, self.mode):
            logger.warning("restoring a searcher saved with metric %r mode %r into one with %r %r",
                           state["metric"], state["mode"], self.metric, self.mode)
        self.controller.load_state_dict(state["controller"])
        self.max_trials, self.suggested, self.completed = state["max_trials"], state["suggested"], state["completed"]

    def save(self, checkpoint_path: str) -> None:
        """Write the state to ``checkpoint_path`` atomically and durably (:mod:`nasfpn.fsio`)."""
        atomic_torch_save(self.state_dict(), checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.load_state_dict(torch.load(checkpoint_path, weights_only=True))

    def __repr__(self) -> str:
        return (f"NASSearcher({self.controller!r}, metric={self.metric!r}, mode={self.mode!r}, "
                f"max_trials={self.max_trials})")


def toy_trainable(config: Mapping[str, Any], *, space: str = "nasfpn", target_seed: int = 0) -> None:
    """A Tune function trainable that scores the suggested genotype with :class:`ToyReward`
    (hidden target sampled from ``space`` with ``target_seed``) and reports
    ``{"reward": ..., "hash": ...}``. Bind the keywords with ``tune.with_parameters``."""
    reward = ToyReward(load_space(space), seed=target_seed)
    genotype = Genotype.from_dict(config["genotype"])
    tune.report({"reward": reward(genotype), "hash": config.get("hash", "")})
