"""What the neck benchmarks share: train a fixed set of necks, ``seeds`` seeds each, through the
search's own machinery (a confirmation stage over a ledger: resumable, kill-safe), and turn one
recipe's ledger rows into the figures they print (per-neck AP per seed, mean and rank, pooled
seed std, spread across necks in seed stds, seconds per run, whether the weak neck is last),
plus Kendall's tau between two such rankings.

Used by ``bench_backbones.py`` (one recipe per backbone) and ``bench_proxy.py --detectors`` (one
recipe per detector). Not a benchmark itself.
"""
from __future__ import annotations

import dataclasses
import statistics
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from nasfpn import Genotype
from nasfpn.search import stats
from nasfpn.search.config import SearchConfig
from nasfpn.search.driver import Phase, SearchInterrupted, run_phases
from nasfpn.search.ledger import Ledger
from nasfpn.search.records import Candidate
from nasfpn.search.stages import Confirmation, Pipeline

WEAK_NAME = "no-top-down"


def neck_names(necks: Dict[str, Genotype], proxy) -> Dict[str, str]:
    """The hash of the neck ``proxy`` really trains for each genotype -> the neck's name: how a
    ledger row is recognised (the proxy's width and repeat cap decide the hash)."""
    return {Candidate.of(g, proxy, seed=0).trained_hash: n for n, g in necks.items()}


def train_necks(config: SearchConfig, task, out: Path, necks: Dict[str, Genotype], seeds: int, recipe: str,
                phase: str) -> Ledger:
    """Train every (neck, seed) of ``necks`` x ``range(seeds)`` that ``out/ledger.jsonl`` does not
    hold yet, under ``config.proxy`` on the prepared ``task``, as one confirmation phase of the
    search's driver; ``recipe`` is the ledger key of the recipe (distinct recipes may share one
    ledger). Ctrl-C stops it with every finished run kept: run it again to continue. Returns the
    ledger."""
    out.mkdir(parents=True, exist_ok=True)
    proxy = config.proxy
    ledger = Ledger(out / "ledger.jsonl")
    planned = [Candidate.of(g, proxy, seed=s, recipe=recipe, baseline=n, stage="confirm")
               for s in range(seeds) for n, g in necks.items()]
    pipeline = Pipeline([Confirmation(lambda led: planned, ledger)], ledger)
    done = lambda: sum(ledger.find(c.key, full=True) is not None for c in planned)  # noqa: E731
    specs = {recipe: {"task": task.spec, "proxy": {**dataclasses.asdict(proxy), "threads": None}}}
    try:
        run_phases(config, out, specs, [Phase(phase, pipeline, lambda: len(planned), done)])
    except SearchInterrupted:
        print(f"interrupted: run this script again to continue in {out}")
    return ledger


def analyse(ledger: Ledger, names: Dict[str, str], recipe: Optional[str] = None) -> dict:
    """The figures of the necks ``names`` (trained hash -> name) in ``ledger``, from its ``ok``
    rows (of the recipe key ``recipe`` only, when given; the last row of a (neck, seed) counts):
    the first run's and the mean seconds of a run, each neck's mean AP, APs by seed and rank,
    the pooled seed std, the spread of the means in seed stds and whether the weak neck is last."""
    runs: Dict[str, Dict[int, object]] = {}
    for record in ledger:
        c = record.candidate
        if record.status == "ok" and c.trained_hash in names and (recipe is None or c.recipe == recipe):
            runs.setdefault(names[c.trained_hash], {})[c.seed] = record
    means = {n: statistics.mean(r.ap for r in seeds.values()) for n, seeds in runs.items()}
    seed_std = stats.pooled_seed_std([[r.ap for r in seeds.values()] for seeds in runs.values()])
    ranking = sorted(means, key=lambda n: -means[n])
    first = min((r for seeds in runs.values() for r in seeds.values()), key=lambda r: r.trial, default=None)
    return {
        "first_run_seconds": round(first.seconds, 1) if first else None,
        "seconds_per_run": round(statistics.mean(r.seconds for s in runs.values() for r in s.values()), 1) if runs else None,
        "necks": {n: {"mean": round(means[n], 4), "aps": [round(runs[n][s].ap, 4) for s in sorted(runs[n])],
                      "rank": ranking.index(n) + 1} for n in ranking},
        "seed_std": seed_std,
        "spread_in_seed_stds": stats.spread_in_seed_stds(list(means.values()), seed_std) if means else None,
        "weak_neck_last": bool(ranking) and ranking[-1] == WEAK_NAME,
    }


def print_table(title: str, results: Dict[str, dict], names: List[str]) -> None:
    """One row per neck, one column per result of :func:`analyse`: mean [per seed] #rank."""
    print(f"\n{title}")
    print(f"{'neck':14s}" + "".join(f"{b:>36s}" for b in results))
    for neck in names:
        cells = []
        for r in results.values():
            row = r["necks"].get(neck)
            cells.append(f"{row['mean']:.3f} {row['aps']} #{row['rank']}" if row else "-")
        print(f"{neck:14s}" + "".join(f"{c:>36s}" for c in cells))


def kendall_between(a: dict, b: dict, names: List[str]) -> Tuple[float, int]:
    """Kendall's tau between two results' rankings (of the mean APs) over the necks both have,
    and how many necks that is."""
    common = [n for n in names if n in a["necks"] and n in b["necks"]]
    return stats.kendall_tau([a["necks"][n]["mean"] for n in common], [b["necks"][n]["mean"] for n in common]), len(common)

