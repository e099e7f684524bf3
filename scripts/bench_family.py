"""Benchmark of the rest of the neck family under the search recipe, on the built-in data:

- on the default backbone with cached features: FPN, FPN with SAC in place of its 3x3 output
  convs (``fpn-sac``), AugFPN (``augfpn``: FPN + RFA on the raw C5), and FPN with consistent
  supervision (``proxy.aux_loss: 0.25``, AugFPN's weight; its own recipe key);
- RFP (``rfp``: FPN + DetectoRS' recursion, shared frozen backbone) needs the backbone to run in
  every step and a torchvision ResNet: it trains on the warmed-up ResNet-18 without the feature
  cache, beside FPN on the same backbone with the cache, so that its AP and its cost per
  candidate compare with the cached proxy's.

``--seeds`` seeds each, through the search's own confirmation machinery (one resumable ledger per
group in ``--out``: kill it and run it again to continue). Prints a table and writes JSON: per
row the AP per seed, mean, the difference to FPN of its group, seconds per run.

    python scripts/bench_family.py [--seeds 2] [--out runs/family] [--json bench_family.json] [--report-only]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import platform
import sys
from pathlib import Path
from typing import Dict

from nasfpn import Genotype, load_genotype
from nasfpn.search import stats
from nasfpn.search.config import search_config
from nasfpn.search.confirm import recipe_name
from nasfpn.search.driver import recipe_text
from nasfpn.search.ledger import Ledger
from nasfpn.task import prepare_task

sys.path.insert(0, str(Path(__file__).resolve().parent))
import neck_bench  # noqa: E402

AUGFPN_WEIGHT = 0.25  # AugFPN's consistent-supervision weight


def fpn_with_sac() -> Genotype:
    """FPN whose 3x3 output convs are switchable atrous convs (each followed by its norm)."""
    fpn = load_genotype("fpn")
    nodes = tuple(dataclasses.replace(n, op="sac") if n.op == "conv3x3" else n for n in fpn.nodes)
    return fpn.replace(nodes=nodes, name="fpn-sac")


def groups() -> Dict[str, dict]:
    """Each group: one task (backbone, cache) and one recipe; its necks and their row labels."""
    return {
        "default": {"settings": {}, "necks": {"fpn": load_genotype("fpn"), "fpn-sac": fpn_with_sac(),
                                              "augfpn": load_genotype("augfpn")}},
        "default-aux": {"settings": {"proxy": {"aux_loss": AUGFPN_WEIGHT}}, "folder": "default",
                        "necks": {"fpn + consistent supervision": load_genotype("fpn")}, "compare": "default"},
        "resnet18-cached": {"settings": {"backbone": {"name": "resnet18"}}, "necks": {"fpn": load_genotype("fpn")}},
        "resnet18-executed": {"settings": {"backbone": {"name": "resnet18", "cache": False}},
                              "necks": {"rfp": load_genotype("rfp")}, "compare": "resnet18-cached"},
    }


def run_group(name: str, group: dict, seeds: int, out: Path, report_only: bool) -> dict:
    config = search_config({**group["settings"], "proxy": {**group["settings"].get("proxy", {}), "eval_every": 0}})
    base = search_config({"backbone": group["settings"].get("backbone", {}), "proxy": {"eval_every": 0}}).proxy
    recipe = recipe_name(config.proxy, base)
    folder = out / group.get("folder", name)
    names = neck_bench.neck_names(group["necks"], config.proxy)
    if report_only:
        ledger = Ledger(folder / "ledger.jsonl")
    else:
        task = prepare_task(config.data, config.backbone, config.proxy)
        ledger = neck_bench.train_necks(config, task, folder, group["necks"], seeds, recipe, name)
    result = neck_bench.analyse(ledger, names, recipe)
    runs: Dict[str, Dict[int, object]] = {}  # per neck: seed -> record, for its own cost and pairing
    for record in ledger:
        c = record.candidate
        if record.status == "ok" and c.trained_hash in names and c.recipe == recipe:
            runs.setdefault(names[c.trained_hash], {})[c.seed] = record
    for neck, row in result["necks"].items():
        row["seconds_per_run"] = round(sum(r.seconds for r in runs[neck].values()) / len(runs[neck]), 1)
        row["by_seed"] = {seed: r.ap for seed, r in runs[neck].items()}
    result.update(recipe=recipe_text(config.proxy, config), backbone=config.backbone.name,
                  cached=config.backbone.cache)
    return result


def show(results: Dict[str, dict]) -> None:
    print(f"\n{'neck':30s} {'backbone':28s} {'features':9s} {'AP mean [per seed]':28s} "
          f"{'vs FPN, paired by seed [95%]':32s} {'s/run':>6s}")
    for name, result in results.items():
        fpn = results[groups()[name].get("compare", name)]["necks"].get("fpn")
        for neck, row in result["necks"].items():
            diff = ""
            if fpn and neck != "fpn":
                d = row["vs_fpn"] = stats.paired_difference(row["by_seed"], fpn["by_seed"])
                diff = f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"
            print(f"{neck:30s} {result['backbone']:28s} {'cached' if result['cached'] else 'executed':9s} "
                  f"{row['mean']:.3f} {str(row['aps']):22s} {diff:32s} {row['seconds_per_run']:6.0f}")
    for name, result in results.items():
        print(f"{name}: {result['recipe']}; seed std {result['seed_std']:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs/family"))
    parser.add_argument("--json", default="bench_family.json")
    parser.add_argument("--report-only", action="store_true", help="analyse what the folders hold; train nothing")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    results = {name: run_group(name, group, args.seeds, args.out.resolve(), args.report_only)
               for name, group in groups().items()}
    show(results)
    Path(args.json).write_text(json.dumps({"machine": platform.processor() or platform.machine(), "seeds": args.seeds,
                                           "groups": results}, indent=1, default=str))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
