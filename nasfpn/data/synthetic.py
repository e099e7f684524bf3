"""The built-in data set: synthetic shapes, written as real COCO JSON + PNG files.

Six classes told apart by shape only: ``circle``, ``square``, ``triangle``, ``cross``, ``ring``
(a circle with a hole: the inside matters) and ``star``. Each object has a random colour and
fill (flat, striped, noisy or gradient) drawn independently of its class, a random rotation and
a slight aspect jitter. Objects are drawn 40% small, 40% medium and 20% large by COCO's buckets
(box sides of 10-30, 38-90 and 104-176 pixels at 256 px, scaled with ``image_size``), 3-12 an
image, before the spots below.

Distractors in the same colours and fills, none of them a class: lumpy blobs, long ellipses and
bars, open arcs, lines and scribbles; some are drawn over the objects. Backgrounds are gradients,
colour blotches and faint stripes; the whole image gets sensor-like noise and sometimes a blur.

Context: every object at least ``SPOT_PARENT_MIN`` wide carries 2-4 *spots*, small discs lying
wholly on it and annotated with its class. A spot looks the same on any object, so its class is
not in its own pixels but in the object around it: a detector must bring coarse context down to
the fine levels (FPN's top-down path) to name it, as one names a ball by the racket it sits on.
With spots, about 60% of the boxes are small, 26% medium and 12% large. Version 1 had no spots:
there a shape's class was a local cue that C3 already saw, and a neck with no top-down path
ranked above FPN (see the issue notes); with spots (and the longer backbone warm-up) FPN beats it.

Occlusion: objects overlap (a placement is retried if it would leave an earlier object less than
half visible) and may run off the image edge. Each object's box is the extent of its *visible*
pixels, taken from a per-object label map; an object less than ``VISIBLE_MIN`` visible is left
out of the annotations, and no spot is drawn where it would leave its object less visible.

The files are made once per ``(version, revision, num_images, image_size, seed)`` into a folder
of the cache (``$NASFPN_CACHE`` or ``~/.cache/nasfpn``), written in a temporary folder and renamed
into place, so an interrupted run leaves nothing half-written. Image ``i`` is drawn from its own
generator seeded by ``(VERSION, seed, i)``: the same arguments give the same bytes. ``REVISION``
counts fixes that leave the default set's bytes as they were but may change other sets (revision
1: spots never hide their object; the default 800 images came out byte-identical): it names the
folder, so an older cached set is not reused, but does not seed the drawing, so the default set's
warm-up and feature caches stay valid.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

log = logging.getLogger(__name__)

VERSION = 2
REVISION = 1
CLASSES = ("circle", "square", "triangle", "cross", "ring", "star")
SIZE_MIX = ((0.4, 10, 30), (0.4, 38, 90), (0.2, 104, 176))   # (share, min side, max side) at 256 px
VISIBLE_MIN = 0.4         # an object less visible than this is not annotated
PLACE_MIN_VISIBLE = 0.5   # a new object may not leave an earlier one less visible than this
OBJECTS = (3, 12)
MIN_CONTRAST = 80.0       # RGB distance between an object's colour and the mean colour beneath it
SPOTS = (2, 4)            # spots on each object at least SPOT_PARENT_MIN wide (at 256 px)
SPOT_PARENT_MIN = 90
SPOT_SIDE = (10, 22)


def default_cache_dir() -> Path:
    """``$NASFPN_CACHE``, or ``~/.cache/nasfpn``."""
    return Path(os.environ.get("NASFPN_CACHE") or Path.home() / ".cache" / "nasfpn")


def synthetic_dataset(root: str | Path | None = None, *, num_images: int = 800, image_size: int = 256,
                      seed: int = 0) -> tuple[Path, Path]:
    """The built-in data set, generated into the cache if it is not there yet.

    Args:
        root: the cache folder (default :func:`default_cache_dir`); the set lies in a subfolder
            named ``synthetic-v{VERSION}r{REVISION}-n{num_images}-s{image_size}-seed{seed}``.
        num_images: how many images.
        image_size: their side in pixels (square images; object sizes scale with it).
        seed: the seed; the same arguments always give the same files.

    Returns:
        ``(annotations_json, images_dir)``.

    Raises:
        ValueError: ``num_images < 1`` or ``image_size < 32``.
    """
    for name, value, low in (("num_images", num_images, 1), ("image_size", image_size, 32)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    root = Path(root) if root is not None else default_cache_dir()
    folder = root / f"synthetic-v{VERSION}r{REVISION}-n{num_images}-s{image_size}-seed{seed}"
    annotations, images = folder / "annotations.json", folder / "images"
    if annotations.is_file():
        return annotations, images
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=root))
    try:
        tmp.chmod(0o755)   # mkdtemp's 0700 would otherwise stay on the finished folder
        start = time.perf_counter()
        write_synthetic(tmp, num_images=num_images, image_size=image_size, seed=seed)
        if folder.exists() and not annotations.is_file():   # left by something else: replace it
            shutil.rmtree(folder, ignore_errors=True)
        try:
            os.rename(tmp, folder)
        except OSError:
            if not annotations.is_file():   # not a concurrent writer finishing first
                raise
        log.info("synthetic data set: %d images of %d px in %.1f s -> %s", num_images, image_size,
                 time.perf_counter() - start, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return annotations, images


def write_synthetic(folder: Path, *, num_images: int, image_size: int, seed: int) -> None:
    """Write ``images/*.png`` and then ``annotations.json`` into ``folder`` (no caching, no rename)."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(num_images):
        rng = np.random.default_rng([VERSION, seed, index])
        pixels, objects = draw_image(rng, image_size)
        image_id, file_name = index + 1, f"{index + 1:06d}.png"
        Image.fromarray(pixels).save(folder / "images" / file_name, compress_level=1)
        images.append({"id": image_id, "file_name": file_name, "width": image_size, "height": image_size,
                       "license": 1})
        for label, (x, y, w, h) in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": label + 1,
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
    coco = {"info": {"description": "nasfpn built-in synthetic shapes", "version": f"v{VERSION}", "revision": REVISION,
                     "num_images": num_images, "image_size": image_size, "seed": seed},
            "licenses": [{"id": 1, "name": "CC0-1.0", "url": "https://creativecommons.org/publicdomain/zero/1.0/"}],
            "images": images, "annotations": annotations,
            "categories": [{"id": k + 1, "name": name, "supercategory": "shape"} for k, name in enumerate(CLASSES)]}
    (folder / "annotations.json").write_text(json.dumps(coco))


def draw_image(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[tuple[int, tuple[int, int, int, int]]]]:
    """One image (uint8 ``[size, size, 3]``) and its objects ``(class index, (x, y, w, h))``."""
    canvas = _background(rng, size)
    for _ in range(rng.integers(3, 11)):
        _paint_distractor(rng, canvas, None)

    labels = np.full((size, size), -1, dtype=np.int32)
    placed: list[tuple[int, int, int, np.ndarray]] = []   # (class, x, y, mask) of drawn objects
    full: list[int] = []
    visible: list[int] = []
    scale = size / 256
    count = rng.integers(OBJECTS[0], OBJECTS[1] + 1)
    specs = []
    for _ in range(count):
        share = rng.random()
        bucket = 0 if share < SIZE_MIX[0][0] else 1 if share < SIZE_MIX[0][0] + SIZE_MIX[1][0] else 2
        low, high = SIZE_MIX[bucket][1] * scale, SIZE_MIX[bucket][2] * scale
        side = max(6.0, math.exp(rng.uniform(math.log(low), math.log(high))))
        specs.append((side * rng.uniform(0.6, 1.4), side, int(rng.integers(len(CLASSES)))))
    specs.sort(key=lambda s: -s[0])   # mostly large first, so small objects are not all buried
    for _, side, label in specs:
        alpha = _object_alpha(rng, CLASSES[label], side)
        mask = alpha >= 0.5
        area = int(mask.sum())
        if area == 0:
            continue
        h, w = alpha.shape
        for _attempt in range(10):
            if rng.random() < 0.75:
                x, y = int(rng.integers(0, max(1, size - w + 1))), int(rng.integers(0, max(1, size - h + 1)))
            else:
                x = int(rng.integers(-int(0.4 * w), max(-int(0.4 * w) + 1, size - int(0.6 * w))))
                y = int(rng.integers(-int(0.4 * h), max(-int(0.4 * h) + 1, size - int(0.6 * h))))
            sub, window = _clip(mask, x, y, size)
            if sub is None or sub.sum() < 0.6 * area:
                continue
            covered = np.bincount(labels[window][sub].clip(-1) + 1, minlength=len(placed) + 1)[1:]
            if all(visible[i] - covered[i] >= PLACE_MIN_VISIBLE * full[i] for i in np.nonzero(covered)[0]):
                break
        else:
            continue
        _paint(rng, canvas, alpha, x, y)
        for i in np.nonzero(covered)[0]:
            visible[i] -= int(covered[i])
        labels[window][sub] = len(placed)
        placed.append((label, x, y, mask))
        full.append(area)
        visible.append(int(sub.sum()))

    for j in range(len(placed)):
        _add_spots(rng, canvas, labels, placed, full, visible, j, scale)

    for _ in range(rng.integers(0, 3)):   # a few distractors over the objects
        _paint_distractor(rng, canvas, labels, over=True)

    objects = []
    for j, (label, x, y, mask) in enumerate(placed):
        h, w = mask.shape
        y0, x0 = max(y, 0), max(x, 0)
        seen = labels[y0:y + h, x0:x + w] == j
        if seen.sum() < VISIBLE_MIN * full[j]:
            continue
        rows, cols = np.nonzero(seen.any(axis=1))[0], np.nonzero(seen.any(axis=0))[0]
        objects.append((label, (x0 + int(cols[0]), y0 + int(rows[0]), int(cols[-1] - cols[0] + 1),
                                int(rows[-1] - rows[0] + 1))))

    if rng.random() < 0.25:
        blurred = Image.fromarray(canvas.clip(0, 255).astype(np.uint8)).filter(
            ImageFilter.GaussianBlur(float(rng.uniform(0.4, 0.9))))
        canvas = np.asarray(blurred, dtype=np.float32)
    noise = rng.standard_normal((size, size, 1), dtype=np.float32) * np.float32(rng.uniform(2, 6))  # luminance
    noisy = canvas + noise
    return noisy.clip(0, 255).astype(np.uint8), objects


def _add_spots(rng: np.random.Generator, canvas: np.ndarray, labels: np.ndarray, placed: list, full: list,
               visible: list, parent: int, scale: float) -> None:
    """Small discs lying wholly on object ``parent``, annotated with its class: alike wherever
    they are, so only the object around them says what they are (context, as for a ball on a
    racket); the top-down path of a pyramid carries it to the fine levels."""
    label, x, y, mask = placed[parent]
    if max(mask.shape) < SPOT_PARENT_MIN * scale:
        return
    size = canvas.shape[0]
    for _ in range(rng.integers(SPOTS[0], SPOTS[1] + 1)):
        side = math.exp(rng.uniform(math.log(SPOT_SIDE[0] * scale), math.log(SPOT_SIDE[1] * scale)))
        alpha = _object_alpha(rng, "circle", side)
        spot = alpha >= 0.5
        h, w = spot.shape
        for _attempt in range(20):
            sx = int(rng.integers(x, x + max(1, mask.shape[1] - w + 1)))
            sy = int(rng.integers(y, y + max(1, mask.shape[0] - h + 1)))
            if sx < 0 or sy < 0 or sx + w > size or sy + h > size:
                continue
            if np.all(labels[sy:sy + h, sx:sx + w][spot] == parent):
                break
        else:
            continue
        if visible[parent] - int(spot.sum()) < VISIBLE_MIN * full[parent]:
            continue   # it would leave the parent unannotated while its spots keep its class
        _paint(rng, canvas, alpha, sx, sy)
        labels[sy:sy + h, sx:sx + w][spot] = len(placed)
        visible[parent] -= int(spot.sum())
        placed.append((label, sx, sy, spot))
        full.append(int(spot.sum()))
        visible.append(int(spot.sum()))


def _clip(mask: np.ndarray, x: int, y: int, size: int):
    """The part of ``mask`` placed at ``(x, y)`` that lies in the image, and the image window it covers."""
    h, w = mask.shape
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, size), min(y + h, size)
    if x1 <= x0 or y1 <= y0:
        return None, None
    return mask[y0 - y:y1 - y, x0 - x:x1 - x], (slice(y0, y1), slice(x0, x1))


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, 3).astype(np.float32)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.ogrid[0:size, 0:size]
    yy, xx = yy.astype(np.float32) / size, xx.astype(np.float32) / size
    angle = rng.uniform(0, 2 * math.pi)
    t = _ramp(xx, yy, angle)
    first, second = _colour(rng), _colour(rng)
    canvas = first + (second - first) * t[..., None]
    cells = int(rng.integers(2, 9))   # colour blotches: a coarse random grid, smoothly upsampled
    blotch = Image.fromarray(rng.uniform(0, 255, (cells, cells, 3)).astype(np.uint8)).resize((size, size),
                                                                                           Image.BICUBIC)
    canvas += (np.asarray(blotch, dtype=np.float32) - canvas) * np.float32(rng.uniform(0.0, 0.6))
    if rng.random() < 0.3:   # faint stripes
        period = rng.uniform(0.02, 0.12)
        a2 = rng.uniform(0, math.pi)
        k = np.float32(2 * math.pi / period)
        stripes = np.sin(xx * (k * np.float32(math.cos(a2))) + yy * (k * np.float32(math.sin(a2))))
        canvas += stripes[..., None] * np.float32(rng.uniform(8, 30))
    return canvas


def _polygon(kind: str, rng: np.random.Generator) -> np.ndarray:
    """Unit-size vertices of an object shape (before rotation)."""
    if kind == "square":
        return np.array([(-1, -1), (1, -1), (1, 1), (-1, 1)], dtype=np.float64)
    if kind == "triangle":
        a = np.deg2rad([90, 210, 330]) + rng.uniform(-0.12, 0.12, 3)
        return np.stack([np.cos(a), np.sin(a)], 1)
    if kind == "cross":
        t = rng.uniform(0.28, 0.42)
        return np.array([(-t, -1), (t, -1), (t, -t), (1, -t), (1, t), (t, t), (t, 1), (-t, 1), (-t, t), (-1, t),
                         (-1, -t), (-t, -t)], dtype=np.float64)
    if kind == "star":
        inner = rng.uniform(0.38, 0.5)
        a = np.arange(10) * math.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.0, inner)
        return np.stack([r * np.cos(a), r * np.sin(a)], 1)
    raise ValueError(kind)


def _raster(points: list[np.ndarray], side: float, rng: np.random.Generator, aspect_jitter: float,
            draw_fn=None) -> np.ndarray:
    """Alpha (float32, antialiased) of polygons ``points`` rotated at random and scaled so the long side is ``side``."""
    angle = rng.uniform(0, 2 * math.pi)
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    stretch = np.array([rng.uniform(1, aspect_jitter), 1.0])
    pts = [(p * stretch) @ rot.T for p in points]
    lo, hi = np.min([p.min(0) for p in pts], 0), np.max([p.max(0) for p in pts], 0)
    k = side / float((hi - lo).max())
    w, h = max(1, int(math.ceil((hi - lo)[0] * k))), max(1, int(math.ceil((hi - lo)[1] * k)))
    ss = 4 if side < 40 else 2
    img = Image.new("L", (w * ss, h * ss), 0)
    draw = ImageDraw.Draw(img)
    for i, p in enumerate(pts):
        q = (p - lo) * k * ss
        draw.polygon([tuple(v) for v in q], fill=0 if i else 255)
    return np.asarray(img.resize((w, h), Image.BOX), dtype=np.float32) / 255


def _object_alpha(rng: np.random.Generator, kind: str, side: float) -> np.ndarray:
    if kind in ("circle", "ring"):
        a = np.linspace(0, 2 * math.pi, 64, endpoint=False)
        circle = np.stack([np.cos(a), np.sin(a)], 1)
        rings = [circle] if kind == "circle" else [circle, circle * rng.uniform(0.45, 0.65)]
        return _raster(rings, side, rng, 1.12)
    return _raster([_polygon(kind, rng)], side, rng, 1.12)


def _distractor_alpha(rng: np.random.Generator, size: int) -> tuple[np.ndarray, int, int]:
    """A non-class shape and where it goes: lumpy blob, long ellipse, bar, arc, line or scribble."""
    kind = rng.choice(["blob", "ellipse", "bar", "arc", "line", "scribble"], p=[0.2, 0.15, 0.15, 0.15, 0.2, 0.15])
    side = math.exp(rng.uniform(math.log(size * 0.05), math.log(size * 0.6)))
    if kind in ("blob", "ellipse", "bar"):
        if kind == "blob":   # a potato: a circle with its radius modulated by 2-, 3- and 4-fold waves
            a = np.linspace(0, 2 * math.pi, 48, endpoint=False)
            r = 1 + sum(rng.uniform(lo, hi) * np.cos(k * a + rng.uniform(0, 2 * math.pi))
                        for k, lo, hi in ((2, 0.15, 0.3), (3, 0.08, 0.2), (4, 0.0, 0.1)))
            points = np.stack([r * np.cos(a), r * np.sin(a)], 1)
        elif kind == "ellipse":
            a = np.linspace(0, 2 * math.pi, 48, endpoint=False)
            points = np.stack([np.cos(a), np.sin(a) / rng.uniform(2.5, 5)], 1)
        else:
            t = 1 / rng.uniform(3, 8)
            points = np.array([(-1, -t), (1, -t), (1, t), (-1, t)])
        alpha = _raster([points], side, rng, 1.0)
    else:
        width = int(rng.integers(1, 4 if kind != "arc" else 6))
        box = int(side) + 2 * width + 2
        ss = 2
        img = Image.new("L", (box * ss, box * ss), 0)
        draw = ImageDraw.Draw(img)
        if kind == "arc":
            start = rng.uniform(0, 360)
            draw.arc([width * ss, width * ss, (box - width) * ss, (box - width) * ss], start,
                     start + rng.uniform(60, 250), fill=255, width=width * ss)
        else:
            n = 2 if kind == "line" else int(rng.integers(3, 6))
            points = rng.uniform(width, box - width, (n, 2)) * ss
            draw.line([tuple(p) for p in points], fill=255, width=width * ss, joint="curve")
        alpha = np.asarray(img.resize((box, box), Image.BOX), dtype=np.float32) / 255
    h, w = alpha.shape
    return alpha, int(rng.integers(-w // 2, size - w // 2)), int(rng.integers(-h // 2, size - h // 2))


def _paint_distractor(rng: np.random.Generator, canvas: np.ndarray, labels: np.ndarray | None,
                      over: bool = False) -> None:
    alpha, x, y = _distractor_alpha(rng, canvas.shape[0])
    if over:   # only thin things go over the objects
        alpha = alpha * (alpha.mean() < 0.25)
    _paint(rng, canvas, alpha, x, y)
    if labels is not None:
        sub, window = _clip(alpha >= 0.5, x, y, canvas.shape[0])
        if sub is not None:
            labels[window][sub] = -2


def _paint(rng: np.random.Generator, canvas: np.ndarray, alpha: np.ndarray, x: int, y: int) -> None:
    """Blend a random fill into ``canvas`` through ``alpha`` placed at ``(x, y)`` (clipped to the image)."""
    size = canvas.shape[0]
    h, w = alpha.shape
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, size), min(y + h, size)
    if x1 <= x0 or y1 <= y0:
        return
    a = alpha[y0 - y:y1 - y, x0 - x:x1 - x, None]
    region = canvas[y0:y1, x0:x1]
    weight = float(a.sum())
    beneath = (region * a).sum((0, 1)) / weight if weight > 0 else region.mean((0, 1))
    colours = [_colour(rng) for _ in range(6)]
    colour = next((c for c in colours if np.linalg.norm(c - beneath) >= MIN_CONTRAST),
                  max(colours, key=lambda c: float(np.linalg.norm(c - beneath))))
    fill = _texture(rng, h, w, colour)[y0 - y:y1 - y, x0 - x:x1 - x]
    region += (fill - region) * a


def _texture(rng: np.random.Generator, h: int, w: int, colour: np.ndarray) -> np.ndarray:
    """A ``[h, w, 3]`` fill around ``colour``: flat, striped, noisy or a gradient."""
    kind = rng.choice(4, p=[0.35, 0.25, 0.2, 0.2])
    if kind == 0:
        return np.broadcast_to(colour, (h, w, 3))
    if kind == 2:
        return colour + rng.standard_normal((h, w, 3), dtype=np.float32) * np.float32(rng.uniform(12, 35))
    other = (colour + rng.uniform(-110, 110, 3)).clip(0, 255).astype(np.float32)
    yy, xx = np.ogrid[0:h, 0:w]
    yy, xx = yy.astype(np.float32), xx.astype(np.float32)
    angle = rng.uniform(0, math.pi)
    if kind == 1:
        period = rng.uniform(3, max(4.0, min(h, w) / 2.5))
        t = ((xx * np.float32(math.cos(angle) / period) + yy * np.float32(math.sin(angle) / period)) % 1.0 < 0.5)
        t = t.astype(np.float32)
    else:
        t = _ramp(xx, yy, angle)
    return colour + (other - colour) * t[..., None]


def _ramp(xx: np.ndarray, yy: np.ndarray, angle: float) -> np.ndarray:
    """0 to 1 across the grid ``xx`` (a row) x ``yy`` (a column) in the direction ``angle``."""
    t = xx * np.float32(math.cos(angle)) + yy * np.float32(math.sin(angle))
    low, high = float(t.min()), float(t.max())
    return (t - np.float32(low)) * np.float32(1 / max(high - low, 1e-6))
