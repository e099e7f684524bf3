"""Benchmark of the proxy's fidelity: does the 600-step proxy rank necks as a 4x longer recipe does?

Trains at least 20 necks (the four references, the neck without a top-down path, FPN with BN
laterals, and necks sampled from the wide space with a fixed seed) under the proxy recipe and
under a recipe ``--factor`` times longer, ``--seeds`` seeds each, on the built-in data (and on
``../shared/data/bccd`` with ``--data bccd``). It runs through the search's own machinery: every
(neck, seed, recipe) is a ledger key of a confirmation stage in the folder ``--out``, so the
benchmark can be killed at any moment and run again to continue where it stopped.

Prints and writes (JSON): Kendall's tau and Spearman's rho between the two rankings (mean over
seeds) with bootstrap 95% intervals, each recipe's mean seed standard deviation against the
spread across necks, the spread across the reference necks in seed standard deviations, the cost
of each recipe, and the rank correlation of the AP at each evaluation along the proxy run (the
ASHA rungs, 200 and 400 steps) with its final AP.

``--proxy YAML`` measures another proxy recipe (``'{steps: 300}'``, ``'{width: 32}'``) against the
same reference: the reference stays ``--factor`` times the search's default steps, so its runs are
shared by every proxy measured in one folder, and the ledger keys each recipe by what differs.

    python scripts/bench_fidelity.py [--data builtin|bccd] [--necks 21] [--seeds 2] [--long-seeds N] [--factor 4] [--proxy YAML]
                                     [--out runs/fidelity-builtin] [--json bench_fidelity.json] [--report-only]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import platform
import random
import statistics
import sys

import yaml
from pathlib import Path
from typing import Dict, List

from nasfpn import Genotype, load_genotype
from nasfpn.data import voc_to_coco
from nasfpn.fsio import atomic_write_text
from nasfpn.search import stats
from nasfpn.search.config import search_config
from nasfpn.search.confirm import recipe_name
from nasfpn.search.driver import Phase, SearchInterrupted, recipe_text, run_phases
from nasfpn.search.ledger import Ledger
from nasfpn.search.records import Candidate
from nasfpn.search.stages import Confirmation, Pipeline
from nasfpn.space import load_space
from nasfpn.cache import default_cache_root
from nasfpn.task import DataConfig, prepare_task, resolved_val_fraction

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_proxy import SHARED, WEAK  # noqa: E402  (the no-top-down neck, defined once)

REFERENCES = ["fpn", "panet", "bifpn", "nasfpn"]


def necks(count: int, proxy) -> Dict[str, Genotype]:
    """The references, the weak neck, FPN with BN laterals, then wide-space samples (seed 0) that
    the proxy trains as necks not yet in the list."""
    chosen = {name: load_genotype(name) for name in REFERENCES}
    chosen["no-top-down"] = Genotype.from_dict(WEAK)
    chosen["fpn-bn"] = load_genotype("fpn").replace(lateral="conv_bn", name="fpn-bn")
    trained = {Candidate.of(g, proxy, seed=0).trained_hash for g in chosen.values()}
    space, rng = load_space("wide"), random.Random(0)
    while len(chosen) < count:
        genotype = space.decode(space.sample(rng))
        key = Candidate.of(genotype, proxy, seed=0).trained_hash
        if key not in trained:
            trained.add(key)
            chosen[f"wide-{len(chosen) - 6:02d}"] = genotype
    return chosen


def data_problem(which: str) -> str:
    """Why ``--data which`` cannot be measured here ('' when it can)."""
    root = SHARED / which
    return "" if which == "builtin" or root.is_dir() else f"--data {which}: {root} is not there"


def data_section(which: str, val_fraction: float | None = None) -> dict:
    """The search config's ``data`` section of ``--data which``; a VOC set is converted once into
    the nasfpn cache folder (not the benchmark's: its folder is checked before it is written)."""
    given = {} if val_fraction is None else {"val_fraction": val_fraction}
    if which == "builtin":
        return given
    root = SHARED / which
    if not root.is_dir():  # the scripts' callers check first (data_problem): exit 2 before writing anything
        raise FileNotFoundError(data_problem(which))
    annotations = default_cache_root() / "voc" / f"{which}.json"
    if not annotations.is_file():
        annotations.parent.mkdir(parents=True, exist_ok=True)
        voc_to_coco(root, annotations)
    images = next(p for p in (root / "JPEGImages", root / "images") if p.is_dir())
    return {"annotations": str(annotations), "images": str(images), **given}


def data_split(which: str, data: DataConfig) -> dict:
    """What a folder's runs were measured on: the data and the share held out for validation as
    the search resolves it (``data.val_fraction``, or the default for the set's size)."""
    return {"data": which, "val_fraction": resolved_val_fraction(data)}


def recorded_split(saved: dict | None, folder: Path, which: str) -> dict | None:
    """The split a folder's runs were made on: as recorded, or for a folder with ledgers from
    before splits were recorded, the default of that time (0.2); None for a new folder."""
    if saved is not None or not any(folder.glob("**/ledger.jsonl")):
        return saved
    return {"data": which, "val_fraction": 0.2}


def split_problem(folder: Path, saved: dict | None, split: dict) -> str:
    """The ledger keys a run by neck, seed and recipe, not by data: runs of another split in a
    folder would be taken for runs of this one."""
    if saved in (None, split):
        return ""
    return (f"{folder} holds runs of {saved}, not {split}: give --val-fraction {saved['val_fraction']} to add to "
            "them, or another --out")


def analyse(ledger: Ledger, necks: List[str], recipes: Dict[str, str]) -> dict:
    """The figures of the benchmark from the ledger: runs are grouped by neck name (the
    candidate's ``baseline`` field; a width variant trains other hashes of the same necks)."""
    by = {recipe: {} for recipe in recipes.values()}
    for record in ledger:
        c = record.candidate
        if record.status == "ok" and c.recipe in by and c.baseline in necks:
            by[c.recipe].setdefault(c.baseline, {})[c.seed] = record
    short, long = recipes["proxy"], recipes["long"]
    names = {n: n for n in necks}
    both = [h for h in names if h in by[short] and h in by[long]]
    mean = {r: {h: statistics.mean(x.ap for x in by[r][h].values()) for h in by[r]} for r in by}
    result = {"necks_done": {name: len(by[r]) for name, r in recipes.items()}, "necks_in_both": len(both)}
    xs, ys = [mean[short][h] for h in both], [mean[long][h] for h in both]
    result["kendall_tau"] = stats.kendall_tau(xs, ys)
    result["kendall_tau_interval"] = stats.bootstrap_interval(xs, ys, stats.kendall_tau)
    result["spearman_rho"] = stats.spearman_rho(xs, ys)
    result["spearman_rho_interval"] = stats.bootstrap_interval(xs, ys, stats.spearman_rho)
    # What a confirmation of the proxy's finalists sees: how many of the long recipe's best five
    # are among the proxy's best five, and where the long recipe's winner ranks on the proxy.
    by_proxy = sorted(both, key=lambda h: -mean[short][h])
    by_long = sorted(both, key=lambda h: -mean[long][h])
    result["top5_overlap"] = len(set(by_proxy[:5]) & set(by_long[:5])) if len(both) >= 5 else None
    result["long_winner_proxy_rank"] = by_proxy.index(by_long[0]) + 1 if both else None
    refs = {h for h, n in names.items() if n in REFERENCES}
    for name, recipe in recipes.items():
        groups = [[x.ap for x in seeds.values()] for seeds in by[recipe].values()]
        seed_std = stats.pooled_seed_std(groups)
        means = list(mean[recipe].values())
        ref_means = [mean[recipe][h] for h in refs if h in mean[recipe]]
        runs = [x for seeds in by[recipe].values() for x in seeds.values()]
        # How well the recipe agrees with itself: its seed 0 ranking against its seed 1 ranking
        # (a ceiling on any tau measured against it).
        paired = [seeds for seeds in by[recipe].values() if 0 in seeds and 1 in seeds]
        firsts, seconds = [s[0].ap for s in paired], [s[1].ap for s in paired]
        seed_tau = stats.kendall_tau(firsts, seconds) if len(paired) >= 3 else None
        result[name] = {
            "recipe": recipe, "runs": len(runs), "seed_std": seed_std, "seed_tau": seed_tau,
            "seed_tau_interval": None if seed_tau is None else stats.bootstrap_interval(firsts, seconds,
                                                                                        stats.kendall_tau),
            "mean_ap": statistics.mean(means) if means else None,
            "spread_across_necks": (max(means) - min(means)) if means else None,
            "spread_in_seed_stds": stats.spread_in_seed_stds(means, seed_std) if means else None,
            "reference_spread_in_seed_stds": stats.spread_in_seed_stds(ref_means, seed_std) if ref_means else None,
            "seconds_per_run": statistics.mean(x.seconds for x in runs) if runs else None,
            "ranking": sorted(((names[h], round(m, 4), sorted(round(x.ap, 4) for x in by[recipe][h].values()))
                               for h, m in mean[recipe].items()), key=lambda row: -row[1]),
        }
    rungs: Dict[int, List[tuple]] = {}
    for seeds in by[short].values():
        for record in seeds.values():
            for steps, ap in record.get("curve") or []:
                rungs.setdefault(int(steps), []).append((ap, record.ap))
    result["rungs"] = {steps: {"kendall_tau": stats.kendall_tau([a for a, _ in pairs], [f for _, f in pairs]),
                               "spearman_rho": stats.spearman_rho([a for a, _ in pairs], [f for _, f in pairs]),
                               "runs": len(pairs)} for steps, pairs in sorted(rungs.items())}
    return result


def seed_tau_text(recipe: dict) -> str:
    if recipe["seed_tau"] is None:
        return ""
    lo, hi = recipe["seed_tau_interval"]
    return f"; tau seed 0 vs seed 1 {recipe['seed_tau']:+.3f} ({lo:+.3f} to {hi:+.3f})"


def show(result: dict, names: List[str]) -> None:
    print(f"\nproxy fidelity: {result['necks_in_both']} necks trained under both recipes")
    for name in ("proxy", "long"):
        r = result[name]
        print(f"\n{name} recipe {r['recipe']}: {r['runs']} runs, {r['seconds_per_run'] or 0:.0f} s/run; seed std "
              f"{r['seed_std']:.4f}; spread across necks {r['spread_across_necks'] or 0:.3f} = "
              f"{r['spread_in_seed_stds'] or 0:.1f} seed stds (references: "
              f"{r['reference_spread_in_seed_stds'] or 0:.1f}); mean AP {r['mean_ap'] or 0:.3f}" + seed_tau_text(r))
        for neck, mean_ap, aps in r["ranking"]:
            print(f"  {neck:14s} {mean_ap:.3f}  {aps}")
    lo, hi = result["kendall_tau_interval"]
    print(f"\nKendall tau proxy vs long: {result['kendall_tau']:+.3f} (95% bootstrap {lo:+.3f} to {hi:+.3f}); "
          f"Spearman rho {result['spearman_rho']:+.3f} ({result['spearman_rho_interval'][0]:+.3f} to "
          f"{result['spearman_rho_interval'][1]:+.3f}); target tau >= 0.8")
    if result["top5_overlap"] is not None:
        print(f"the long recipe's best 5 among the proxy's best 5: {result['top5_overlap']} of 5; its winner is "
              f"#{result['long_winner_proxy_rank']} on the proxy")
    for steps, r in result["rungs"].items():
        print(f"AP at {steps} steps vs final proxy AP: Kendall tau {r['kendall_tau']:+.3f}, Spearman rho "
              f"{r['spearman_rho']:+.3f} over {r['runs']} runs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="builtin", choices=["builtin", "bccd"])
    parser.add_argument("--necks", type=int, default=21)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--long-seeds", type=int, default=None,
                        help="seeds of the longer recipe (default --seeds): its runs cost --factor times more")
    parser.add_argument("--val-fraction", type=float, default=None,
                        help="the share of the images held out for validation (data.val_fraction; default: "
                             "the search's, 0.2 or more on a small set); each split in its own --out (a folder "
                             "refuses another)")
    parser.add_argument("--factor", type=int, default=4)
    parser.add_argument("--concurrent", type=int, default=2)
    parser.add_argument("--proxy", default="{}", help="YAML overrides of the proxy recipe under test")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--json", default="bench_fidelity.json")
    parser.add_argument("--report-only", action="store_true", help="analyse what the folder holds; train nothing")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    out = (args.out or Path("runs") / f"fidelity-{args.data}").resolve()
    # Bad input: exit 2 naming it (parser.error), before the folder or anything in it is written.
    overrides = yaml.safe_load(args.proxy) or {}
    if not isinstance(overrides, dict):
        parser.error(f"--proxy: a YAML mapping of proxy fields, got {args.proxy!r}")
    if data_problem(args.data):
        parser.error(data_problem(args.data))
    for flag, value, least in (("--necks", args.necks, 1), ("--seeds", args.seeds, 1), ("--factor", args.factor, 1),
                               ("--long-seeds", args.long_seeds, 0), ("--concurrent", args.concurrent, 1)):
        if value is not None and value < least:
            parser.error(f"{flag}: at least {least}, got {value}")
    if args.val_fraction is not None and not 0 < args.val_fraction < 1:
        parser.error(f"--val-fraction: a number in (0, 1), got {args.val_fraction}")
    try:
        proxy = search_config({"proxy": {"eval_every": 200, **overrides}}).proxy
    except ValueError as err:
        parser.error(f"--proxy: {err}")
    config = search_config({"data": data_section(args.data, args.val_fraction),
                            "search": {"concurrent": args.concurrent}, "proxy": {"eval_every": 200}})
    experiment = out / "experiment.json"  # every recipe measured in this folder, by its ledger key
    saved = json.loads(experiment.read_text()) if experiment.is_file() else {}
    split = data_split(args.data, config.data)
    problem = split_problem(out, recorded_split(saved.get("split"), out, args.data), split)
    if problem:
        parser.error(problem)
    out.mkdir(parents=True, exist_ok=True)
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, val_fraction=split["val_fraction"]))
    base = config.proxy
    long = dataclasses.replace(base, steps=args.factor * base.steps, eval_every=0)
    recipes = {"proxy": recipe_name(proxy, base), "long": recipe_name(long, base)}
    chosen = necks(args.necks, base)
    ledger = Ledger(out / "ledger.jsonl")
    if not args.report_only:
        task = prepare_task(config.data, config.backbone, proxy)
        specs = {recipes["proxy"]: {"task": task.spec, "proxy": {**dataclasses.asdict(proxy), "threads": None}},
                 recipes["long"]: {"task": task.spec, "proxy": {**dataclasses.asdict(long), "threads": None}}}
        known = saved.get("recipes", {})
        known.update({recipes["proxy"]: recipe_text(proxy, config), recipes["long"]: recipe_text(long, config)})
        atomic_write_text(experiment, json.dumps({"necks": list(chosen), "recipes": known, "split": split}, indent=1))
        phases = []
        seeds = {"proxy": args.seeds, "long": args.seeds if args.long_seeds is None else args.long_seeds}
        for name, recipe_proxy in (("proxy", proxy), ("long", long)):
            planned = [Candidate.of(g, recipe_proxy, seed=s, recipe=recipes[name], baseline=n, stage="confirm")
                       for s in range(seeds[name]) for n, g in chosen.items()]
            if not planned:  # --long-seeds 0: the proxy alone (its seed spread and seed-to-seed tau)
                continue
            pipeline = Pipeline([Confirmation(lambda led, planned=planned: planned, ledger)], ledger)
            done = lambda planned=planned: sum(ledger.find(c.key, full=True) is not None for c in planned)  # noqa: E731
            phases.append(Phase(name, pipeline, lambda n=len(planned): n, done))
        try:
            run_phases(config, out, specs, phases)
        except SearchInterrupted:  # Ctrl-C: every finished run is kept; report what there is
            print(f"interrupted: run this script again to continue in {out}")
    result = analyse(ledger, list(chosen), recipes)
    result.update(machine=platform.processor() or platform.machine(), data=args.data, seeds=args.seeds,
                  long_seeds=args.seeds if args.long_seeds is None else args.long_seeds,
                  val_fraction=split["val_fraction"],
                  factor=args.factor, proxy_overrides=overrides, necks=list(chosen), folder=str(out))
    show(result, list(chosen))
    Path(args.json).write_text(json.dumps(result, indent=1, default=str))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
