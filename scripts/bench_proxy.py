"""Benchmark of the proxy detector: speed against torchvision's own RetinaNet, the feature
cache's saving, and the AP of the reference necks (and a deliberately weak one) under the
default CPU proxy recipe, on the built-in data and on the raccoon set when it is present.

    python scripts/bench_proxy.py [--seeds 2] [--steps N] [--speed-steps 20] [--skip-raccoon] [--json bench_proxy.json]

Prints tables and writes every number to the JSON file.

``--detectors`` measures instead whether the ranking of necks depends on the detector the neck
is searched for: under each detector (``proxy.detector``; ``faster_rcnn:soft`` is Faster R-CNN
with ``proxy.roi_extractor: soft``, AugFPN's soft RoI selection, as one more row) it trains the
four reference necks and the no-top-down neck, ``--seeds`` seeds each, under the search's
default recipe (default backbone, cached features; ``--proxy YAML`` and ``--steps`` override
it for every detector alike), on the built-in data or ``../shared/data/bccd``. It runs through
the search's own machinery as ``bench_backbones.py`` does (``neck_bench.py``): one ledger per
data set and detector in ``--out/<data>/<detector>`` (``--out`` defaults to ``runs/detectors``),
keyed by the recipe's name, which names the detector (``search`` for RetinaNet, ``confirm(detector=fcos)``);
kill it and run it again to continue; ``--report-only`` analyses the folders, training nothing.
Prints, and writes as JSON (default ``bench_detectors.json``): per detector each neck's AP per
seed, mean and rank, the pooled seed std, the spread across necks in seed stds, the seconds per
candidate (mean of the ledger's ``seconds``: training with cached features plus evaluation),
whether the weak neck is last; and Kendall's tau between each pair of detectors' rankings (of
the mean APs), with their mean.

    python scripts/bench_proxy.py --detectors retinanet fcos faster_rcnn [faster_rcnn:soft]
                                  [--data builtin|bccd] [--seeds 2] [--out runs/detectors]
                                  [--proxy '{steps: 300}'] [--json bench_detectors.json] [--report-only]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torchvision.models import resnet18
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import LastLevelP6P7
from torchvision.ops.misc import FrozenBatchNorm2d

from nasfpn import Genotype, load_genotype
from nasfpn.backbones import load_weights
from nasfpn.task import BackboneConfig, DataConfig, prepare_task
from nasfpn.train import ProxyConfig, ProxyTask, train_proxy

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
# FPN without its top-down path: every level is a 3x3 conv of its own lateral.
WEAK = {"name": "no-top-down", "levels": [3, 4, 5, 6, 7], "lateral": "conv",
        "extra": {"source": "output", "ops": ["conv", "relu_conv"]},
        "nodes": [{"inputs": ["P3"], "level": 3, "op": "conv3x3"}, {"inputs": ["P4"], "level": 4, "op": "conv3x3"},
                  {"inputs": ["P5"], "level": 5, "op": "conv3x3"}],
        "outputs": {3: "n0", 4: "n1", 5: "n2"}}
NECKS = ["fpn", "panet", "bifpn", "nasfpn"]
DETECTORS = ("retinanet", "fcos", "faster_rcnn")


def chosen_necks() -> dict:
    """The four reference necks and the no-top-down one, by name, in that order."""
    necks = {name: load_genotype(name) for name in NECKS}
    necks["no-top-down"] = Genotype.from_dict(WEAK)
    return necks


def torchvision_retinanet(task: ProxyTask, config: ProxyConfig) -> RetinaNet:
    """torchvision's stock RetinaNet-ResNet-FPN, scaled to the proxy: the same frozen backbone
    (FrozenBN), width, anchors, image size and head depth as ours."""
    body = resnet18(norm_layer=FrozenBatchNorm2d)
    if task.backbone_weights != "random":
        load_weights(body, task.backbone_weights)
    for p in body.parameters():
        p.requires_grad_(False)
    w = config.width
    backbone = BackboneWithFPN(body, {"layer2": "0", "layer3": "1", "layer4": "2"}, [128, 256, 512], w,
                               extra_blocks=LastLevelP6P7(w, w))
    sizes = tuple(tuple(config.anchor_scale * 2 ** lv * 2 ** (k / 3) for k in range(3)) for lv in range(3, 8))
    model = RetinaNet(backbone, task.num_classes, min_size=config.image_size, max_size=config.image_size,
                      anchor_generator=AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * 5))
    for subnet in (model.head.classification_head, model.head.regression_head):
        subnet.conv = subnet.conv[:config.head_depth]
    return model


def alternating_step_times(steps_by_name: dict, steps: int, warmup: int = 3) -> dict:
    """Seconds of each step function, run in turn (a, b, a, b, ...) so that a burst of load on
    the machine hits both alike; the first ``warmup`` rounds are dropped."""
    times: dict = {name: [] for name in steps_by_name}
    for i in range(warmup + steps):
        for name, step in steps_by_name.items():
            start = time.perf_counter()
            step()
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def speed(task: ProxyTask, config: ProxyConfig, steps: int) -> dict:
    """Ours (FPN genotype, images through the backbone) vs torchvision's RetinaNet, same steps,
    alternated step by step: the two do the same work (same backbone, anchors, head, loss), so
    the ratio should be about 1; an earlier version timed them one after the other and a burst
    of load on the machine made torchvision's look 2.8x slower."""
    torch.manual_seed(0)
    from nasfpn.detector import ProxyDetector

    ours = ProxyDetector(load_genotype("fpn"), task.backbone.channels, task.num_classes, config.image_size,
                         backbone=task.backbone, width=config.width, head_depth=config.head_depth,
                         anchor_scale=config.anchor_scale,
                         remember_matches=False).train()  # one batch: ours would match it once, torchvision each step
    theirs = torchvision_retinanet(task, config).train()
    batch = list(range(config.batch_size))
    images, _, targets = ProxyTask(task.train, task.val, task.backbone).batch("train", batch, [False] * len(batch))

    def runner(model, uses_list):
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-4)

        def step():
            losses = model(list(images), targets) if uses_list else model(images, targets)
            loss = sum(losses.values())
            opt.zero_grad()
            loss.backward()
            opt.step()
        return step

    times = alternating_step_times({"ours": runner(ours, False), "torchvision": runner(theirs, True)}, steps)
    ours_ips = len(batch) / statistics.median(times["ours"])
    theirs_ips = len(batch) / statistics.median(times["torchvision"])
    ratios = [t / o for o, t in zip(times["ours"], times["torchvision"])]
    return {"ours_images_per_s": ours_ips, "torchvision_images_per_s": theirs_ips, "ratio": ours_ips / theirs_ips,
            "ratio_median_of_pairs": statistics.median(ratios), "load_average": os.getloadavg(),
            "ours_step_seconds": times["ours"], "torchvision_step_seconds": times["torchvision"]}


