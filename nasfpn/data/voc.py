"""Pascal VOC (one XML file per image) to COCO JSON.

Layouts: ``Annotations/`` + ``JPEGImages/`` (VOC, BCCD; ``ImageSets/Main/*.txt`` are only
counted for the summary) or ``annotations/`` + ``images/`` (the raccoon set).

Coordinates: VOC's ``xmin``..``xmax`` are read as pixel-edge coordinates with no shift, so the
COCO box is ``[xmin, ymin, xmax - xmin, ymax - ymin]``. Strictly VOC is 1-based and inclusive
(width ``xmax - xmin + 1``), but that reading would turn a zero-size box (``xmin == xmax``, an
annotation-tool slip) into a 1-pixel one and hide it; read this way it stays zero-size, is
reported and is not written. The cost is at most one pixel at the box's left/top edge, and files
written 0-based (as many tools do) convert without boxes "outside" at ``x = 0``.

Not written, each reported as a warning naming the XML file and object index (``object[i]``,
0-based, in file order): boxes of non-positive size, boxes wholly outside the image, objects
without a box or of a class not in ``classes``. Boxes partly outside are clipped to the image
and reported. VOC's ``difficult`` and ``truncated`` flags are ignored (every box is a plain
``iscrowd = 0`` box).
"""
from __future__ import annotations

import json
import logging
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path
from typing import Sequence

from PIL import Image

from ..fsio import atomic_write_text
from .coco import DatasetError

log = logging.getLogger(__name__)

LAYOUTS = (("Annotations", "JPEGImages"), ("annotations", "images"))
LOGGED_WARNINGS = 20
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".JPG", ".JPEG", ".PNG")


def voc_to_coco(voc_root: str | Path, out_json: str | Path, classes: Sequence[str] | None = None) -> dict:
    """Convert a VOC folder to one COCO JSON file (written atomically).

    Args:
        voc_root: the folder holding ``Annotations/`` + ``JPEGImages/`` or ``annotations/`` + ``images/``.
        out_json: the COCO file to write; ``file_name`` in it is relative to the image folder.
        classes: category names, in the order of their ids ``1..K``; objects of other classes are
            left out (and reported). Default: every name found, sorted.

    Returns:
        ``{"images": int, "boxes": int, "classes": {name: boxes}, "warnings": [str], "out": path,
        "images_dir": path, "layout": str, "image_sets": {name: count}}``. Image ids are ``1..N``
        in the sorted order of the XML files.

    Raises:
        DatasetError: a missing folder, no XML files, an unparseable XML, an XML whose image file
            is missing, or whose size is absent and whose image cannot be read.
    """
    root = Path(voc_root)
    if not root.is_dir():
        raise DatasetError(f"VOC folder not found: {root}")
    for ann_name, img_name in LAYOUTS:
        ann_dir, img_dir = root / ann_name, root / img_name
        if ann_dir.is_dir() and img_dir.is_dir():
            break
    else:
        raise DatasetError(f"{root}: not a VOC folder: expected Annotations/ + JPEGImages/ or annotations/ + images/")
    xml_files = sorted(ann_dir.glob("*.xml"))
    if not xml_files:
        raise DatasetError(f"{ann_dir}: no .xml files")

    records = [_read_xml(xml, img_dir) for xml in xml_files]
    names = list(classes) if classes is not None else sorted({o[0] for r in records for o in r["objects"]})
    if classes is None and not names:
        raise DatasetError(f"{ann_dir}: no <object> in any of the {len(xml_files)} XML files")
    if len(set(names)) != len(names) or not names:
        raise DatasetError(f"classes must be distinct and not empty, got {names}")
    category_of = {name: k + 1 for k, name in enumerate(names)}

    warnings: list[str] = []
    images, annotations = [], []
    counts = Counter()
    unknown = Counter()
    for image_id, rec in enumerate(records, start=1):
        W, H = rec["width"], rec["height"]
        images.append({"id": image_id, "file_name": rec["file_name"], "width": W, "height": H})
        for index, (name, box) in enumerate(rec["objects"]):
            where = f"{rec['xml']} object[{index}] ({name})"
            if box is None:
                warnings.append(f"{where}: no <bndbox>; not written")
                continue
            if name not in category_of:
                unknown[name] += 1
                continue
            xmin, ymin, xmax, ymax = box
            if xmax <= xmin or ymax <= ymin:
                kind = "zero-size" if xmax == xmin or ymax == ymin else "negative-size"
                warnings.append(f"{where}: {kind} box (xmin {xmin:g}, ymin {ymin:g}, xmax {xmax:g}, "
                                f"ymax {ymax:g}); not written")
                continue
            x1, y1, x2, y2 = max(xmin, 0.0), max(ymin, 0.0), min(xmax, float(W)), min(ymax, float(H))
            if x2 <= x1 or y2 <= y1:
                warnings.append(f"{where}: box ({xmin:g}, {ymin:g}, {xmax:g}, {ymax:g}) lies outside the "
                                f"{W}x{H} image; not written")
                continue
            if (x1, y1, x2, y2) != (xmin, ymin, xmax, ymax):
                warnings.append(f"{where}: box ({xmin:g}, {ymin:g}, {xmax:g}, {ymax:g}) clipped to the {W}x{H} "
                                f"image: ({x1:g}, {y1:g}, {x2:g}, {y2:g})")
            w, h = x2 - x1, y2 - y1
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category_of[name],
                                "bbox": [_num(x1), _num(y1), _num(w), _num(h)], "area": _num(w * h), "iscrowd": 0})
            counts[name] += 1
    warnings += [f"{n} object(s) of class {name!r}, not in the classes given; not written"
                 for name, n in sorted(unknown.items())]
    for message in warnings[:LOGGED_WARNINGS]:
        log.warning("%s", message)
    if len(warnings) > LOGGED_WARNINGS:
        log.warning("... and %d more warnings (all in the returned summary)", len(warnings) - LOGGED_WARNINGS)

    coco = {"info": {"description": f"converted from Pascal VOC {root.name}", "version": "1.0"},
            "licenses": [],
            "images": images, "annotations": annotations,
            "categories": [{"id": k, "name": name, "supercategory": "object"} for name, k in category_of.items()]}
    out = Path(out_json)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(coco))
    image_sets = {}
    sets_dir = root / "ImageSets" / "Main"
    if sets_dir.is_dir():
        for txt in sorted(sets_dir.glob("*.txt")):
            image_sets[txt.stem] = sum(1 for line in txt.read_text().splitlines() if line.strip())
    return {"images": len(images), "boxes": len(annotations), "classes": {n: counts[n] for n in names},
            "warnings": warnings, "out": str(out), "images_dir": str(img_dir),
            "layout": f"{ann_dir.name}/ + {img_dir.name}/", "image_sets": image_sets}


