"""Confirmation: the search's last stage, and what its records say.

After the searching stage, the top-k searched cells (by proxy reward, distinct trained necks)
and the baselines are re-trained under a confirmation recipe (by default longer than the proxy)
with several proxy seeds. Each (trained neck, seed, recipe) is a ledger key, so a resumed or
extended confirmation pays for nothing twice. Seeds vary only what the proxy does (its
initialisation and data order): every run reads the same cached features of the search's one
backbone.

:func:`confirmed_table` turns the ledger into the verdict: per neck the mean, standard deviation
and per-seed APs, the paired difference to the best baseline with a 95% interval, and the
sentence of :func:`nasfpn.search.stats.verdict`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..train import ProxyConfig
from . import stats
from .ledger import Ledger
from .records import SEARCH, Candidate, TrialRecord

# Proxy fields a recipe is named by: what changes the trained network or its score. The seed is
# a trial's own, and evaluations along the way change nothing.
NOT_RECIPE = ("seed", "eval_every", "report_every", "threads")
SAME_AS_PROXY = "proxy"
# The default confirmation trains 1.5x the proxy's steps: longer than the search, as every NAS
# paper re-trains its finalists; 5 necks x 3 seeds are two thirds of a default search's time on 2
# cores (measured: see the README). A user with time sets confirm.steps (and width, image_size, repeats).
CONFIRM_STEPS_FACTOR = 1.5


@dataclass(frozen=True)
class ConfirmConfig:
    """The confirmation stage: ``top_k`` searched cells and the baselines, ``seeds`` proxy seeds
    each (0 turns confirmation off), under the proxy recipe with ``steps`` (default: 1.5 times
    the proxy's), and optionally a larger ``width``, ``image_size`` or ``max_repeats`` (``proxy``:
    the proxy's cap; ``null``: every neck's own repeats)."""
    top_k: int = 1  # with the 4 baselines, 5 necks x 3 seeds; raise it when time allows
    seeds: int = 3
    steps: Optional[int] = None
    width: Optional[int] = None
    image_size: Optional[int] = None
    max_repeats: Any = SAME_AS_PROXY

    def __post_init__(self) -> None:
        for name in ("top_k", "seeds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"confirm.{name}: must be 0 or more, got {value!r}")
        for name in ("steps", "width", "image_size"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"confirm.{name}: a positive integer or null, got {value!r}")
        if self.max_repeats != SAME_AS_PROXY and self.max_repeats is not None and (
                isinstance(self.max_repeats, bool) or not isinstance(self.max_repeats, int) or self.max_repeats < 1):
            raise ValueError(f"confirm.max_repeats: 'proxy', a positive integer or null, got {self.max_repeats!r}")

    @property
    def enabled(self) -> bool:
        return self.seeds > 0


def confirm_proxy(proxy: ProxyConfig, confirm: ConfirmConfig) -> ProxyConfig:
    """The proxy recipe of the confirmation (no evaluations along the way: nothing stops it)."""
    changes: Dict[str, Any] = {"steps": confirm.steps or round(CONFIRM_STEPS_FACTOR * proxy.steps), "eval_every": 0}
    for name in ("width", "image_size"):
        if getattr(confirm, name) is not None:
            changes[name] = getattr(confirm, name)
    if confirm.max_repeats != SAME_AS_PROXY:
        changes["max_repeats"] = confirm.max_repeats
    return dataclasses.replace(proxy, **changes)  # validated by ProxyConfig itself


def recipe_name(proxy: ProxyConfig, search_proxy: ProxyConfig) -> str:
    """``search`` when ``proxy`` trains exactly as the search's proxy (its runs are reused),
    else ``confirm(steps=1200, ...)`` naming what differs: the ledger's recipe key."""
    diff = [f"{f.name}={getattr(proxy, f.name)}" for f in dataclasses.fields(proxy)
            if f.name not in NOT_RECIPE and getattr(proxy, f.name) != getattr(search_proxy, f.name)]
    return f"confirm({', '.join(diff)})" if diff else SEARCH


def finalists(ledger: Ledger, top_k: int) -> List[TrialRecord]:
    """The best search-recipe record of each of the ``top_k`` best distinct searched necks
    (by proxy reward; full-recipe results first, then those the scheduler stopped)."""
    best: Dict[str, TrialRecord] = {}
    for record in ledger.of_recipe(SEARCH):
        c = record.candidate
        if record.status == "failed" or c.baseline:
            continue
        rank = (record.status == "ok", record.reward)
        current = best.get(c.trained_hash)
        if current is None or rank > (current.status == "ok", current.reward):
            best[c.trained_hash] = record
    ranked = sorted(best.values(), key=lambda r: (r.status == "ok", r.reward), reverse=True)
    return ranked[:top_k]


