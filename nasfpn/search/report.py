"""The experiment folder's report, rebuilt from the ledger alone (``nasfpn report DIR``).

Writes ``trials.csv``, ``leaderboard.md`` (see :mod:`.leaderboard`), ``best.yaml`` and
``best_neck.py`` (the confirmed winner; the proxy's best before a confirmation has run),
``plots/reward.png`` (reward over trials, running best, baselines as lines),
``plots/ap_vs_macs.png`` (with the Pareto front) and ``drawings/`` of the best topology and the
baselines. When a baseline wins, the best searched cell gets the same files as ``best_searched*``.
"""
from __future__ import annotations

import csv
import io
import logging
import math
from pathlib import Path
from typing import Dict, List, Optional

from ..fsio import atomic_write_text, read_json
from ..genotype import save_genotype
from .confirm import confirmed_table
from .leaderboard import leaderboard
from .ledger import Ledger
from .records import RESULT_KEYS, TrialRecord

log = logging.getLogger(__name__)
COLUMNS = ("trial", "name", "hash", "trained_hash", "stage", "recipe", "seed", "status", "reward", *RESULT_KEYS,
           "baseline", "attempts", "node", "answered_from_ledger", "error")


def build_report(folder: str | Path) -> Path:
    """Write every report file into ``folder`` from its ledger; return the leaderboard's path."""
    folder = Path(folder)
    meta = read_json(folder / "experiment.json") if (folder / "experiment.json").is_file() else {}
    ledger = Ledger(folder / "ledger.jsonl")
    if not len(ledger):
        raise ValueError(f"{folder}: the ledger has no finished trial yet")
    records = list(ledger)
    _write_csv(folder / "trials.csv", records)
    recipe = (meta.get("confirm") or {}).get("recipe")
    confirmed, figures = confirmed_table(ledger, recipe) if recipe else ([], {})
    best, best_searched = _winners(records, confirmed)
    for stem, record in (("best", best), ("best_searched", best_searched)):
        _write_best(folder, stem, record, meta)
    searched = [r for r in records if r.candidate.stage != "confirm"]
    _plots(folder / "plots", searched)
    _drawings(folder / "drawings", searched, best, best_searched)
    path = folder / "leaderboard.md"
    atomic_write_text(path, leaderboard(records, meta, confirmed, figures, best, best_searched))
    return path


def _winners(records: List[TrialRecord], confirmed) -> tuple[Optional[TrialRecord], Optional[TrialRecord]]:
    """The best neck and, when that is a baseline, the best searched one: by confirmed mean when
    the confirmation has run, else by proxy reward (full-recipe results first)."""
    if confirmed:
        best = confirmed[0].records[-1]
        searched = [n for n in confirmed if not n.baseline]
        best_searched = searched[0].records[-1] if searched and confirmed[0].baseline else None
        return best, best_searched
    proxy = [r for r in records if r.candidate.stage != "confirm" and r.status == "ok"] or \
        [r for r in records if r.candidate.stage != "confirm" and r.status != "failed"]
    best = max(proxy, key=lambda r: r.reward, default=None)
    searched = [r for r in proxy if not r.candidate.baseline]
    best_searched = max(searched, key=lambda r: r.reward, default=None)
    return best, (None if best_searched is best else best_searched)


def _write_best(folder: Path, stem: str, record: Optional[TrialRecord], meta: Dict) -> None:
    """``{stem}.yaml`` and ``{stem}_neck.py`` of ``record``; stale ones go when there is none."""
    yaml_path, module_path = folder / f"{stem}.yaml", folder / f"{stem}_neck.py"
    if record is None:
        for path in (yaml_path, module_path, folder / "drawings" / f"{stem}.png"):
            path.unlink(missing_ok=True)
        return
    genotype = record.candidate.genotype
    save_genotype(genotype, yaml_path)
    channels = {int(k): v for k, v in meta.get("channels", {}).items()}
    if channels:
        from ..export import export_neck
        export_neck(genotype, channels, module_path, meta.get("width"))


def _write_csv(path: Path, records: List[TrialRecord]) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for record in records:
        writer.writerow({**record.to_json(), "name": record.candidate.label})
    atomic_write_text(path, text.getvalue())


def _gmacs(record: TrialRecord) -> float:
    return (record.get("macs") or 0) / 1e9


def _plots(folder: Path, records: List[TrialRecord]) -> None:
    from matplotlib.figure import Figure

    folder.mkdir(parents=True, exist_ok=True)
    ok = [r for r in records if r.status != "failed"]
    searched = [r for r in ok if not r.candidate.baseline]
    fig = Figure(figsize=(8, 4.5))
    ax = fig.add_subplot()
    by_controller: Dict[str, List[TrialRecord]] = {}
    for r in searched:
        by_controller.setdefault(r.controller or "search", []).append(r)
    for name, runs in by_controller.items():
        ax.scatter([r.trial for r in runs], [r.reward for r in runs], s=18, label=f"{name} trials")
        best, xs, ys = -math.inf, [], []
        for r in runs:
            best = max(best, r.reward)
            xs.append(r.trial)
            ys.append(best)
        ax.step(xs, ys, where="post", label=f"{name} best so far")
    for i, r in enumerate(r for r in ok if r.candidate.baseline):
        ax.axhline(r.reward, linestyle="--", linewidth=1, color=f"C{i + 3}",
                   label=f"{r.candidate.baseline} (baseline)")
    ax.set_xlabel("trial")
    ax.set_ylabel("reward (proxy AP)")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(folder / "reward.png", dpi=120)

    fig = Figure(figsize=(6.5, 4.5))
    ax = fig.add_subplot()
    ax.scatter([_gmacs(r) for r in searched], [r.ap for r in searched], s=18, label="searched")
    for r in ok:
        if r.candidate.baseline:
            ax.scatter([_gmacs(r)], [r.ap], marker="s", s=36, color="black")
            ax.annotate(r.candidate.baseline, (_gmacs(r), r.ap), fontsize=8, xytext=(4, 4), textcoords="offset points")
    front, best = [], -math.inf
    for r in sorted(ok, key=_gmacs):  # Pareto front: no cheaper neck scores higher
        if r.ap > best:
            front.append(r)
            best = r.ap
    ax.step([_gmacs(r) for r in front], [r.ap for r in front], where="post", color="C3", label="Pareto front")
    ax.set_xlabel("neck GMACs at the proxy size")
    ax.set_ylabel("AP")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(folder / "ap_vs_macs.png", dpi=120)


def _drawings(folder: Path, records: List[TrialRecord], best: Optional[TrialRecord],
              best_searched: Optional[TrialRecord]) -> None:
    from ..draw import draw_genotype

    folder.mkdir(parents=True, exist_ok=True)
    for stem, record in (("best", best), ("best searched", best_searched)):
        if record is not None:
            draw_genotype(record.candidate.genotype, folder / f"{stem.replace(' ', '_')}.png",
                          title=f"{stem}: {record.candidate.label}")
    for r in records:
        if r.candidate.baseline and r.status != "failed":
            draw_genotype(r.candidate.genotype, folder / f"{r.candidate.baseline}.png")
