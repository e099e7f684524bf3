"""Benchmark of the proxy's backbone: the warmed-up random ResNet-18 (the quickstart's backbone
until now) against EfficientNet-Lite0 with ImageNet weights (``efficientnet_lite0_imagenet``,
from the ``pretrained`` extra), under the same search recipe, on the built-in data.

For each backbone: the time to prepare the task (warm-up and feature caches; a warm-up already
cached is reported as cached, with the seconds its file recorded when it was made), then the four
reference necks and the neck without a top-down path, ``--seeds`` seeds each, trained through the
search's own machinery (a confirmation stage of a ledger in ``--out/<backbone>``: kill it and run
it again to continue). Prints, and writes as JSON: each neck's AP per seed with mean and spread,
its rank, whether the weak neck is last, the pooled seed standard deviation, the spread across
necks in seed standard deviations, Kendall's tau between the two backbones' rankings, and the time
to the first trained candidate.

    python scripts/bench_backbones.py [--seeds 2] [--out runs/backbones] [--json bench_backbones.json]
                                      [--backbones resnet18 efficientnet_lite0_imagenet] [--no-amp]
                                      [--proxy '{width: 32}']
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Dict

import yaml

from nasfpn import Genotype, load_genotype
from nasfpn.fsio import atomic_write_text
from nasfpn.search import stats
from nasfpn.search.config import search_config
from nasfpn.search.driver import Phase, SearchInterrupted, recipe_text, run_phases
from nasfpn.search.ledger import Ledger
from nasfpn.search.records import Candidate
from nasfpn.search.stages import Confirmation, Pipeline
from nasfpn.task import prepare_task

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_proxy import NECKS, WEAK  # noqa: E402  (the no-top-down neck, defined once)

BACKBONES = ("resnet18", "efficientnet_lite0_imagenet")
RECIPE = "search"  # every run here is the search recipe; the ledger key needs a name for it


def chosen_necks() -> Dict[str, Genotype]:
    necks = {name: load_genotype(name) for name in NECKS}
    necks["no-top-down"] = Genotype.from_dict(WEAK)
    return necks


def run_backbone(name: str, seeds: int, out: Path, amp: bool, proxy_settings: dict) -> dict:
    """Prepare the task (timed), train every neck x seed not yet in the ledger, and return the
    backbone's figures."""
    out.mkdir(parents=True, exist_ok=True)
    config = search_config({"backbone": {"name": name}, "proxy": {**proxy_settings, "amp": amp}})
    proxy = config.proxy
    start = time.perf_counter()
    task = prepare_task(config.data, config.backbone, proxy)
    prepare_seconds = time.perf_counter() - start
    warmup = _warmup_record(task.backbone_weights)
    necks = chosen_necks()
    names = {Candidate.of(g, proxy, seed=0).trained_hash: n for n, g in necks.items()}
    ledger = Ledger(out / "ledger.jsonl")
    planned = [Candidate.of(g, proxy, seed=s, recipe=RECIPE, baseline=n, stage="confirm")
               for s in range(seeds) for n, g in necks.items()]
    pipeline = Pipeline([Confirmation(lambda led: planned, ledger)], ledger)
    done = lambda: sum(ledger.find(c.key, full=True) is not None for c in planned)  # noqa: E731
    specs = {RECIPE: {"task": task.spec, "proxy": {**dataclasses.asdict(proxy), "threads": None}}}
    try:
        run_phases(config, out, specs, [Phase(name, pipeline, lambda: len(planned), done)])
    except SearchInterrupted:
        print(f"interrupted: run this script again to continue in {out}")
    return analyse(ledger, names, recipe_text(proxy, config), prepare_seconds, warmup)


def _warmup_record(weights: str) -> dict | None:
    """What the warm-up's sidecar JSON says about it (its seconds), if the weights are a warm-up."""
    sidecar = Path(weights).with_suffix(".json") if weights and weights != "random" else None
    if sidecar is None or not sidecar.is_file():
        return None
    return json.loads(sidecar.read_text()).get("result")


