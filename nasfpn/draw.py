"""Draw one cell of a genotype as a paper-style figure (levels as rows, nodes left to right).

The picture is drawn from :meth:`Genotype.spelled_out` and shows only its live nodes, so the
``unused: sum`` rule appears as explicit nodes. A ``recursion`` (DetectoRS' RFP) is a dashed
feedback arrow under the cell, from the fed outputs back to the inputs, labelled with it.
Rendering uses matplotlib's Agg canvas on a private :class:`~matplotlib.figure.Figure` (no
pyplot state, no display).
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.path import Path as MplPath
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch, Patch

from .genotype import Genotype
from .vocabulary import COMBINES, DOWNSAMPLES, EXTRA_OPS, LATERALS, OPS

FORMATS = (".png", ".svg")
UP, DOWN, SAME = "#1f6fb4", "#c8372d", "#555555"

# Layout, in inches (the axes have equal aspect: one data unit is one inch).
COL, ROW = 1.55, 1.0              # column and row spacing
NODE_W, NODE_H = 0.64, 0.25       # half sizes of a node box
OUT_W, OUT_H = 0.40, 0.20         # half sizes of an output box
IN_R = 0.21                       # radius of a cell-input circle
RAW_X, RAW_DY = -0.6, 0.36        # where a raw backbone input (C3..) stands: left of and above its P
RAW_FC, RAW_EC = "#e4f2df", "#3d6b35"
MIN_WIDTH = 9.0                   # inches
LANE = 0.42                       # offset of a lane along a row
RADS = (0.06, -0.06, 0.1, -0.1, 0.15, -0.15, 0.2, -0.2, 0.3, -0.3, 0.45, -0.45)
FEEDBACK, FEEDBACK_ROOM = "#7b3fa0", 0.7   # the recursion's arrow, and the inches under the cell for it


def draw_genotype(genotype: Genotype, path: str | Path, title: str | None = None) -> Path:
    """Draw one cell of ``genotype`` to ``path`` (``.png`` at 150 dpi or ``.svg``); return the path.

    Raises:
        ValueError: if the suffix of ``path`` is not ``.png`` or ``.svg``.
        GenotypeError: if the genotype is invalid.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"cannot draw to {str(path)!r}: unsupported suffix {path.suffix!r}; "
                         f"use one of {list(FORMATS)}")
    g = genotype.spelled_out()
    live = sorted(g.live_nodes())
    read = {n for i in live for n in g.nodes[i].inputs}
    raw = [(name, level) for name, level in zip(g.raw_inputs, g.backbone_levels) if name in read]
    shift = -RAW_X if raw else 0.0             # the row labels move left to make room for them
    rows = list(g.levels)                      # extra levels made after the cell get a row too
    row_y = {level: i * ROW for i, level in enumerate(rows)}
    x_out = (len(live) + 1) * COL

    # Shapes: name -> (x, y, half width, half height); cell inputs, live nodes, outputs.
    boxes: dict[str, tuple[float, float, float, float]] = {}
    for name, level in zip(g.cell_inputs, g.cell_levels):
        boxes[name] = (0.0, row_y[level], IN_R, IN_R)
    for name, level in raw:
        boxes[name] = (RAW_X, row_y[level] + RAW_DY, IN_R, IN_R)
    for pos, i in enumerate(live):
        boxes[f"n{i}"] = ((pos + 1) * COL, row_y[g.nodes[i].level], NODE_W, NODE_H)
    for level in rows:
        boxes[f"out{level}"] = (x_out, row_y[level], OUT_W, OUT_H)

    x_lo, x_hi = -1.35 - shift, x_out + OUT_W + 0.25
    pad = max(0.0, MIN_WIDTH - (x_hi - x_lo)) / 2     # room for the subtitle and the legend
    x_lo, x_hi = x_lo - pad, x_hi + pad
    y_cell, y_hi = -0.75, row_y[rows[-1]] + 0.75      # the edges stay above y_cell
    y_lo = y_cell - (FEEDBACK_ROOM if g.recursion is not None else 0.0)
    top, bottom = 0.85, 0.45                   # inches for the title and the legend
    width, height = x_hi - x_lo, y_hi - y_lo + top + bottom
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.0, bottom / height, 1.0, (y_hi - y_lo) / height))
    ax.set_xlim(x_lo, x_hi)
    ax.set_ylim(y_lo, y_hi)
    ax.set_axis_off()

    for level in rows:
        y = row_y[level]
        ax.axhline(y, color="#e6e6e6", lw=0.8, zorder=0)
        ax.text(-1.23 - shift, y + 0.05, f"P{level}", ha="left", va="bottom", fontsize=11,
                fontweight="bold", color="#444444")
        ax.text(-1.23 - shift, y - 0.02, f"stride {2 ** level}", ha="left", va="top", fontsize=6.5,
                color="#777777")

    patches: dict[str, object] = {}
    for name, level in zip(g.cell_inputs, g.cell_levels):
        x, y, _, _ = boxes[name]
        patches[name] = ax.add_patch(Circle((x, y), IN_R, fc="#efefef", ec="#444444", lw=1.0, zorder=3))
        ax.text(x, y, name, ha="center", va="center", fontsize=8, zorder=4)
    for name, level in raw:  # the backbone's own features, at its channels
        x, y, _, _ = boxes[name]
        patches[name] = ax.add_patch(Circle((x, y), IN_R, fc=RAW_FC, ec=RAW_EC, lw=1.0, zorder=3))
        ax.text(x, y, name, ha="center", va="center", fontsize=8, zorder=4)
    outputs = set(g.outputs)
    for i in live:
        name, node = f"n{i}", g.nodes[i]
        x, y, w, h = boxes[name]
        patches[name] = ax.add_patch(FancyBboxPatch(
            (x - w, y - h), 2 * w, 2 * h, boxstyle="round,pad=0,rounding_size=0.06",
            fc="#dce8f7" if OPS[node.op].layer or OPS[node.op].reads_backbone else "#ffffff", ec="#2d4d7a",
            lw=1.6 if name in outputs else 0.9, zorder=3))
        ax.text(x, y + 0.07, name, ha="center", va="center", fontsize=8, fontweight="bold", zorder=4)
        ax.text(x, y - 0.10, f"{COMBINES[node.combine].label} · {OPS[node.op].label}", ha="center",
                va="center", fontsize=6.5, zorder=4)
    extra = set(g.levels) - set(g.cell_levels)
    for level in rows:
        x, y, w, h = boxes[f"out{level}"]
        patches[f"out{level}"] = ax.add_patch(FancyBboxPatch(
            (x - w, y - h), 2 * w, 2 * h, boxstyle="round,pad=0,rounding_size=0.06", fc="#fdf1d8",
            ec="#8a6d1f", lw=1.0, ls="--" if level in extra else "-", zorder=3))
        ax.text(x, y, f"P{level} out", ha="center", va="center", fontsize=7.5, zorder=4)

    # Edges: (source, target, colour, line style, width); routed shortest first, each avoiding
    # the shapes, the other rows and the curves already placed.
    edges: list[tuple[str, str, str, str, float]] = []
    for i in live:
        node = g.nodes[i]
        for src in node.inputs:
            src_level = g.level_of(src)
            color = UP if src_level > node.level else DOWN if src_level < node.level else SAME
            edges.append((src, f"n{i}", color, "-", 1.1))
    for level, name in zip(g.cell_levels, g.outputs):
        edges.append((name, f"out{level}", "#8a6d1f", "-", 0.9))
    for k, level in enumerate(g.extra_levels):
        if level in extra:
            edges.append((f"out{level - 1}", f"out{level}", "#8a6d1f", "--", 0.9))
            x, y, w, _ = boxes[f"out{level}"]
            ax.text(x + w + 0.04, y - ROW / 2, EXTRA_OPS[g.extra.ops[k]].label, ha="left",
                    va="center", fontsize=6.5, color="#8a6d1f", rotation=90)
    placed: set[tuple[int, int]] = set()
    for src, dst, color, style, lw in sorted(edges, key=lambda e: _length(boxes, e[0], e[1])):
        route = _route(boxes, src, dst, list(row_y.values()), (y_cell + 0.15, y_hi - 0.15), placed)
        where = ({"path": route} if isinstance(route, MplPath) else
                 {"posA": boxes[src][:2], "posB": boxes[dst][:2], "patchA": patches[src],
                  "patchB": patches[dst], "shrinkA": 1.5, "shrinkB": 1.5, "connectionstyle": route})
        ax.add_patch(FancyArrowPatch(**where, arrowstyle="-|>", mutation_scale=9, color=color, ls=style,
                                     lw=lw, zorder=2, alpha=0.9))

    if g.recursion is not None:
        _draw_feedback(ax, g, boxes, y_cell - FEEDBACK_ROOM / 2)

    heading = title or genotype.name or "neck"
    if genotype.repeats > 1:
        heading += f"  × {genotype.repeats}"
    fig.text(0.5, 1 - 0.28 / height, heading, ha="center", va="center", fontsize=13, fontweight="bold")
    fig.text(0.5, 1 - 0.62 / height, _subtitle(g), ha="center", va="center", fontsize=8.5, color="#333333")
    down = DOWNSAMPLES[g.downsample].label
    handles = [Line2D([], [], color=UP, lw=1.4, label="from coarser (nearest upsample)"),
               Line2D([], [], color=DOWN, lw=1.4, label=f"from finer ({down})"),
               Line2D([], [], color=SAME, lw=1.4, label="same level"),
               Patch(fc="#dce8f7", ec="#2d4d7a", label="node with op"),
               Patch(fc="#ffffff", ec="#2d4d7a", label="merge only")]
    if raw:
        handles.append(Patch(fc=RAW_FC, ec=RAW_EC, label="backbone feature (raw C)"))
    if g.recursion is not None:
        handles.append(Line2D([], [], color=FEEDBACK, lw=1.4, ls="--", label="feedback into the backbone (RFP)"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=7, frameon=False,
               bbox_to_anchor=(0.5, 0.0), handlelength=2.0, columnspacing=1.6)

    path.parent.mkdir(parents=True, exist_ok=True)
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "nasfpn"}):
        fig.savefig(path, format=suffix[1:], dpi=150, facecolor="white")
    return path


