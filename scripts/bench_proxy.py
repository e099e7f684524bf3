"""Benchmark of the proxy detector: speed against torchvision's own RetinaNet, the feature
cache's saving, and the AP of the reference necks (and a deliberately weak one) under the
default CPU proxy recipe, on the built-in data and on the raccoon set when it is present.

    python scripts/bench_proxy.py [--seeds 2] [--steps N] [--speed-steps 20] [--skip-raccoon] [--json bench_proxy.json]

Prints tables and writes every number to the JSON file.
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
    necks = [(name, load_genotype(name)) for name in NECKS] + [("no-top-down", Genotype.from_dict(WEAK))]
    for name, genotype in necks:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=None, help="proxy steps (default: ProxyConfig's)")
    parser.add_argument("--speed-steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--skip-raccoon", action="store_true")
    parser.add_argument("--json", default="bench_proxy.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
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
        task = prepare_task(DataConfig(annotations=str(folder / "raccoon.json"), images=str(images)),
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
