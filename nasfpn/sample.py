"""Sample a search space and lay the samples out beside the reference necks: each genotype's
YAML, drawing and exported module, and a table of their cost. No training: this shows what a
space holds and what its points cost before a search spends anything on them."""
from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Mapping

from .draw import draw_genotype
from .export import export_neck
from .genotype import Genotype, load_genotype, reference_names, save_genotype
from .profile import neck_cost
from .space import SearchSpace

log = logging.getLogger(__name__)


def sample_space(space: SearchSpace, count: int, seed: int, out: Path, in_channels: Mapping[int, int],
                 image_size: int = 512, width: int | None = None) -> Path:
    """Write ``count`` samples of ``space`` and the references to ``out``; return the table's path."""
    rng = random.Random(seed)
    entries: list[tuple[str, Genotype]] = [(name, load_genotype(name)) for name in reference_names()]
    seen = {g.hash() for _, g in entries}
    while len(entries) < len(reference_names()) + count:
        genotype = space.decode(space.sample(rng))
        if genotype.hash() in seen:  # never list one topology twice
            continue
        seen.add(genotype.hash())
        entries.append((f"sample-{len(entries) - len(reference_names()):02d}", genotype.replace(name="")))
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for label, genotype in entries:
        folder = out / label
        folder.mkdir(exist_ok=True)
        save_genotype(genotype, folder / "genotype.yaml")
        draw_genotype(genotype, folder / "cell.png", title=genotype.name or label)
        export_neck(genotype, in_channels, folder / "neck.py", width)
        cost = neck_cost(genotype, in_channels, image_size, width)
        rows.append({"label": label, "name": genotype.name, "hash": genotype.hash()[:12],
                     "nodes": len(genotype.canonical().nodes), "repeats": genotype.repeats,
                     "width": width or genotype.width, "in_space": space.contains(genotype), **cost})
        log.info("%s: %s", label, rows[-1])
    (out / "samples.json").write_text(json.dumps(rows, indent=1))
    lines = [f"# {len(rows) - len(reference_names())} samples of space '{space.name}' beside the references",
             "", f"Multiply-adds at {image_size}x{image_size}, backbone channels {list(in_channels.values())}.", "",
             "| genotype | hash | nodes | repeats | width | params | GMACs | in space |",
             "|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: r["macs"]):
        label = f"{r['label']} ({r['name']})" if r["name"] else r["label"]
        lines.append(f"| [{label}]({r['label']}/cell.png) | `{r['hash']}` | {r['nodes']} | {r['repeats']} | "
                     f"{r['width']} | {r['params']:,} | {r['macs'] / 1e9:.2f} | {'yes' if r['in_space'] else 'no'} |")
    table = out / "samples.md"
    table.write_text("\n".join(lines) + "\n")
    return table