def plan(ledger: Ledger, baselines: Sequence[Candidate], confirm: ConfirmConfig, proxy: ProxyConfig,
         recipe: str) -> List[Candidate]:
    """Every (neck, seed) of the confirmation, baselines first; seeds 0..S-1."""
    necks = [(c.genotype, c.baseline) for c in baselines]
    necks += [(r.candidate.genotype, None) for r in finalists(ledger, confirm.top_k)]
    return [Candidate.of(genotype, proxy, seed=seed, recipe=recipe, baseline=baseline, stage="confirm")
            for seed in range(confirm.seeds) for genotype, baseline in necks]


@dataclass
class ConfirmedNeck:
    """A neck's confirmation: its APs by seed and what they add up to."""
    trained_hash: str
    label: str
    baseline: Optional[str]
    records: List[TrialRecord]
    proxy: Optional[TrialRecord] = None  # its one-seed search-stage record, for Kendall's tau

    @property
    def by_seed(self) -> Dict[int, float]:
        return {r.candidate.seed: r.ap for r in self.records}

    @property
    def summary(self) -> Dict[str, float]:
        return stats.summary(self.by_seed.values())

    def mean_without_proxy(self) -> float:
        """The confirmed mean over the seeds that are not the proxy's own run (when the
        confirmation recipe is the search's, that run is one of its seeds)."""
        others = [r.ap for r in self.records if self.proxy is None or r.key != self.proxy.key]
        return sum(others) / len(others) if others else float("nan")


def confirmed_table(ledger: Ledger, recipe: str) -> Tuple[List[ConfirmedNeck], Dict[str, Any]]:
    """The necks the confirmation trained under ``recipe`` (best mean first) and the verdict
    figures: the best baseline, each neck's paired difference to it, the pooled seed std of the
    baselines, the difference their seeds can resolve, the seeds used, and Kendall's tau of the
    one-seed proxy AP against the confirmed mean (over the other seeds)."""
    planned = {r.candidate.trained_hash for r in ledger if r.candidate.stage == "confirm" and r.candidate.recipe == recipe}
    necks: Dict[str, ConfirmedNeck] = {}
    proxy: Dict[str, TrialRecord] = {}
    for record in ledger:
        c = record.candidate
        if c.trained_hash not in planned or record.status != "ok":
            continue
        if c.stage != "confirm" and c.recipe == SEARCH:
            proxy.setdefault(c.trained_hash, record)
        if c.recipe != recipe:
            continue
        neck = necks.setdefault(c.trained_hash, ConfirmedNeck(c.trained_hash, c.label, c.baseline, []))
        neck.baseline = neck.baseline or c.baseline
        neck.label = c.baseline or neck.label
        neck.records = [r for r in neck.records if r.candidate.seed != c.seed] + [record]
    for neck in necks.values():
        neck.proxy = proxy.get(neck.trained_hash)
    ranked = sorted(necks.values(), key=lambda n: n.summary["mean"], reverse=True)
    baselines = [n for n in ranked if n.baseline]
    figures: Dict[str, Any] = {"best_baseline": baselines[0] if baselines else None, "differences": {}}
    if baselines:
        for neck in ranked:
            if neck is not baselines[0]:
                figures["differences"][neck.trained_hash] = stats.paired_difference(neck.by_seed, baselines[0].by_seed)
    seed_std = stats.pooled_seed_std([list(n.by_seed.values()) for n in baselines])
    seeds = min((len(n.records) for n in baselines), default=0)  # what the baselines' spread was measured on
    figures["seed_std"] = seed_std
    figures["seeds"] = seeds
    figures["seed_list"] = sorted({seed for n in ranked for seed in n.by_seed})
    figures["resolvable"] = stats.resolvable_difference(seed_std, seeds) if seeds >= 2 and seed_std == seed_std \
        else float("nan")
    pairs = [(n.proxy.ap, n.mean_without_proxy()) for n in ranked if n.proxy is not None]
    pairs = [(p, m) for p, m in pairs if m == m]
    figures["kendall_tau"] = stats.kendall_tau([p for p, _ in pairs], [m for _, m in pairs])
    figures["tau_necks"] = len(pairs)
    return ranked, figures