def analyse(ledger: Ledger, names: Dict[str, str], recipe: str, prepare_seconds: float, warmup: dict | None) -> dict:
    runs: Dict[str, Dict[int, object]] = {}
    for record in ledger:
        if record.status == "ok" and record.candidate.trained_hash in names:
            runs.setdefault(names[record.candidate.trained_hash], {})[record.candidate.seed] = record
    means = {n: statistics.mean(r.ap for r in seeds.values()) for n, seeds in runs.items()}
    seed_std = stats.pooled_seed_std([[r.ap for r in seeds.values()] for seeds in runs.values()])
    ranking = sorted(means, key=lambda n: -means[n])
    first = min((r for seeds in runs.values() for r in seeds.values()), key=lambda r: r.trial, default=None)
    return {
        "recipe": recipe, "prepare_seconds": round(prepare_seconds, 1),
        "warmup_seconds_when_made": (warmup or {}).get("seconds"),
        "first_run_seconds": round(first.seconds, 1) if first else None,
        "seconds_per_run": round(statistics.mean(r.seconds for s in runs.values() for r in s.values()), 1) if runs else None,
        "necks": {n: {"mean": round(means[n], 4), "aps": [round(runs[n][s].ap, 4) for s in sorted(runs[n])],
                      "rank": ranking.index(n) + 1} for n in ranking},
        "seed_std": seed_std,
        "spread_in_seed_stds": stats.spread_in_seed_stds(list(means.values()), seed_std) if means else None,
        "weak_neck_last": bool(ranking) and ranking[-1] == "no-top-down",
    }


def show(results: Dict[str, dict]) -> None:
    names = list(chosen_necks())
    print("\nAP of each neck (mean over seeds [per seed], rank), same search recipe:")
    print(f"{'neck':14s}" + "".join(f"{b:>36s}" for b in results))
    for neck in names:
        cells = []
        for r in results.values():
            row = r["necks"].get(neck)
            cells.append(f"{row['mean']:.3f} {row['aps']} #{row['rank']}" if row else "-")
        print(f"{neck:14s}" + "".join(f"{c:>36s}" for c in cells))
    for b, r in results.items():
        warm = r["warmup_seconds_when_made"]
        print(f"\n{b}: {r['recipe']}\n  seed std {r['seed_std']:.4f}; necks span {r['spread_in_seed_stds'] or 0:.1f} "
              f"seed stds; weak neck last: {r['weak_neck_last']}; task prepared in {r['prepare_seconds']:.0f} s"
              + (f" (warm-up cached; it took {warm:.0f} s when made)" if warm else "")
              + f"; first run {r['first_run_seconds']} s, {r['seconds_per_run']} s a run")
    if len(results) == 2:
        a, b = results.values()
        common = [n for n in names if n in a["necks"] and n in b["necks"]]
        tau = stats.kendall_tau([a["necks"][n]["mean"] for n in common], [b["necks"][n]["mean"] for n in common])
        print(f"\nKendall tau between the two backbones' rankings of {len(common)} necks: {tau:+.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES))
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs") / "backbones")
    parser.add_argument("--json", default="bench_backbones.json")
    parser.add_argument("--no-amp", action="store_true", help="float32 even where the CPU has bfloat16")
    parser.add_argument("--proxy", default="{}", help="proxy settings over the defaults, YAML: '{width: 32}'")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    settings = yaml.safe_load(args.proxy) or {}
    results = {b: run_backbone(b, args.seeds, (args.out / b).resolve(), not args.no_amp, settings)
               for b in args.backbones}
    show(results)
    atomic_write_text(Path(args.json), json.dumps({"machine": platform.processor() or platform.machine(),
                                                   "seeds": args.seeds, "amp": not args.no_amp, "proxy": settings,
                                                   "backbones": results}, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
