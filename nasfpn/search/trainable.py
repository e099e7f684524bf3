"""The Ray Tune trainable: one trial trains the proxy for one genotype.

It wraps the Ray-free :func:`nasfpn.train.train_proxy`. The prepared task (data splits, feature
caches on disk) is rebuilt once per worker process from its plain spec. Intermediate AP is
reported at every evaluation (ASHA stops trials on it) and the final result is reported after
the last evaluation, so nothing has to run after the last ``tune.report``. A failed proxy (a
non-finite or exploding loss) raises, so Tune records the error and retries it.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Optional

import torch

from ..genotype import Genotype
from ..train import ProxyConfig, train_proxy

_TASKS: Dict[str, Any] = {}  # per worker process: spec digest -> ProxyTask


class TrialFailed(RuntimeError):
    """The proxy could not be trained (its error names why)."""


def reward_of(ap: float, macs: Optional[float], target_macs: Optional[float], weight: float) -> float:
    """AP, or MnasNet's cost-aware ``ap * (macs / target_macs) ** weight`` when a target is set."""
    if target_macs is None or not macs:
        return ap
    return ap * (macs / target_macs) ** weight


def proxy_trial(config: Mapping[str, Any], setup: Mapping[str, Any]) -> None:
    """Tune function trainable. ``config``: what the searcher suggested (``genotype``, ``hash``,
    optionally ``known``: a ledger result to answer with). ``setup``: the search's constants
    (task spec, proxy settings, reward, CPUs per trial)."""
    from ray import tune

    if config.get("known") is not None:  # already evaluated: answered from the ledger, never trained again
        tune.report({**config["known"], "answered_from_ledger": True, "final": True})
        return
    threads = max(1, int(setup["cpus"]))
    torch.set_num_threads(threads)  # one thread per CPU the trial holds, or trials fight for cores
    task = _task(setup["task"])
    genotype = Genotype.from_dict(config["genotype"])
    proxy = ProxyConfig.from_dict({**setup["proxy"], "threads": threads})
    target, weight = setup["reward"]["target_macs"], setup["reward"]["weight"]

    def report(progress: Dict[str, Any]) -> None:
        if "ap" in progress:  # an intermediate evaluation: what the scheduler compares trials on
            tune.report({**progress, "reward": reward_of(progress["ap"], progress["macs"], target, weight),
                         "steps": progress["step"], "final": False})

    result = train_proxy(genotype, task, proxy, report)
    if result["status"] != "ok":
        raise TrialFailed(result["error"])
    reward = reward_of(result["ap"], result["macs"], target, weight)
    if not math.isfinite(reward):
        raise TrialFailed(f"non-finite reward {reward}")
    tune.report({**result, "reward": reward, "step": result["steps"], "final": True})


def _task(spec: Mapping[str, Any]):
    from ..task import task_from_spec

    key = repr(sorted((k, repr(v)) for k, v in spec.items()))
    if key not in _TASKS:
        _TASKS.clear()
        _TASKS[key] = task_from_spec(spec)
    return _TASKS[key]
