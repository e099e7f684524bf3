"""The Ray Tune trainable: one trial trains the proxy for one :class:`Candidate`.

It wraps the Ray-free :func:`nasfpn.train.train_proxy` under the candidate's recipe and seed.
Candidates answered from the ledger never get here: the driver answers them. The prepared task (data splits, feature
caches on disk) is rebuilt once per worker process from its plain spec. Intermediate AP is
reported at every evaluation (ASHA stops trials on it) and the final result is reported after
the last evaluation, so nothing has to run after the last ``tune.report``. A failed proxy (a
non-finite or exploding loss) raises, so Tune records the error and retries it.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Optional

import torch

from ..train import ProxyConfig, train_proxy
from .records import Candidate

_TASKS: Dict[str, Any] = {}  # per worker process: spec digest -> ProxyTask


class TrialFailed(RuntimeError):
    """The proxy could not be trained (its error names why)."""


def reward_of(ap: float, macs: Optional[float], target_macs: Optional[float], weight: float) -> float:
    """AP, or MnasNet's cost-aware ``ap * (macs / target_macs) ** weight`` when a target is set."""
    if target_macs is None or not macs:
        return ap
    return ap * (macs / target_macs) ** weight


def proxy_trial(config: Mapping[str, Any], setup: Mapping[str, Any]) -> None:
    """Tune function trainable. ``config``: a :meth:`Candidate.to_config`. ``setup``: the
    search's constants: per recipe name the task spec and proxy settings, the reward, CPUs per
    trial."""
    import ray
    from ray import tune

    candidate = Candidate.from_config(config)
    recipe = setup["recipes"][candidate.recipe]
    threads = max(1, int(setup["cpus"]))
    torch.set_num_threads(threads)  # one thread per CPU the trial holds, or trials fight for cores
    task = _task(recipe["task"])
    proxy = ProxyConfig.from_dict({**recipe["proxy"], "threads": threads, "seed": candidate.seed})
    target, weight = setup["reward"]["target_macs"], setup["reward"]["weight"]
    node = ray.get_runtime_context().get_node_id()

    def report(progress: Dict[str, Any]) -> None:
        if "ap" in progress:  # an intermediate evaluation: what the scheduler compares trials on
            tune.report({**progress, "reward": reward_of(progress["ap"], progress["macs"], target, weight),
                         "steps": progress["step"], "node": node, "final": False})

    result = train_proxy(candidate.genotype, task, proxy, report)
    if result["status"] != "ok":
        raise TrialFailed(result["error"])
    reward = reward_of(result["ap"], result["macs"], target, weight)
    if not math.isfinite(reward):
        raise TrialFailed(f"non-finite reward {reward}")
    tune.report({**result, "reward": reward, "step": result["steps"], "node": node, "final": True})


def _task(spec: Mapping[str, Any]):
    from ..task import task_from_spec

    key = repr(sorted((k, repr(v)) for k, v in spec.items()))
    if key not in _TASKS:
        _TASKS.clear()
        _TASKS[key] = task_from_spec(spec)
    return _TASKS[key]