def _read_xml(xml: Path, img_dir: Path) -> dict:
    try:
        root = ET.parse(xml).getroot()
    except (ET.ParseError, OSError) as err:
        raise DatasetError(f"{xml}: cannot parse the XML: {err}") from None
    image = _find_image(root.findtext("filename"), xml, img_dir)
    width, height = _int(root.findtext("size/width")), _int(root.findtext("size/height"))
    if not (width and height and width > 0 and height > 0):
        try:
            with Image.open(image) as im:
                width, height = im.size
        except (OSError, SyntaxError, ValueError) as err:
            raise DatasetError(f"{xml}: no <size> and the image {image} cannot be read: {err}") from None
    objects = []
    for index, obj in enumerate(root.findall("object")):
        name = (obj.findtext("name") or "").strip()
        box = obj.find("bndbox")
        coords = None
        if box is not None:
            try:
                coords = tuple(float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
            except (TypeError, ValueError):
                raise DatasetError(f"{xml} object[{index}] ({name}): <bndbox> needs numeric xmin, ymin, xmax "
                                   "and ymax") from None
        if not name:
            raise DatasetError(f"{xml} object[{index}]: no <name>")
        objects.append((name, coords))
    return {"xml": xml.name, "file_name": image.relative_to(img_dir).as_posix(), "width": width, "height": height,
            "objects": objects}


def _find_image(filename: str | None, xml: Path, img_dir: Path) -> Path:
    tried = []
    if filename and filename.strip():
        name = Path(filename.strip()).name
        tried.append(img_dir / name)
        if not Path(name).suffix:
            tried += [img_dir / (name + s) for s in IMAGE_SUFFIXES]
    tried += [img_dir / (xml.stem + s) for s in IMAGE_SUFFIXES]
    for path in tried:
        if path.is_file():
            return path
    raise DatasetError(f"{xml}: image file not found (<filename> {filename!r}; looked for "
                       f"{', '.join(p.name for p in tried[:4])}{', ...' if len(tried) > 4 else ''} in {img_dir})")


def _int(text: str | None) -> int | None:
    try:
        return int(float(text)) if text is not None else None
    except ValueError:
        return None


def _num(value: float) -> int | float:
    return int(value) if float(value).is_integer() else round(float(value), 3)
