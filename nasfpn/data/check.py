"""Validate a COCO-format detection data set and summarise it (``nasfpn check-data``).

The checks, in the order they run (and problems are reported in):

1. The file is JSON, an object with ``images``, ``annotations`` and ``categories`` lists, whose
   entries have the fields a detector needs with the right types (``id``, ``file_name``, positive
   integer ``width``/``height``; ``id``, ``image_id``, ``category_id``, ``bbox`` of four finite
   numbers; ``id``, ``name``). A malformed entry stops the check at once.
2. Ids are unique: category ids, then image ids, then annotation ids.
3. Every annotation, in file order: its image and category exist; its box has positive width and
   height and lies inside the image (``OUTSIDE_TOLERANCE`` pixels of overhang are allowed, the
   rounding real annotation tools leave).
4. Every image, by id: the file exists under the image folder, decodes (JPEG at a reduced DCT
   scale, which still reads the whole file), and is as large as its ``width``/``height`` say.

All problems of steps 2-4 are collected; one :class:`DatasetError` is raised whose message is
the first problem, plus how many more there are (its ``problems`` attribute lists them all, and
:func:`format_problems` shows the first ``SHOWN_PROBLEMS`` of them, as ``check-data`` does).

Size buckets are COCO's (small: area < 32², medium: < 96², large: the rest) with the area taken
as the box's ``w * h``, not the ``area`` field (which is the segment's area in COCO itself and
absent or equal to ``w * h`` in box-only data). Crowd annotations (``iscrowd = 1``) are counted
apart and not in the boxes, classes or buckets.
"""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

from PIL import Image

from .coco import DatasetError, read_coco_json

OUTSIDE_TOLERANCE = 1.0
SMALL, MEDIUM = 32 ** 2, 96 ** 2
BUCKETS = ("small", "medium", "large")
SHOWN_PROBLEMS = 10


def size_bucket(width: float, height: float) -> str:
    """COCO's size bucket of a ``width x height`` box."""
    area = width * height
    return "small" if area < SMALL else "medium" if area < MEDIUM else "large"


def check_dataset(annotations: str | Path, images: str | Path, *, decode: bool = True) -> dict:
    """Validate a COCO detection data set; return its summary.

    Args:
        annotations: the COCO JSON file.
        images: the folder the images' ``file_name`` are relative to.
        decode: decode every image (slower, finds truncated files); else only read the header.

    Returns:
        ``{"annotations": path, "images_dir": path, "images": int, "boxes": int, "crowd": int,
        "classes": {name: boxes}, "class_sizes": {name: {bucket: boxes}}, "sizes": {"small",
        "medium", "large": boxes}, "images_without_boxes": int, "warnings": [str]}``.

    Raises:
        DatasetError: the first problem found (see the module docstring), naming the image or
            annotation id, the file and what is wrong; ``err.problems`` lists every problem.
    """
    path, images = Path(annotations), Path(images)
    data = read_coco_json(path)
    if not images.is_dir():
        raise DatasetError(f"image folder not found: {images}")
    _check_entries(data, path)
    problems: list[str] = []

    categories: dict[int, str] = {}
    for cat in data["categories"]:
        if cat["id"] in categories:
            problems.append(f"duplicate category id {cat['id']} ({categories[cat['id']]!r} and {cat['name']!r})")
        else:
            categories[cat["id"]] = cat["name"]
    image_info: dict[int, dict] = {}
    for img in data["images"]:
        if img["id"] in image_info:
            problems.append(f"duplicate image id {img['id']} ({image_info[img['id']]['file_name']} and "
                            f"{img['file_name']})")
        else:
            image_info[img["id"]] = img
    seen_ann: set[int] = set()
    for ann in data["annotations"]:
        if ann["id"] in seen_ann:
            problems.append(f"duplicate annotation id {ann['id']}")
        seen_ann.add(ann["id"])

    names = list(dict.fromkeys(categories.values()))
    classes = {name: 0 for name in names}
    class_sizes = {name: dict.fromkeys(BUCKETS, 0) for name in names}
    sizes = dict.fromkeys(BUCKETS, 0)
    boxed: set[int] = set()
    crowd = 0
    for ann in data["annotations"]:
        where = f"annotation {ann['id']} (image {ann['image_id']})"
        img = image_info.get(ann["image_id"])
        if img is None:
            problems.append(f"annotation {ann['id']}: image id {ann['image_id']} does not exist")
            continue
        where = f"annotation {ann['id']} (image {img['id']}, {img['file_name']})"
        if ann["category_id"] not in categories:
            problems.append(f"{where}: category id {ann['category_id']} does not exist")
            continue
        x, y, w, h = ann["bbox"]
        if not (w > 0 and h > 0):
            problems.append(f"{where}: box [x, y, w, h] = {_fmt(ann['bbox'])} has non-positive width or height")
            continue
        W, H = img["width"], img["height"]
        tol = OUTSIDE_TOLERANCE
        if x < -tol or y < -tol or x + w > W + tol or y + h > H + tol:
            problems.append(f"{where}: box [x, y, w, h] = {_fmt(ann['bbox'])} lies outside the {W}x{H} image")
            continue
        if ann.get("iscrowd", 0):
            crowd += 1
            continue
        name = categories[ann["category_id"]]
        bucket = size_bucket(w, h)
        classes[name] += 1
        class_sizes[name][bucket] += 1
        sizes[bucket] += 1
        boxed.add(img["id"])

    for image_id in sorted(image_info):
        problem = _check_image_file(image_info[image_id], images, decode)
        if problem:
            problems.append(problem)

    if problems:
        more = len(problems) - 1
        err = DatasetError(problems[0] + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""))
        err.problems = problems
        raise err

    warnings = [f"category {name!r} has no boxes" for name, n in classes.items() if n == 0]
    files = Counter(img["file_name"] for img in image_info.values())
    warnings += [f"{n} images share the file {name}" for name, n in sorted(files.items()) if n > 1]
    return {"annotations": str(path), "images_dir": str(images), "images": len(image_info),
            "boxes": sum(classes.values()), "crowd": crowd, "classes": classes, "class_sizes": class_sizes,
            "sizes": sizes, "images_without_boxes": len(image_info) - len(boxed), "warnings": warnings}