def _draw_feedback(ax, g: Genotype, boxes: dict[str, tuple[float, float, float, float]], y: float) -> None:
    """The recursion: a dashed line from each fed output out to a bus right of the outputs, down
    under the cell at ``y``, left and up into the finest cell input, labelled under its run."""
    rec = g.recursion
    x_bus = boxes[f"out{rec.levels[0]}"][0] + OUT_W + 0.14
    for level in rec.levels:
        x, y_out, w, _ = boxes[f"out{level}"]
        ax.plot([x + w, x_bus], [y_out, y_out], color=FEEDBACK, lw=1.1, ls="--", zorder=2)
    x_in, y_in, _, r = boxes[f"P{g.cell_levels[0]}"]
    top = boxes[f"out{rec.levels[-1]}"][1]
    path = MplPath([(x_bus, top), (x_bus, y), (x_in, y), (x_in, y_in - r)],
                   [MplPath.MOVETO, MplPath.LINETO, MplPath.LINETO, MplPath.LINETO])
    ax.add_patch(FancyArrowPatch(path=path, arrowstyle="-|>", mutation_scale=10, color=FEEDBACK, ls="--",
                                 lw=1.3, zorder=2))
    fused = "gated fusion of every level" if rec.fusion == "gate" else f"{rec.fusion} fusion"
    ax.text((x_in + x_bus) / 2, y - 0.06, f"RFP x{rec.steps}: {rec.feedback.upper()} on "
            f"{', '.join(f'P{lv}' for lv in rec.levels)} → rfp_conv → backbone "
            f"{', '.join(f'C{lv}' for lv in rec.levels)} ({rec.enters.replace('_', ' ')}), run again; "
            f"the same neck; {fused}", ha="center", va="top", fontsize=7, color=FEEDBACK)