def rank(task: ProxyTask, config: ProxyConfig, seeds: int) -> list[dict]:
    rows = []
    for name, genotype in chosen_necks().items():
        runs = [train_proxy(genotype, task, dataclasses.replace(config, seed=s)) for s in range(seeds)]
        aps = [r["ap"] for r in runs]
        rows.append({"neck": name, "ap_mean": statistics.mean(aps), "ap_min": min(aps), "ap_max": max(aps),
                     "ap50_mean": statistics.mean(r["ap50"] for r in runs),
                     "ap_small_mean": statistics.mean(r["ap_small"] for r in runs),
                     "seconds_mean": statistics.mean(r["seconds"] for r in runs), "params": runs[0]["params"],
                     "macs": runs[0]["macs"], "proxy_repeats": runs[0]["proxy_repeats"], "runs": runs})
        print(f"  {name:12s} AP {rows[-1]['ap_mean']:.3f} [{min(aps):.3f}, {max(aps):.3f}]  "
              f"{rows[-1]['seconds_mean']:.0f} s/run", flush=True)
    return rows


def print_ranking(title: str, rows: list[dict], seeds: int) -> None:
    print(f"\n{title} (mean and [min, max] over {seeds} seed(s))")
    print(f"{'neck':12s} {'AP':>6s} {'range':>15s} {'AP50':>6s} {'AP_S':>6s} {'AP_M':>6s} {'repeats':>7s} "
          f"{'params':>9s} {'GMACs':>6s} {'s/run':>6s}")
    for r in sorted(rows, key=lambda r: -r["ap_mean"]):
        ap_m = statistics.mean(run["ap_medium"] for run in r["runs"])
        print(f"{r['neck']:12s} {r['ap_mean']:6.3f} [{r['ap_min']:.3f}, {r['ap_max']:.3f}] {r['ap50_mean']:6.3f} "
              f"{r['ap_small_mean']:6.3f} {ap_m:6.3f} {r['proxy_repeats']:7d} {r['params']:9,d} {r['macs'] / 1e9:6.2f} "
              f"{r['seconds_mean']:6.0f}")


