"""The experiment folder's report, rebuilt from the ledger alone (``nasfpn report DIR``).

Writes ``trials.csv``, ``leaderboard.md``, ``best.yaml``, ``best_neck.py``, ``plots/reward.png``
(reward over trials, running best, baselines as lines), ``plots/ap_vs_macs.png`` (with the
Pareto front) and ``drawings/`` of the best topology and the baselines. When a baseline is the
best of the run, the best searched cell gets the same files as ``best_searched*``.
"""
from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path
from typing import Any, Dict, List

from ..genotype import Genotype, save_genotype
from .ledger import Ledger

log = logging.getLogger(__name__)
# How far seeds alone moved one neck's proxy AP on the built-in data (BiFPN 0.290 vs 0.309,
# scripts/bench_proxy.py): a one-seed gap smaller than this is not a result.
SEED_NOISE_AP = 0.02
COLUMNS = ("trial", "name", "hash", "status", "reward", "ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large",
           "params", "macs", "steps", "seconds", "baseline", "attempts", "error")


def build_report(folder: str | Path) -> Path:
    """Write every report file into ``folder`` from its ledger; return the leaderboard's path."""
    folder = Path(folder)
    ledger = Ledger(folder / "ledger.jsonl")
    if not len(ledger):
        raise ValueError(f"{folder}: the ledger has no finished trial yet")
    meta = json.loads((folder / "experiment.json").read_text()) if (folder / "experiment.json").is_file() else {}
    entries = list(ledger)
    _write_csv(folder / "trials.csv", entries)
    finished = [e for e in entries if e["status"] == "ok"] or [e for e in entries if e["status"] != "failed"]
    best = max(finished, key=lambda e: e["reward"]) if finished else None
    searched = [e for e in finished if not e.get("baseline")]
    best_searched = max(searched, key=lambda e: e["reward"]) if searched else None
    if best_searched is best:
        best_searched = None
    for stem, entry in (("best", best), ("best_searched", best_searched)):
        _write_best(folder, stem, entry, meta)
    _plots(folder / "plots", entries)
    _drawings(folder / "drawings", entries, best, best_searched)
    path = folder / "leaderboard.md"
    path.write_text(_leaderboard(entries, best, meta, best_searched))
    return path


def _write_best(folder: Path, stem: str, entry: Dict[str, Any] | None, meta: Dict[str, Any]) -> None:
    """``{stem}.yaml`` and ``{stem}_neck.py`` of ``entry``; stale ones go when there is none."""
    yaml_path, module_path = folder / f"{stem}.yaml", folder / f"{stem}_neck.py"
    if entry is None:
        for path in (yaml_path, module_path, folder / "drawings" / f"{stem}.png"):
            path.unlink(missing_ok=True)
        return
    genotype = Genotype.from_dict(entry["genotype"])
    save_genotype(genotype, yaml_path)
    channels = {int(k): v for k, v in meta.get("channels", {}).items()}
    if channels:
        from ..export import export_neck
        export_neck(genotype, channels, module_path, meta.get("width"))