def format_summary(summary: dict) -> str:
    """A small table of :func:`check_dataset`'s summary, for the terminal."""
    sizes = summary["sizes"]
    lines = [f"annotations  {summary['annotations']}",
             f"image folder {summary['images_dir']}",
             f"images       {summary['images']}  ({summary['images_without_boxes']} without boxes)",
             f"boxes        {summary['boxes']}  (small {sizes['small']}, medium {sizes['medium']}, "
             f"large {sizes['large']})" + (f"; {summary['crowd']} crowd regions" if summary.get("crowd") else ""),
             ""]
    width = max([5] + [len(name) for name in summary["classes"]])
    lines.append(f"{'class':<{width}}  {'boxes':>7}  {'small':>7}  {'medium':>7}  {'large':>7}")
    for name, count in summary["classes"].items():
        per = summary["class_sizes"][name]
        lines.append(f"{name:<{width}}  {count:>7}  {per['small']:>7}  {per['medium']:>7}  {per['large']:>7}")
    lines += [f"warning: {w}" for w in summary.get("warnings", [])]
    return "\n".join(lines)


def format_problems(problems: list[str], annotations: str | Path, shown: int = SHOWN_PROBLEMS) -> str:
    """``N problems in FILE:`` and the first ``shown`` of them, one a line (all of them fixed in one go
    beats one at a time, and more than ten would scroll the cause away)."""
    lines = [f"{len(problems)} problem{'s' if len(problems) != 1 else ''} in {annotations}"
             + (f", the first {shown}:" if len(problems) > shown else ":")]
    lines += [f"  {problem}" for problem in problems[:shown]]
    if len(problems) > shown:
        lines.append(f"  ... and {len(problems) - shown} more")
    return "\n".join(lines)


def _check_entries(data: dict, path: Path) -> None:
    """Raise at the first entry that lacks a field or has one of the wrong type."""
    def fail(what: str, problem: str) -> None:
        raise DatasetError(f"{path}: not COCO: {what}: {problem}")

    def need(entry: Any, what: str, key: str, kind: str) -> None:
        if key not in entry:
            fail(what, f"no '{key}'")
        valid, wanted = FIELD_KINDS[kind]
        if not valid(entry[key]):
            fail(what, f"'{key}' must be {wanted}, got {entry[key]!r}")

    for kind, fields in (("categories", (("id", "int"), ("name", "str"))),
                         ("images", (("id", "int"), ("file_name", "str"), ("width", "size"), ("height", "size"))),
                         ("annotations", (("id", "int"), ("image_id", "int"), ("category_id", "int"),
                                          ("bbox", "box")))):
        for i, entry in enumerate(data[kind]):
            if not isinstance(entry, dict):
                fail(f"{kind}[{i}]", f"an entry must be an object, got {entry!r}"[:200])
            ident = entry.get("id")
            what = f"{kind}[{i}]" + (f" (id {ident})" if _is_int(ident) else "")
            for key, check in fields:
                need(entry, what, key, check)
            if kind == "annotations" and "iscrowd" in entry:
                need(entry, what, "iscrowd", "flag")


FIELD_KINDS = {
    "int": (lambda v: _is_int(v), "an integer"),
    "str": (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    "size": (lambda v: _is_number(v) and v > 0 and float(v).is_integer(), "a positive integer"),
    "flag": (lambda v: _is_number(v) and v in (0, 1), "0 or 1"),
    "box": (lambda v: isinstance(v, list) and len(v) == 4 and all(_is_number(x) for x in v),
            "a list of four finite numbers [x, y, w, h]"),
}


def _check_image_file(img: dict, images: Path, decode: bool) -> str | None:
    file = images / img["file_name"]
    where = f"image {img['id']} ({file})"
    if not file.is_file():
        return f"image {img['id']}: file not found: {file}"
    try:
        with Image.open(file) as im:
            if im.size != (img["width"], img["height"]):
                return (f"{where}: the file is {im.size[0]}x{im.size[1]} pixels, the annotations say "
                        f"{img['width']}x{img['height']}")
            if decode:
                im.draft("RGB", (max(1, im.size[0] // 8), max(1, im.size[1] // 8)))
                im.load()
            else:
                im.verify()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        return f"{where}: cannot read the image: {err}"
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _fmt(box: list) -> str:
    return "[" + ", ".join(f"{v:g}" for v in box) + "]"