def detector_settings(text: str) -> dict:
    """``fcos`` -> ``{"detector": "fcos"}``; ``faster_rcnn:soft`` adds ``roi_extractor: soft``."""
    detector, _, extractor = text.partition(":")
    return {"detector": detector, **({"roi_extractor": extractor} if extractor else {})}


def detectors_benchmark(args, parser: argparse.ArgumentParser) -> None:
    """``--detectors``: the five necks under each detector, through the search's machinery. Bad
    input stops with exit 2 (``parser.error``) before anything is written."""
    import yaml

    import neck_bench
    from bench_fidelity import data_problem, data_section, data_split, recorded_split, split_problem
    from nasfpn.fsio import atomic_write_text
    from nasfpn.search.config import search_config
    from nasfpn.search.confirm import recipe_name
    from nasfpn.search.driver import recipe_text
    from nasfpn.search.ledger import Ledger

    # One folder per data set: the ledger keys (neck, seed, recipe) do not name the data.
    out = (args.out or Path("runs") / "detectors").resolve() / args.data
    overrides = yaml.safe_load(args.proxy) or {}
    if not isinstance(overrides, dict):
        parser.error(f"--proxy: a YAML mapping of proxy fields, got {args.proxy!r}")
    if args.steps:
        overrides["steps"] = args.steps
    if len(set(args.detectors)) < len(args.detectors):
        parser.error(f"--detectors: each once, got {args.detectors}")
    for label in args.detectors:
        try:
            search_config({"proxy": {**overrides, **detector_settings(label)}})
        except ValueError as err:
            parser.error(f"--detectors {label}: {err}")
    if data_problem(args.data) and not args.report_only:
        parser.error(data_problem(args.data))
    if args.val_fraction is not None and not 0 < args.val_fraction < 1:
        parser.error(f"--val-fraction: a number in (0, 1), got {args.val_fraction}")
    # A report needs no data (nothing is trained).
    data = {} if args.report_only else data_section(args.data, args.val_fraction)
    if args.cache_dir:
        data["cache_dir"] = str(args.cache_dir)
    if not args.report_only:
        split, saved = data_split(args.data, search_config({"data": data}).data), out / "split.json"
        recorded = recorded_split(json.loads(saved.read_text()) if saved.is_file() else None, out, args.data)
        problem = split_problem(out, recorded, split)
        if problem:
            parser.error(problem)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(saved, json.dumps(split))
        data["val_fraction"] = split["val_fraction"]  # resolved once
    necks = chosen_necks()
    base = search_config({"data": data, "proxy": overrides}).proxy
    results: dict = {}
    for label in args.detectors:
        config = search_config({"data": data, "proxy": {**overrides, **detector_settings(label)}})  # checked above
        proxy = config.proxy
        recipe = recipe_name(proxy, base)  # the ledger key: names the detector (RetinaNet's is "search")
        folder = out / label.replace(":", "-")
        names = neck_bench.neck_names(necks, proxy)
        prepare_seconds = None
        if args.report_only:
            ledger = Ledger(folder / "ledger.jsonl")
        else:
            start = time.perf_counter()
            task = prepare_task(config.data, config.backbone, proxy, cache_root=config.data.cache_dir)
            prepare_seconds = round(time.perf_counter() - start, 1)
            ledger = neck_bench.train_necks(config, task, folder, necks, args.seeds, recipe, label)
        figures = neck_bench.analyse(ledger, names, recipe)
        results[label] = {"detector": proxy.detector, "roi_extractor": proxy.roi_extractor,
                          "recipe": recipe_text(proxy, config), "recipe_key": recipe, "folder": str(folder),
                          "prepare_seconds": prepare_seconds, **figures, "ranking": list(figures["necks"])}
    names = list(necks)
    labels = list(results)
    taus = {}
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            tau, n = neck_bench.kendall_between(results[a], results[b], names)
            taus[f"{a} vs {b}"] = {"kendall_tau": tau, "necks": n}
    finite = [t["kendall_tau"] for t in taus.values() if t["kendall_tau"] == t["kendall_tau"]]
    out_json = {"machine": platform.processor() or platform.machine(), "data": args.data, "seeds": args.seeds,
                "proxy": overrides, "necks": names, "detectors": results, "kendall_tau": taus,
                "mean_kendall_tau": statistics.mean(finite) if finite else None}
    show_detectors(out_json)
    path = Path(args.json or "bench_detectors.json")
    atomic_write_text(path, json.dumps(out_json, indent=1))
    print(f"wrote {path}")


