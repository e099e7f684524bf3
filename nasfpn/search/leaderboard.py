"""``leaderboard.md``: the verdict first, then the confirmed table, the proxy ranking, the cost.

The verdict compares the best confirmed searched cell with the best confirmed hand-designed neck
(not with FPN alone), paired by seed, with a 95% interval; before a confirmation has run, the
one-seed proxy ranking says only what it can.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional

from . import stats
from .confirm import ConfirmedNeck
from .records import TrialRecord
from ..data.split import MIN_VAL_IMAGES

# How far seeds alone moved one neck's proxy AP on the built-in data (BiFPN 0.290 vs 0.309,
# scripts/bench_proxy.py): a one-seed gap smaller than this is not a result.
SEED_NOISE_AP = 0.02


def leaderboard(records: List[TrialRecord], meta: Dict[str, Any], confirmed: List[ConfirmedNeck],
                figures: Dict[str, Any], best: Optional[TrialRecord], best_searched: Optional[TrialRecord]) -> str:
    search = [r for r in records if r.candidate.stage != "confirm"]
    confirm = [r for r in records if r.candidate.stage == "confirm"]
    failed = [r for r in records if r.status == "failed"]
    lines = [f"# Leaderboard: {meta.get('name', 'search')}", ""]
    budget = meta.get("trials")
    lines.append(f"{len(search)} search trials" + (f" of a budget of {budget}" if budget else "") +
                 f" ({sum(r.status == 'failed' for r in search)} failed, "
                 f"{sum(r.status == 'stopped' for r in search)} stopped early by the scheduler: their AP is from fewer "
                 f"steps, {sum(r.answered_from_ledger for r in search)} answered from the ledger)"
                 + (f", then {len(confirm)} confirmation trials." if confirm else "."))
    if meta.get("recipe"):
        lines += ["", f"Search recipe (the same for every neck): {meta['recipe']}."]
    confirm_meta = meta.get("confirm") or {}
    if confirmed:
        seeds = ", ".join(str(seed) for seed in figures["seed_list"])
        lines += [f"Confirmation recipe: {confirm_meta.get('text', confirm_meta.get('recipe'))}; proxy seeds {seeds}, "
                  "on the same backbone and cached features."]
        lines += ["", "## Verdict", "", _verdict(confirmed, figures), "", _resolution(figures, meta)]
        lines += _confirmed_table(confirmed, figures)
    else:
        lines += ["", "## Verdict", "", _one_seed_sentence(search, meta)]
    lines += _proxy_table(search)
    lines += _cost(records, meta)
    if failed:
        lines += ["", "## Failed trials", ""]
        lines += [f"- trial {r.trial} `{r.candidate.hash[:12]}` ({r.candidate.stage}, seed {r.candidate.seed}): "
                  f"{str(r.error)[:200]}" for r in failed]
    if best is not None:
        what = "the confirmed winner" if confirmed else "the best of the proxy ranking"
        lines += ["", f"Best: `{best.candidate.hash[:12]}` ({best.candidate.label}, {what}): `best.yaml`, "
                      "`best_neck.py`, `drawings/best.png`. Plots in `plots/`."]
    if best_searched is not None:
        lines += ["", f"Best searched cell: `{best_searched.candidate.hash[:12]}`: `best_searched.yaml`, "
                      "`best_searched_neck.py`, `drawings/best_searched.png`."]
    return "\n".join(lines) + "\n"


def _verdict(confirmed: List[ConfirmedNeck], figures: Dict[str, Any]) -> str:
    baseline: Optional[ConfirmedNeck] = figures.get("best_baseline")
    searched = [n for n in confirmed if not n.baseline]
    if baseline is None:
        return "No baseline was confirmed: there is nothing hand-designed to compare the searched cells with."
    if not searched:
        return (f"No searched cell was confirmed (all failed, or `confirm.top_k` is 0); the best hand-designed neck "
                f"is `{baseline.label}` ({_mean_std(baseline)}).")
    top = searched[0]
    diff = figures["differences"][top.trained_hash]
    return (stats.verdict(diff, top.label, baseline.label) +
            f" Best searched cell {_mean_std(top)}, best hand-designed neck `{baseline.label}` {_mean_std(baseline)}.")


def _resolution(figures: Dict[str, Any], meta: Dict[str, Any]) -> str:
    std, seeds, resolvable = figures["seed_std"], figures["seeds"], figures["resolvable"]
    text = (f"Resolution: the seeds of the confirmed baselines differ by a standard deviation of {_f(std)} AP "
            f"(pooled); with {seeds} seeds a difference smaller than about {_f(resolvable)} AP cannot be told from "
            "seed noise (95%).")
    if figures["tau_necks"] >= 3:
        text += (f" The one-seed proxy AP ranks these necks as the confirmation does with Kendall's tau "
                 f"{figures['kendall_tau']:+.2f} ({figures['tau_necks']} necks; the confirmed mean leaves out the "
                 "proxy's own run).")
    if meta.get("val_images") is not None and meta["val_images"] < MIN_VAL_IMAGES:
        text += f" The validation split has only {meta['val_images']} images: too few to rank necks."
    return text


def _confirmed_table(confirmed: List[ConfirmedNeck], figures: Dict[str, Any]) -> List[str]:
    baseline = figures.get("best_baseline")
    lines = ["", "## Confirmed ranking (mean over seeds)", "",
             f"| rank | neck | trained hash | AP mean ± std | AP per seed | vs `{baseline.label if baseline else '-'}` "
             "(95% interval) | proxy AP (1 seed) | params | GMACs |", "|---|---|---|---|---|---|---|---|---|"]
    for rank, neck in enumerate(confirmed, 1):
        diff = figures["differences"].get(neck.trained_hash)
        versus = "—" if diff is None else f"{diff['mean']:+.3f} [{_signed(diff['low'])}, {_signed(diff['high'])}]"
        last = neck.records[-1]
        per_seed = ", ".join(f"{ap:.3f}" for _, ap in sorted(neck.by_seed.items()))
        name = f"**{neck.label}**" if neck.baseline else neck.label
        lines.append(f"| {rank} | {name} | `{neck.trained_hash[:12]}` | {_mean_std(neck)} | {per_seed} | {versus} | "
                     f"{_f(neck.proxy.ap if neck.proxy else None)} | {last.get('params') or 0:,} | {(last.get('macs') or 0) / 1e9:.3f} |")
    return lines


def _one_seed_sentence(search: List[TrialRecord], meta: Dict[str, Any]) -> str:
    ok = [r for r in search if r.status == "ok"]
    baselines = [r for r in ok if r.candidate.baseline]
    searched = [r for r in ok if not r.candidate.baseline]
    if not baselines or not searched:
        return "Not confirmed over seeds yet, and no full-recipe pair of a searched cell and a baseline to compare."
    top, base = max(searched, key=lambda r: r.reward), max(baselines, key=lambda r: r.reward)
    gap = top.ap - base.ap
    head = (f"Best searched cell `{top.candidate.hash[:12]}` (AP {top.ap:.3f}) against the best baseline, "
            f"`{base.candidate.baseline}` (AP {base.ap:.3f}): {gap:+.3f} AP on one seed each")
    folder = meta.get("name", "DIR")
    if abs(gap) < SEED_NOISE_AP:
        return (head + f", within what seeds alone move one neck (up to {SEED_NOISE_AP} AP between two seeds on the "
                       f"built-in data): a tie until confirmed over seeds (`nasfpn confirm {folder}`).")
    return head + f"; not a verdict until confirmed over seeds (`nasfpn confirm {folder}`)."


def _proxy_table(search: List[TrialRecord]) -> List[str]:
    # Full-recipe results first: a trial stopped early has its AP from fewer steps.
    ranked = sorted((r for r in search if r.status != "failed"), key=lambda r: (r.status == "stopped", -r.reward))
    lines = ["", "## Proxy ranking (search recipe, one seed each)", "",
             "| rank | neck | hash | AP | AP50 | AP_S | AP_M | AP_L | reward | params | GMACs | steps | status |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for rank, r in enumerate(ranked, 1):
        name = f"**{r.candidate.label}**" if r.candidate.baseline else r.candidate.label
        lines.append(f"| {rank} | {name} | `{r.candidate.hash[:12]}` | {r.ap:.3f} | {_f(r.get('ap50'))} | "
                     f"{_f(r.get('ap_small'))} | {_f(r.get('ap_medium'))} | {_f(r.get('ap_large'))} | {r.reward:.3f} | "
                     f"{r.get('params') or 0:,} | {(r.get('macs') or 0) / 1e9:.3f} | {r.get('steps', '')} | "
                     f"{r.status} |")
    return lines


def _cost(records: List[TrialRecord], meta: Dict[str, Any]) -> List[str]:
    trained = sum(r.seconds for r in records)
    wall, slots = meta.get("wall_seconds"), meta.get("concurrent")
    text = f"Proxy training: {trained / 60:.1f} min over {sum(not r.answered_from_ledger for r in records)} trials"
    if wall and slots:
        outside = max(0.0, 1 - trained / (wall * slots))
        text += (f"; the driver ran {wall / 60:.1f} min with {slots} trial slots, so {outside:.0%} of the slots' "
                 "time went to anything but proxy training (Ray start, scheduling, workers rebuilding the task, "
                 "idle slots while a stage waits)")
    return ["", "## Cost", "", text + "."]


def _mean_std(neck: ConfirmedNeck) -> str:
    s = neck.summary
    return f"{s['mean']:.3f} ± {_f(s['std'])}"


def _signed(value: float) -> str:
    return "nan" if value is None or math.isnan(value) else f"{value:+.3f}"


def _f(value: Any) -> str:
    return "-" if value is None or (isinstance(value, float) and (math.isnan(value) or value < 0)) else f"{value:.3f}"