def _subtitle(g: Genotype) -> str:
    parts = [f"lateral: {LATERALS[g.lateral].label}"]
    if g.extra.ops:
        names = ", ".join(f"P{level}" for level in g.extra_levels)
        top = g.backbone_levels[-1]
        source = {"backbone": f"backbone C{top}", "lateral": f"P{top} input",
                  "output": f"P{top} output"}.get(g.extra.source, g.extra.source)
        parts.append(f"extra {names}: {', '.join(g.extra.ops)} from {source}")
    if any(OPS[g.nodes[i].op].reads_activation for i in g.live_nodes()):
        parts.append(f"activation: {g.activation}")
    return "   ·   ".join(parts)


def _length(boxes: dict[str, tuple[float, float, float, float]], src: str, dst: str) -> float:
    return abs(boxes[dst][0] - boxes[src][0]) + abs(boxes[dst][1] - boxes[src][1])


def _cell(x: float, y: float) -> tuple[int, int]:
    return round(x * 10), round(y * 10)


def _route(boxes: dict[str, tuple[float, float, float, float]], src: str, dst: str,
           rows: list[float], span: tuple[float, float], placed: set[tuple[int, int]]) -> str | MplPath:
    """The connection style whose curve crosses the fewest other shapes, stays out of the rows it
    does not join, inside ``span`` (y) and off the curves in ``placed`` (0.1-inch grid cells,
    which it extends): an arc3 curve (rad among :data:`RADS`), or for a long edge along one row
    a rounded lane just above or below the row when no gentle curve clears the boxes on it."""
    (x0, y0), (x2, y2) = boxes[src][:2], boxes[dst][:2]
    cx, cy = (x0 + x2) / 2, (y0 + y2) / 2
    others = [y for y in rows if y < min(y0, y2) - 1e-6 or y > max(y0, y2) + 1e-6]
    ts = [k / 60 for k in range(1, 60)]
    candidates = []
    for rad in RADS:
        # matplotlib's arc3: control point at the midpoint plus rad * (dy, -dx).
        qx, qy = cx + rad * (y2 - y0), cy - rad * (x2 - x0)
        points = [((1 - t) ** 2 * x0 + 2 * (1 - t) * t * qx + t * t * x2,
                   (1 - t) ** 2 * y0 + 2 * (1 - t) * t * qy + t * t * y2) for t in ts]
        candidates.append((f"arc3,rad={rad}", points, 0.3 * abs(rad) * _length(boxes, src, dst)))
    if y0 == y2 and abs(x2 - x0) > 1.5 * COL:
        for lane in (LANE, -LANE, 1.3 * LANE, -1.3 * LANE):
            y, step, r = y0 + lane, (1 if x2 > x0 else -1) * 0.2, 0.02 if lane > 0 else -0.02
            start, end = y0 + math.copysign(boxes[src][3], lane), y2 + math.copysign(boxes[dst][3], lane)
            lane_path = MplPath([(x0, start), (x0, y), (x0 + step, y), (x2 - step, y), (x2, y), (x2, end + r)],
                                [MplPath.MOVETO, MplPath.CURVE3, MplPath.CURVE3, MplPath.LINETO,
                                 MplPath.CURVE3, MplPath.CURVE3])
            candidates.append((lane_path, [(x0 + t * (x2 - x0), y) for t in ts], 0.8 + abs(lane)))
    best_cost, best, best_points = float("inf"), candidates[0][0], []
    for style, points, base in candidates:
        hits = {name for px, py in points for name, (bx, by, bw, bh) in boxes.items()
                if name not in (src, dst) and abs(px - bx) < bw + 0.07 and abs(py - by) < bh + 0.07}
        astray = sum(any(abs(py - y) < 0.45 for y in others) for _, py in points) / len(points)
        outside = sum(not span[0] < py < span[1] for _, py in points)
        crowded = sum(_cell(px, py) in placed for px, py in points[9:-9]) / len(points)
        cost = 10 * (len(hits) + outside) + 4 * astray + 3 * crowded + base
        if cost < best_cost:
            best_cost, best, best_points = cost, style, points
    placed.update(_cell(px, py) for px, py in best_points)
    return best
