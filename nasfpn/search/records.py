"""The two records of a search: a :class:`Candidate` (what to train) and a :class:`TrialRecord`
(how it ended: one ledger line).

Everything in ``nasfpn/search`` passes these, never loose dicts: the stages ask and tell them,
the Ray trainable receives a candidate as a plain config and rebuilds it, the ledger stores and
finds trial records, the report and the progress line read them.

A trial is identified by :attr:`Candidate.key`: the neck the proxy really trains (its width and
repeat cap applied), the proxy seed and the recipe. Two genotypes that differ only in what the
proxy overrides share a key, so a search never pays twice for one training; the same neck under
another seed or recipe (confirmation) is a new key.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

from ..genotype import Genotype
from ..train import ProxyConfig, proxy_genotype

SEARCH = "search"    # the recipe of the searching stage: the proxy as configured
CONFIRM = "confirm"  # the confirmation recipe (longer, several seeds)
STATUSES = ("ok", "stopped", "failed")
METRIC_KEYS = ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")
# ``curve``: [[steps, AP], ...] at each evaluation along the way (what ASHA's rungs compared)
RESULT_KEYS = METRIC_KEYS + ("params", "macs", "steps", "seconds", "train_seconds", "eval_seconds", "final_loss",
                             "proxy_repeats", "precision", "detector", "curve")

Key = Tuple[str, int, str]


def trained_hash(genotype: Genotype, proxy: ProxyConfig) -> str:
    """The hash of the neck the proxy really trains for ``genotype`` (at the proxy's width and
    repeat cap): genotypes that differ only in what the proxy overrides cost one training."""
    return proxy_genotype(genotype.replace(width=proxy.width), proxy).hash()


@dataclass(frozen=True)
class Candidate:
    """One neck to train once: a genotype under one recipe and one proxy seed.

    ``stage`` says who asked for it (``baseline``, ``search``, ``confirm``); ``trial_id`` is the
    asking stage's own handle (the controller's trial id), so its answer finds its way back.
    """
    genotype: Genotype
    hash: str
    trained_hash: str
    seed: int
    recipe: str = SEARCH
    baseline: Optional[str] = None
    stage: str = SEARCH
    trial_id: str = ""

    @classmethod
    def of(cls, genotype: Genotype, proxy: ProxyConfig, *, seed: int, recipe: str = SEARCH,
           baseline: Optional[str] = None, stage: str = SEARCH, trial_id: str = "") -> "Candidate":
        """Hash ``genotype`` once, as written and as the proxy of ``recipe`` trains it."""
        return cls(genotype, genotype.hash(), trained_hash(genotype, proxy), seed, recipe, baseline, stage, trial_id)

    @property
    def key(self) -> Key:
        return (self.trained_hash, self.seed, self.recipe)

    @property
    def label(self) -> str:
        return self.baseline or self.genotype.name or f"cell-{self.hash[:8]}"

    def to_config(self) -> Dict[str, Any]:
        """A plain mapping for a Ray trial's config (and Tune's own experiment state)."""
        return {"genotype": self.genotype.to_dict(), "hash": self.hash, "trained_hash": self.trained_hash,
                "seed": self.seed, "recipe": self.recipe, "baseline": self.baseline, "stage": self.stage,
                "trial_id": self.trial_id}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "Candidate":
        return cls(Genotype.from_dict(config["genotype"]), config["hash"], config["trained_hash"], int(config["seed"]),
                   config.get("recipe", SEARCH), config.get("baseline"), config.get("stage", SEARCH),
                   config.get("trial_id", ""))


@dataclass(frozen=True)
class TrialRecord:
    """One finished trial: a ledger line. ``status`` is ``ok`` (the full recipe), ``stopped``
    (the scheduler stopped it early: its metrics are from ``steps`` steps) or ``failed``.
    ``seconds`` is what the trial cost, stopped ones included; ``answered_from_ledger`` marks a
    candidate answered with an earlier trial's result, which cost nothing."""
    trial: int
    candidate: Candidate
    status: str
    reward: float = 0.0
    metrics: Dict[str, Any] = field(default_factory=dict)  # RESULT_KEYS that the trial reported
    attempts: int = 1
    error: Optional[str] = None
    node: Optional[str] = None
    controller: Optional[str] = None
    answered_from_ledger: bool = False
    time: str = ""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"trial status must be one of {STATUSES}, got {self.status!r}")

    @classmethod
    def finished(cls, trial: int, candidate: Candidate, status: str, result: Mapping[str, Any] | None, *,
                 attempts: int = 1, error: Optional[str] = None, node: Optional[str] = None,
                 controller: Optional[str] = None, answered_from_ledger: bool = False) -> "TrialRecord":
        """The record of ``candidate`` from the result mapping a trial reported (its last one)."""
        result = dict(result or {})
        metrics = {k: _plain(result[k]) for k in RESULT_KEYS if result.get(k) is not None}
        reward = float(result.get("reward", 0.0)) if status != "failed" else 0.0
        if status == "failed":
            metrics.update({k: 0.0 for k in METRIC_KEYS})
        return cls(trial, candidate, status, reward, metrics, attempts, error, node, controller, answered_from_ledger,
                   time.strftime("%Y-%m-%dT%H:%M:%S"))

    def answer(self, trial: int, candidate: Candidate) -> "TrialRecord":
        """This result given to another candidate of the same key (never trained again)."""
        return dataclasses.replace(self, trial=trial, candidate=candidate, answered_from_ledger=True, attempts=0,
                                   node=None, time=time.strftime("%Y-%m-%dT%H:%M:%S"),
                                   metrics={**self.metrics, "seconds": 0.0})

    # --- shortcuts the report and the progress line read -------------------------------------
    @property
    def ap(self) -> float:
        return float(self.metrics.get("ap", 0.0))

    @property
    def seconds(self) -> float:
        """What the trial cost (0 for an answer from the ledger)."""
        return float(self.metrics.get("seconds") or 0.0)

    @property
    def key(self) -> Key:
        return self.candidate.key

    def get(self, name: str, default: Any = None) -> Any:
        return self.metrics.get(name, default)

    # --- the ledger line --------------------------------------------------------------------
    def to_json(self) -> Dict[str, Any]:
        c = self.candidate
        return {"trial": self.trial, "hash": c.hash, "trained_hash": c.trained_hash, "seed": c.seed,
                "recipe": c.recipe, "stage": c.stage, "baseline": c.baseline, "genotype": c.genotype.to_dict(),
                "status": self.status, "reward": self.reward, **self.metrics, "attempts": self.attempts,
                "error": self.error, "node": self.node, "controller": self.controller,
                "answered_from_ledger": self.answered_from_ledger, "time": self.time}

    @classmethod
    def from_json(cls, line: Mapping[str, Any], default_seed: int = 0) -> "TrialRecord":
        """Read a ledger line (lines written before seeds and recipes were recorded count as the
        search recipe under ``default_seed``, the proxy seed of their search)."""
        genotype = Genotype.from_dict(line["genotype"])
        baseline = line.get("baseline")
        candidate = Candidate(genotype, line["hash"], line.get("trained_hash") or line["hash"],
                              int(line.get("seed", default_seed)), line.get("recipe", SEARCH), baseline,
                              line.get("stage") or ("baseline" if baseline else SEARCH))
        return cls(int(line["trial"]), candidate, line["status"], float(line.get("reward", 0.0)),
                   {k: line[k] for k in RESULT_KEYS if line.get(k) is not None}, int(line.get("attempts", 1)),
                   line.get("error"), line.get("node"), line.get("controller"),
                   bool(line.get("answered_from_ledger", False)), line.get("time", ""))


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return value
