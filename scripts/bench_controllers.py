"""Benchmark: how fast each controller learns the toy reward, and how fast it proposes.

Learning: on :class:`nasfpn.controllers.ToyReward` (a hidden target of the space; reward = the
fraction of its free decisions a proposal matches), each controller with its shipped settings
(``controllers/*.yaml``) runs until it reaches the threshold or the sample cap, for several
seeds (target seed = 100 + seed). Two definitions, the same for every controller:

* ``best``: samples (trials handed out) until the best reward so far is >= threshold;
* ``mean``: samples until the mean of the last ``window`` rewards is >= threshold.

The median over seeds is reported, or "> cap" when at least half the seeds did not get there.
Speed: proposals per second of an ask + tell loop with a trivial reward (a seeded uniform
number: the policies update on it), and for the policy controllers the batched sampling rate of
the policy alone (decision sequences with masks, no hashing). One torch thread.

    python scripts/bench_controllers.py [--space nasfpn] [--seeds 5] [--cap 2000] [--json bench_controllers.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time

import torch

from nasfpn.controllers import CONTROLLERS, PolicyController, ToyReward, make_controller
from nasfpn.space import load_space


def samples_to_target(name: str, space, seed: int, cap: int, threshold: float, window: int) -> dict:
    controller = make_controller(space, name, seed=seed)
    reward = ToyReward(space, seed=100 + seed)
    rewards: list[float] = []
    best_at = mean_at = None
    start = time.perf_counter()
    while len(rewards) < cap and (best_at is None or mean_at is None):
        trial_id, genotype = controller.ask()
        rewards.append(reward(genotype))
        controller.tell(trial_id, rewards[-1])
        if best_at is None and rewards[-1] >= threshold:
            best_at = len(rewards)
        if mean_at is None and len(rewards) >= window and statistics.fmean(rewards[-window:]) >= threshold:
            mean_at = len(rewards)
    return {"seed": seed, "best": best_at, "mean": mean_at, "samples": len(rewards),
            "final_mean": statistics.fmean(rewards[-window:]), "seconds": time.perf_counter() - start,
            "duplicates": controller.stats["duplicates"]}


def median_or_cap(values: list[int | None], cap: int) -> int | None:
    """The median, counting a miss as above the cap; ``None`` when the median is a miss."""
    ranked = sorted(cap + 1 if v is None else v for v in values)
    median = statistics.median_low(ranked)
    return None if median > cap else median


def proposals_per_second(name: str, space, count: int) -> float:
    controller = make_controller(space, name, seed=0)
    rng = random.Random(0)
    for _ in range(50):  # warm up
        trial_id, _ = controller.ask()
        controller.tell(trial_id, rng.random())
    start = time.perf_counter()
    for _ in range(count):
        trial_id, _ = controller.ask()
        controller.tell(trial_id, rng.random())
    return count / (time.perf_counter() - start)


def sampling_per_second(name: str, space, batch: int, repeats: int) -> float:
    controller = make_controller(space, name, seed=0)
    assert isinstance(controller, PolicyController)
    controller.policy.sample(space, batch, controller.generator)
    start = time.perf_counter()
    for _ in range(repeats):
        controller.policy.sample(space, batch, controller.generator)
    return batch * repeats / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--space", default="nasfpn")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--cap", type=int, default=2000)
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--window", type=int, default=50)
    parser.add_argument("--speed-count", type=int, default=1000)
    parser.add_argument("--json", default="bench_controllers.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    space = load_space(args.space)
    rows = {}
    for name in CONTROLLERS:
        runs = [samples_to_target(name, space, seed, args.cap, args.threshold, args.window)
                for seed in range(args.seeds)]
        row = {"runs": runs,
               "best_median": median_or_cap([r["best"] for r in runs], args.cap),
               "mean_median": median_or_cap([r["mean"] for r in runs], args.cap),
               "ask_tell_per_s": proposals_per_second(name, space, args.speed_count)}
        if issubclass(CONTROLLERS[name], PolicyController):
            row["policy_sampling_per_s"] = sampling_per_second(name, space, 256, 8)
        rows[name] = row

    def show(value: int | None) -> str:
        return f"> {args.cap}" if value is None else str(value)

    def seeds(values: list[int | None]) -> str:
        return ",".join("-" if v is None else str(v) for v in values)

    print(f"Toy reward on space {args.space!r}: samples to reach {args.threshold} "
          f"(median of {args.seeds} seeds, cap {args.cap}; per seed in brackets, - = not reached)")
    header = f"{'controller':<11}| {'best so far >= 0.9':<34}| {f'mean of last {args.window} >= 0.9':<34}| ask+tell/s"
    print(header)
    print("-" * len(header))
    for name, row in rows.items():
        best = f"{show(row['best_median'])} [{seeds([r['best'] for r in row['runs']])}]"
        mean = f"{show(row['mean_median'])} [{seeds([r['mean'] for r in row['runs']])}]"
        print(f"{name:<11}| {best:<34}| {mean:<34}| {row['ask_tell_per_s']:8.0f}")
    for name, row in rows.items():
        if "policy_sampling_per_s" in row:
            print(f"{name}: batched policy sampling (256 at a time, masks, no hashing): "
                  f"{row['policy_sampling_per_s']:.0f} sequences/s")
    ppo, rand = rows["ppo"]["mean_median"], rows["random"]["mean_median"]
    bound = args.cap + 1 if rand is None else rand
    verdict = ppo is not None and 3 * ppo <= bound
    print(f"target PPO <= 1/3 of random's samples (mean of last {args.window}): "
          f"{'met' if verdict else 'NOT met'} (PPO {show(ppo)}, random {show(rand)})")
    report = {"space": args.space, "threshold": args.threshold, "window": args.window, "cap": args.cap,
              "seeds": args.seeds, "target_met": verdict, "controllers": rows,
              "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
              "threads": torch.get_num_threads()}
    with open(args.json, "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