def _write_csv(path: Path, entries: List[Dict[str, Any]]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for e in entries:
            writer.writerow({**e, "name": _label(e)})
    tmp.replace(path)


def _label(entry: Dict[str, Any]) -> str:
    return entry.get("baseline") or entry["genotype"].get("name") or f"cell-{entry['hash'][:8]}"


def _leaderboard(entries: List[Dict[str, Any]], best: Dict[str, Any] | None, meta: Dict[str, Any],
                 best_searched: Dict[str, Any] | None = None) -> str:
    # Full-recipe results first: a trial stopped early has its AP from fewer steps.
    ranked = sorted((e for e in entries if e["status"] != "failed"),
                    key=lambda e: (e["status"] == "stopped", -e["reward"]))
    failed = [e for e in entries if e["status"] == "failed"]
    lines = [f"# Leaderboard: {meta.get('name', 'search')}", ""]
    budget = meta.get("trials")
    lines.append(f"{len(entries)} trials" + (f" of a budget of {budget}" if budget else "") +
                 f" ({len(failed)} failed, {sum(e['status'] == 'stopped' for e in entries)} stopped early by the "
                 "scheduler: their AP is from fewer steps).")
    if meta.get("recipe"):
        lines += ["", f"Recipe (the same for every neck): {meta['recipe']}"]
    baselines = {e["baseline"]: e for e in ranked if e.get("baseline")}
    searched = [e for e in ranked if not e.get("baseline") and e["status"] == "ok"]
    if searched and "fpn" in baselines:
        top, fpn = searched[0], baselines["fpn"]
        gap = top["ap"] - fpn["ap"]
        verdict = "beats" if gap > 0 else "does not beat"
        caution = (f": a gap of {gap:+.3f} AP, within what seeds alone move one neck (up to {SEED_NOISE_AP} AP "
                   "between two seeds on the built-in data); re-train both with other seeds (`nasfpn train "
                   "--seed N`) before drawing a conclusion" if abs(gap) < SEED_NOISE_AP else "")
        lines += ["", f"Best searched cell `{top['hash'][:12]}` (AP {top['ap']:.3f}) {verdict} the FPN baseline "
                      f"(AP {fpn['ap']:.3f}) under this recipe, one seed each{caution}."]
    lines += ["", "| rank | neck | hash | AP | AP50 | AP_S | AP_M | AP_L | reward | params | GMACs | steps | status |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for rank, e in enumerate(ranked, 1):
        name = f"**{_label(e)}**" if e.get("baseline") else _label(e)
        lines.append(f"| {rank} | {name} | `{e['hash'][:12]}` | {e['ap']:.3f} | {_f(e.get('ap50'))} | "
                     f"{_f(e.get('ap_small'))} | {_f(e.get('ap_medium'))} | {_f(e.get('ap_large'))} | "
                     f"{e['reward']:.3f} | {e.get('params') or 0:,} | {_gmacs(e):.3f} | "
                     f"{e.get('steps', '')} | {e['status']} |")
    if failed:
        lines += ["", "## Failed trials", ""]
        lines += [f"- trial {e['trial']} `{e['hash'][:12]}`: {str(e.get('error'))[:200]}" for e in failed]
    if best is not None:
        lines += ["", f"Best: `{best['hash'][:12]}` ({_label(best)}), `best.yaml`, `best_neck.py`, "
                      "`drawings/best.png`. Plots in `plots/`."]
    if best_searched is not None:
        lines += ["", f"Best searched cell: `{best_searched['hash'][:12]}` (AP {best_searched['ap']:.3f}), "
                      "`best_searched.yaml`, `best_searched_neck.py`, `drawings/best_searched.png`."]
    return "\n".join(lines) + "\n"


def _f(value: Any) -> str:
    return "-" if value is None or (isinstance(value, float) and (math.isnan(value) or value < 0)) else f"{value:.3f}"


def _plots(folder: Path, entries: List[Dict[str, Any]]) -> None:
    from matplotlib.figure import Figure

    folder.mkdir(parents=True, exist_ok=True)
    ok = [e for e in entries if e["status"] != "failed"]
    searched = [e for e in ok if not e.get("baseline")]
    fig = Figure(figsize=(8, 4.5))
    ax = fig.add_subplot()
    by_controller: Dict[str, List[Dict[str, Any]]] = {}
    for e in searched:
        by_controller.setdefault(e.get("controller", "search"), []).append(e)
    for name, runs in by_controller.items():
        ax.scatter([e["trial"] for e in runs], [e["reward"] for e in runs], s=18, label=f"{name} trials")
        best, xs, ys = -math.inf, [], []
        for e in runs:
            best = max(best, e["reward"])
            xs.append(e["trial"])
            ys.append(best)
        ax.step(xs, ys, where="post", label=f"{name} best so far")
    for i, e in enumerate(e for e in ok if e.get("baseline")):
        ax.axhline(e["reward"], linestyle="--", linewidth=1, color=f"C{i + 3}", label=f"{e['baseline']} (baseline)")
    ax.set_xlabel("trial")
    ax.set_ylabel("reward (proxy AP)")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(folder / "reward.png", dpi=120)

    fig = Figure(figsize=(6.5, 4.5))
    ax = fig.add_subplot()
    points = sorted(ok, key=_gmacs)
    ax.scatter([_gmacs(e) for e in searched], [e["ap"] for e in searched], s=18, label="searched")
    for e in ok:
        if e.get("baseline"):
            ax.scatter([_gmacs(e)], [e["ap"]], marker="s", s=36, color="black")
            ax.annotate(e["baseline"], (_gmacs(e), e["ap"]), fontsize=8, xytext=(4, 4), textcoords="offset points")
    front, best = [], -math.inf
    for e in points:  # Pareto front: no cheaper neck scores higher
        if e["ap"] > best:
            front.append(e)
            best = e["ap"]
    ax.step([_gmacs(e) for e in front], [e["ap"] for e in front], where="post", color="C3", label="Pareto front")
    ax.set_xlabel("neck GMACs at the proxy size")
    ax.set_ylabel("AP")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(folder / "ap_vs_macs.png", dpi=120)


def _gmacs(entry: Dict[str, Any]) -> float:
    return (entry.get("macs") or 0) / 1e9


def _drawings(folder: Path, entries: List[Dict[str, Any]], best: Dict[str, Any] | None,
              best_searched: Dict[str, Any] | None) -> None:
    from ..draw import draw_genotype

    folder.mkdir(parents=True, exist_ok=True)
    for stem, entry in (("best", best), ("best searched", best_searched)):
        if entry is not None:
            draw_genotype(Genotype.from_dict(entry["genotype"]), folder / f"{stem.replace(' ', '_')}.png",
                          title=f"{stem}: {_label(entry)} (AP {entry['ap']:.3f})")
    for e in entries:
        if e.get("baseline") and e["status"] != "failed":
            draw_genotype(Genotype.from_dict(e["genotype"]), folder / f"{e['baseline']}.png")
