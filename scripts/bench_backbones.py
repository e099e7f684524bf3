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
                                      [--proxy '{width: 32}'] [--report-only]

``--report-only`` prints and writes the figures of what ``--out`` holds, training nothing (nor
preparing the task: its times are then unknown). The training and the analysis are
``neck_bench.py``'s, shared with ``bench_proxy.py --detectors``.
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path
from typing import Dict

import yaml

from nasfpn.fsio import atomic_write_text
from nasfpn.search.config import search_config
from nasfpn.search.driver import recipe_text
from nasfpn.search.ledger import Ledger
from nasfpn.task import prepare_task

sys.path.insert(0, str(Path(__file__).resolve().parent))
import neck_bench  # noqa: E402  (training and analysis shared with bench_proxy.py --detectors)
from bench_proxy import chosen_necks  # noqa: E402  (the references and the no-top-down neck, defined once)

BACKBONES = ("resnet18", "efficientnet_lite0_imagenet")
RECIPE = "search"  # every run here is the search recipe; the ledger key needs a name for it


def run_backbone(name: str, seeds: int, out: Path, amp: bool, proxy_settings: dict, report_only: bool = False) -> dict:
    """Prepare the task (timed), train every neck x seed not yet in the ledger, and return the
    backbone's figures; with ``report_only``, only the figures of what the ledger holds."""
    config = search_config({"backbone": {"name": name}, "proxy": {**proxy_settings, "amp": amp}})
    proxy = config.proxy
    necks = chosen_necks()
    names = neck_bench.neck_names(necks, proxy)
    if report_only:
        ledger = Ledger(out / "ledger.jsonl")
        return analyse(ledger, names, recipe_text(proxy, config), None, None)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    task = prepare_task(config.data, config.backbone, proxy)
    prepare_seconds = time.perf_counter() - start
    warmup = _warmup_record(task.backbone_weights)
    ledger = neck_bench.train_necks(config, task, out, necks, seeds, RECIPE, name)
    return analyse(ledger, names, recipe_text(proxy, config), prepare_seconds, warmup)


def _warmup_record(weights: str) -> dict | None:
    """What the warm-up's sidecar JSON says about it (its seconds), if the weights are a warm-up."""
    sidecar = Path(weights).with_suffix(".json") if weights and weights != "random" else None
    if sidecar is None or not sidecar.is_file():
        return None
    return json.loads(sidecar.read_text()).get("result")


def analyse(ledger: Ledger, names: Dict[str, str], recipe: str, prepare_seconds: float | None,
            warmup: dict | None) -> dict:
    return {"recipe": recipe, "prepare_seconds": None if prepare_seconds is None else round(prepare_seconds, 1),
            "warmup_seconds_when_made": (warmup or {}).get("seconds"), **neck_bench.analyse(ledger, names)}


def show(results: Dict[str, dict]) -> None:
    names = list(chosen_necks())
    neck_bench.print_table("AP of each neck (mean over seeds [per seed], rank), same search recipe:", results, names)
    for b, r in results.items():
        warm = r["warmup_seconds_when_made"]
        prepared = "task not prepared (report only)" if r["prepare_seconds"] is None else \
            f"task prepared in {r['prepare_seconds']:.0f} s"
        print(f"\n{b}: {r['recipe']}\n  seed std {r['seed_std']:.4f}; necks span {r['spread_in_seed_stds'] or 0:.1f} "
              f"seed stds; weak neck last: {r['weak_neck_last']}; {prepared}"
              + (f" (warm-up cached; it took {warm:.0f} s when made)" if warm else "")
              + f"; first run {r['first_run_seconds']} s, {r['seconds_per_run']} s a run")
    if len(results) == 2:
        a, b = results.values()
        tau, n = neck_bench.kendall_between(a, b, names)
        print(f"\nKendall tau between the two backbones' rankings of {n} necks: {tau:+.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES))
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs") / "backbones")
    parser.add_argument("--json", default="bench_backbones.json")
    parser.add_argument("--no-amp", action="store_true", help="float32 even where the CPU has bfloat16")
    parser.add_argument("--proxy", default="{}", help="proxy settings over the defaults, YAML: '{width: 32}'")
    parser.add_argument("--report-only", action="store_true",
                        help="the figures of what --out holds; prepare and train nothing (no preparation times)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    settings = yaml.safe_load(args.proxy) or {}
    results = {b: run_backbone(b, args.seeds, (args.out / b).resolve(), not args.no_amp, settings, args.report_only)
               for b in args.backbones}
    show(results)
    atomic_write_text(Path(args.json), json.dumps({"machine": platform.processor() or platform.machine(),
                                                   "seeds": args.seeds, "amp": not args.no_amp, "proxy": settings,
                                                   "backbones": results}, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
