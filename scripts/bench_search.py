"""Benchmark of the search itself: throughput, overhead, parallel efficiency, cache saving.

Runs one fixed small search (the built-in data, the PPO controller on the wide space, no
baselines, no early stopping, so every trial does the same work) three times: 1 concurrent
trial, 2 concurrent trials, and 2 concurrent trials without the feature cache. Prints
trials/hour, the share of wall time spent outside proxy training (Ray start-up and scheduling,
controller, evaluation, data loading), the parallel efficiency of 2 workers against 1, and the
cost per trial with and without the cache. The backbone warm-up and the caches are prepared
once before the timed runs and not counted.

    python scripts/bench_search.py [--trials 8] [--steps 100] [--json bench_search.json]
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import tempfile
import time
from pathlib import Path

from nasfpn.search.config import search_config
from nasfpn.search.driver import run_search
from nasfpn.search.ledger import Ledger
from nasfpn.task import prepare_task


def one_run(base: dict, concurrent: int, cache: bool, folder: Path) -> dict:
    config = search_config(base, search={**base["search"], "concurrent": concurrent},
                           backbone={**base.get("backbone", {}), "cache": cache})
    out = folder / f"c{concurrent}-{'cache' if cache else 'nocache'}"
    start = time.perf_counter()
    run_search(config, out)
    wall = time.perf_counter() - start
    rows = list(Ledger(out / "ledger.jsonl"))
    train = sum(r.get("train_seconds", 0.0) for r in rows)
    return {"concurrent": concurrent, "cache": cache, "trials": len(rows), "wall_seconds": wall,
            "trials_per_hour": 3600 * len(rows) / wall,
            "train_seconds_sum": train, "trial_seconds_median": statistics.median(r.seconds for r in rows),
            "train_seconds_median": statistics.median(r.get("train_seconds", 0.0) for r in rows),
            "overhead_share": 1 - train / (wall * concurrent), "folder": str(out)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--json", default="bench_search.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    base = {"proxy": {"steps": args.steps, "eval_every": 0}, "scheduler": {"name": "none"},
            "search": {"trials": args.trials, "baselines": []}, "confirm": {"seeds": 0},
            "resources": {"cpus_per_trial": 1}}
    config = search_config(base)
    prepare_task(config.data, config.backbone, config.proxy)  # warm-up and caches, once, not timed
    folder = Path(tempfile.mkdtemp(prefix="nasfpn-bench-search-"))
    runs = [one_run(base, 1, True, folder), one_run(base, 2, True, folder), one_run(base, 2, False, folder)]
    one, two, uncached = runs
    efficiency = two["trials_per_hour"] / (2 * one["trials_per_hour"])
    cache_ratio = two["train_seconds_median"] / uncached["train_seconds_median"]
    print(f"\nsearch of {args.trials} trials, {args.steps} proxy steps each, built-in data, 1 CPU per trial")
    print(f"{'run':22s} {'wall s':>7s} {'trials/h':>9s} {'overhead':>9s} {'s/trial':>8s} {'train s/trial':>13s}")
    for r in runs:
        name = f"{r['concurrent']} concurrent" + ("" if r["cache"] else ", no cache")
        print(f"{name:22s} {r['wall_seconds']:7.0f} {r['trials_per_hour']:9.0f} {100 * r['overhead_share']:8.1f}% "
              f"{r['trial_seconds_median']:8.1f} {r['train_seconds_median']:13.1f}")
    print(f"parallel efficiency, 2 workers vs 1: {100 * efficiency:.0f}% (target >= 85%)")
    print(f"overhead share: {100 * one['overhead_share']:.1f}% (1 worker), {100 * two['overhead_share']:.1f}% "
          "(2 workers) (target <= 5%)")
    print(f"training cost per trial with / without the feature cache: {cache_ratio:.2f}")
    result = {"machine": platform.processor() or platform.machine(), "trials": args.trials, "steps": args.steps,
              "runs": runs, "parallel_efficiency": efficiency, "cache_cost_ratio": cache_ratio}
    with open(args.json, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