def show_detectors(result: dict) -> None:
    import neck_bench

    neck_bench.print_table(f"AP of each neck (mean over seeds [per seed], rank) on the {result['data']} data, the "
                           "search recipe under each detector:", result["detectors"], result["necks"])
    for label, r in result["detectors"].items():
        prepared = "" if r["prepare_seconds"] is None else f"; task prepared in {r['prepare_seconds']:.0f} s"
        print(f"\n{label}: {r['recipe']} (ledger recipe {r['recipe_key']})\n  seed std {r['seed_std']:.4f}; necks "
              f"span {r['spread_in_seed_stds'] or 0:.1f} seed stds; weak neck last: {r['weak_neck_last']}; "
              f"{r['seconds_per_run']} s a candidate (cached features){prepared}\n  ranking: {' > '.join(r['ranking'])}")
    if result["kendall_tau"]:
        print("\nKendall tau between the detectors' rankings of the necks (by mean AP):")
        for pair, t in result["kendall_tau"].items():
            print(f"  {pair}: {t['kendall_tau']:+.2f} over {t['necks']} necks")
        if len(result["kendall_tau"]) > 1 and result["mean_kendall_tau"] is not None:
            print(f"  mean over the pairs: {result['mean_kendall_tau']:+.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=None, help="proxy steps (default: ProxyConfig's)")
    parser.add_argument("--speed-steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--skip-raccoon", action="store_true")
    parser.add_argument("--json", default=None, help="default: bench_proxy.json (bench_detectors.json with --detectors)")
    parser.add_argument("--detectors", nargs="+", default=None, metavar="DETECTOR[:soft]",
                        help=f"the detector benchmark instead: {', '.join(DETECTORS)}; faster_rcnn:soft is Faster "
                             "R-CNN with soft RoI selection")
    parser.add_argument("--data", default="builtin", choices=["builtin", "bccd"], help="with --detectors")
    parser.add_argument("--val-fraction", type=float, default=None,
                        help="with --detectors: data.val_fraction (default: the search's, 0.2 or more on a small "
                             "set); a folder refuses runs of another split")
    parser.add_argument("--out", type=Path, default=None, help="with --detectors: the folder of the ledgers, <out>/<data>/<detector> "
                        "(default runs/detectors)")
    parser.add_argument("--proxy", default="{}", help="with --detectors: proxy settings over the search's, YAML")
    parser.add_argument("--report-only", action="store_true",
                        help="with --detectors: analyse what --out holds; prepare and train nothing")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if args.detectors:
        detectors_benchmark(args, parser)
        return
    if args.val_fraction is not None or args.data != "builtin":
        parser.error("--val-fraction and --data go with --detectors (the speed and ranking benchmark has its own data)")
    args.json = args.json or "bench_proxy.json"
    torch.set_num_threads(args.threads)
    config = ProxyConfig(**({"steps": args.steps} if args.steps else {}))
    out: dict = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
                 "threads": args.threads, "config": dataclasses.asdict(config)}

    start = time.perf_counter()
    task = prepare_task(DataConfig(), BackboneConfig(name="resnet18"), config, cache_root=args.cache_dir)
    out["prepare_seconds"] = time.perf_counter() - start
    print(f"built-in data: {len(task.train)} train / {len(task.val)} val images, backbone weights "
          f"{task.backbone_weights} (prepared in {out['prepare_seconds']:.0f} s)")

    out["speed"] = speed(task, config, args.speed_steps)
    s = out["speed"]
    print(f"\nproxy training, frozen ResNet-18, width {config.width}, head depth {config.head_depth}, "
          f"{config.image_size} px, batch {config.batch_size}, {args.threads} threads, median of {args.speed_steps} steps")
    print(f"{'model':36s} {'images/s':>9s}")
    print(f"{'nasfpn FPN genotype (no cache)':36s} {s['ours_images_per_s']:9.1f}")
    print(f"{'torchvision RetinaNet + FPN':36s} {s['torchvision_images_per_s']:9.1f}")
    print(f"ratio ours / torchvision: {s['ratio']:.2f} (median of per-step pairs {s['ratio_median_of_pairs']:.2f}; "
          "target >= 1.0; the two do the same work, ours skips torchvision's resize/normalise transform)")

    fpn = load_genotype("fpn")
    uncached = ProxyTask(task.train, task.val, task.backbone, backbone_weights=task.backbone_weights)
    with_cache = train_proxy(fpn, task, config)
    without_cache = train_proxy(fpn, uncached, config)
    out["cache"] = {"with": with_cache, "without": without_cache,
                    "ratio": with_cache["seconds"] / without_cache["seconds"]}
    print(f"\nper-candidate wall time (FPN, {config.steps} steps + evaluation): with cache "
          f"{with_cache['seconds']:.1f} s, without {without_cache['seconds']:.1f} s, "
          f"ratio {out['cache']['ratio']:.2f} (target <= 0.3); AP {with_cache['ap']:.3f} vs {without_cache['ap']:.3f}")

    print("\nranking on the built-in data:")
    out["synthetic"] = rank(task, config, args.seeds)
    print_ranking("built-in synthetic data", out["synthetic"], args.seeds)

    raccoon = SHARED / "raccoon"
    if raccoon.is_dir() and not args.skip_raccoon:
        from nasfpn.data import voc_to_coco

        folder = Path(tempfile.mkdtemp(prefix="nasfpn-raccoon-"))
        voc_to_coco(raccoon, folder / "raccoon.json")
        images = raccoon / "images"
        # 0.2 held out (160 / 40), as the README's raccoon figures were measured
        task = prepare_task(DataConfig(annotations=str(folder / "raccoon.json"), images=str(images), val_fraction=0.2),
                            BackboneConfig(name="resnet18"), config, cache_root=args.cache_dir)
        print(f"\nranking on raccoon ({len(task.train)} train / {len(task.val)} val, backbone weights "
              f"{task.backbone_weights}):")
        out["raccoon"] = rank(task, config, args.seeds)
        print_ranking("raccoon", out["raccoon"], args.seeds)
    with open(args.json, "w") as f:
        json.dump(out, f, indent=1, default=float)
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
