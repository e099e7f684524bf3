"""Benchmark: our FPN genotype against torchvision's FPN, and the cost of every reference neck.

Times forward + backward of ``build_neck(load_genotype("fpn"))`` and of
``torchvision.ops.FeaturePyramidNetwork(..., LastLevelP6P7(256, 256))`` on the same ResNet-50
shaped inputs, alternating the two so slow bursts of the machine hit both, and prints the
median of each and their ratio (target: ours <= 1.05x torchvision). Then prints parameters and
multiply-adds of every reference neck. Writes everything to a JSON file.

    python scripts/bench_necks.py [--image-size 512] [--batch 2] [--repeats 30] [--json bench_necks.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections import OrderedDict

import torch
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

import nasfpn
from nasfpn.neck import example_inputs
from nasfpn.profile import neck_cost

RESNET50 = {3: 512, 4: 1024, 5: 2048}
EFFICIENTNET_B0 = {3: 40, 4: 112, 5: 320}


def step_time(neck: torch.nn.Module, x: "OrderedDict[str, torch.Tensor]") -> float:
    start = time.perf_counter()
    out = neck(x)
    sum(t.float().mean() for t in out.values()).backward()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", default="bench_necks.json")
    args = parser.parse_args()
    torch.manual_seed(0)

    ours = nasfpn.build_neck(nasfpn.load_genotype("fpn"), RESNET50, 256).train()
    theirs = FeaturePyramidNetwork([512, 1024, 2048], 256, extra_blocks=LastLevelP6P7(256, 256)).train()
    x = example_inputs(RESNET50, args.image_size, args.batch)
    times: dict[str, list[float]] = {"nasfpn": [], "torchvision": []}
    for i in range(args.warmup + args.repeats):
        pair = [("nasfpn", ours), ("torchvision", theirs)]
        for name, neck in pair if i % 2 == 0 else pair[::-1]:
            neck.zero_grad(set_to_none=True)
            seconds = step_time(neck, x)
            if i >= args.warmup:
                times[name].append(seconds)
    medians = {name: statistics.median(t) for name, t in times.items()}
    ratio = medians["nasfpn"] / medians["torchvision"]

    print(f"FPN forward+backward, ResNet-50 C3-C5 of a {args.image_size}px image, batch {args.batch}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"{'implementation':16s} {'median ms':>10s} {'min ms':>8s} {'max ms':>8s}")
    for name, t in times.items():
        print(f"{name:16s} {1000 * medians[name]:10.1f} {1000 * min(t):8.1f} {1000 * max(t):8.1f}")
    print(f"ratio ours / torchvision: {ratio:.3f} (target <= 1.05)")

    rows = []
    for name in nasfpn.reference_names():
        genotype = nasfpn.load_genotype(name)
        cost = neck_cost(genotype, RESNET50, args.image_size)
        rows.append({"neck": name, "backbone": "resnet50", "repeats": genotype.repeats, "width": genotype.width, **cost})
    # BiFPN on its own backbone's channels: the number effdet's D0 reports (194,361 parameters).
    genotype = nasfpn.load_genotype("bifpn")
    cost = neck_cost(genotype, EFFICIENTNET_B0, args.image_size)
    rows.append({"neck": "bifpn", "backbone": "efficientnet_b0", "repeats": genotype.repeats,
                 "width": genotype.width, **cost})
    print(f"\nreference necks, {args.image_size}x{args.image_size} input (multiply-adds of convolutions)")
    print(f"{'neck':8s} {'backbone C3-C5':16s} {'repeats':>7s} {'width':>6s} {'params':>12s} {'GMACs':>8s}")
    for r in rows:
        print(f"{r['neck']:8s} {r['backbone']:16s} {r['repeats']:7d} {r['width']:6d} {r['params']:12,d} "
              f"{r['macs'] / 1e9:8.2f}")

    result = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "image_size": args.image_size, "batch": args.batch,
              "repeats": args.repeats, "seconds": times, "median_seconds": medians, "ratio": ratio,
              "references": rows}
    with open(args.json, "w") as f:
        json.dump(result, f, indent=1)
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
