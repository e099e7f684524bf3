"""Pascal VOC (one XML file per image) to COCO JSON.

Layouts, tried in this order: ``Annotations/`` + ``JPEGImages/`` (VOC, BCCD; ``ImageSets/Main/*.txt``
are only counted), ``annotations/`` + ``images/`` (raccoon), the XML files beside their images in
one folder; for any other, the two folders are named (``annotations=``, ``images=``).

Coordinates: VOC's ``xmin``..``xmax`` are read as pixel-edge coordinates with no shift, so the
COCO box is ``[xmin, ymin, xmax - xmin, ymax - ymin]``. Strictly VOC is 1-based and inclusive
(width ``xmax - xmin + 1``), but that reading would turn a zero-size box (an annotation-tool slip)
into a 1-pixel one and hide it; read this way it stays zero-size, is reported and is not written.
The cost is at most one pixel at the box's left/top edge, and 0-based files (as many tools write)
convert without boxes "outside" at ``x = 0``.

Every image is decoded in full, so that a truncated file is found here, not later by ``check-data``.
An XML whose image is missing or broken is left out with a warning (with ``strict``: an error, and
nothing written); a ``<size>`` that disagrees with the file gives way to the file's.

Not written, each reported naming the XML file and object index (``object[i]``, 0-based): boxes of
non-positive size or wholly outside the image, objects without a box or of a class not in
``classes``. Boxes partly outside are clipped and reported. ``difficult`` and ``truncated`` are
ignored (every box is a plain ``iscrowd = 0`` box).

Class names are stripped of whitespace; likely typos are reported, never fixed (see
:mod:`nasfpn.data.voc_names`).
"""
from __future__ import annotations

import json
import logging
import math
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path
from typing import Sequence

from PIL import Image

from ..fsio import atomic_write_text
from .coco import DatasetError
from .voc_names import category_names, class_warnings

log = logging.getLogger(__name__)

LAYOUTS = (("Annotations", "JPEGImages"), ("annotations", "images"))
LOGGED_WARNINGS = 20
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".JPG", ".JPEG", ".PNG")


class _LeftOut(Exception):
    """An XML whose image is ``missing`` or ``broken``: that image is left out."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def voc_to_coco(voc_root: str | Path | None, out_json: str | Path, classes: Sequence[str] | None = None, *,
                annotations: str | Path | None = None, images: str | Path | None = None,
                strict: bool = False) -> dict:
    """Convert a VOC folder to one COCO JSON file (written atomically, only on success).

    Args:
        voc_root: a folder in one of the layouts of the module docstring (None: the next two are given).
        out_json: the COCO file to write; ``file_name`` in it is relative to the image folder.
        classes: category names, in the order of their ids ``1..K``; objects of other classes are
            left out (and reported). Default: every name found, sorted.
        annotations, images: the XML folder and the image folder, for any other layout (both or neither).
        strict: a missing or broken image is an error instead of being left out.

    Returns:
        ``{"images": int, "boxes": int, "classes": {name: boxes}, "warnings": [str], "out": path,
        "images_dir": path, "layout": str, "image_sets": {name: count}, "left_out": {kind: count}}``;
        image ids are ``1..N`` in the sorted order of the XML files kept.

    Raises:
        DatasetError: no folder or XML files, an unparseable XML, no usable image, ``classes`` none
            of which has a box, or (``strict``) a missing or broken image.
    """
    root, ann_dir, img_dir, layout = _folders(voc_root, annotations, images)
    details: list[str] = []  # one line per file or box, logged up to LOGGED_WARNINGS
    notes: list[str] = []    # the few lines about the whole set, always logged
    records, left_out = _read_all(ann_dir, img_dir, strict, details, notes)
    boxes_of = _boxes_per_class(records)
    names = category_names(classes, boxes_of, ann_dir, notes)
    coco, counts = _coco(records, names, details, notes)
    notes += class_warnings(boxes_of)
    _log(details, notes)

    coco = {"info": {"description": f"converted from Pascal VOC {(root or ann_dir).name}", "version": "1.0"}, **coco}
    out = Path(out_json)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(coco))
    sets_dir = root / "ImageSets" / "Main" if root else None
    image_sets = {txt.stem: sum(1 for line in txt.read_text().splitlines() if line.strip())
                  for txt in sorted(sets_dir.glob("*.txt"))} if sets_dir and sets_dir.is_dir() else {}
    return {"images": len(coco["images"]), "boxes": len(coco["annotations"]), "classes": counts,
            "warnings": details + notes, "out": str(out), "images_dir": str(img_dir), "layout": layout,
            "image_sets": image_sets, "left_out": left_out}


def _folders(voc_root, annotations, images) -> tuple[Path | None, Path, Path, str]:
    """``(root, annotation folder, image folder, layout)`` of the arguments of :func:`voc_to_coco`."""
    if (annotations is None) != (images is None):
        raise DatasetError("the annotation folder and the image folder go together: give both or neither")
    if annotations is not None:
        for what, folder in (("annotation", annotations), ("image", images)):
            if not Path(folder).is_dir():
                raise DatasetError(f"{what} folder not found: {folder}")
        return (Path(voc_root) if voc_root else None), Path(annotations), Path(images), f"{annotations} + {images}"
    root = Path(voc_root)
    if not root.is_dir():
        raise DatasetError(f"VOC folder not found: {root}")
    for ann_name, img_name in LAYOUTS:
        if (root / ann_name).is_dir() and (root / img_name).is_dir():
            return root, root / ann_name, root / img_name, f"{ann_name}/ + {img_name}/"
    if any(root.glob("*.xml")):
        return root, root, root, "XML beside the images"
    holders = [d.name + "/" for d in sorted(root.iterdir()) if d.is_dir() and any(d.glob("*.xml"))]
    raise DatasetError(f"{root}: not a VOC folder: expected Annotations/ + JPEGImages/, annotations/ + images/ or "
                       ".xml files beside their images; for another layout name both folders (convert-voc "
                       "--annotations DIR --images DIR)" + (f"; .xml files are in {', '.join(holders[:5])}"
                                                            if holders else ""))


def _read_all(ann_dir: Path, img_dir: Path, strict: bool, details: list[str], notes: list[str]) -> tuple:
    """The records of the XML files whose image decodes, and ``{"missing"/"broken": count}`` of the others."""
    xml_files = sorted(ann_dir.glob("*.xml"))
    if not xml_files:
        raise DatasetError(f"{ann_dir}: no .xml files")
    records, left_out = [], []
    for xml in xml_files:
        try:
            records.append(_read_xml(xml, img_dir, details))
        except _LeftOut as skip:
            details.append(f"{skip}; left out")
            left_out.append(skip)
    count = Counter(skip.kind for skip in left_out)
    by_kind = {kind: count[kind] for kind in ("missing", "broken") if count[kind]}
    if left_out:
        kinds = ", ".join(f"{n} {kind}" for kind, n in by_kind.items())
        notes.append(f"{len(left_out)} of {len(xml_files)} images left out: {kinds}")
        if strict or not records:
            _log(details, notes)
            raise DatasetError(f"{len(left_out)} of {len(xml_files)} images missing or broken ({kinds}), the first: "
                               f"{left_out[0]}; nothing written" + (" (strict)" if records else ""))
    return records, by_kind


def _read_xml(xml: Path, img_dir: Path, details: list[str]) -> dict:
    try:
        root = ET.parse(xml).getroot()
    except (ET.ParseError, OSError) as err:
        raise DatasetError(f"{xml}: cannot parse the XML: {err}") from None
    objects = []
    for index, obj in enumerate(root.findall("object")):
        name = (obj.findtext("name") or "").strip()  # "Kangaroo " is "Kangaroo"
        box = obj.find("bndbox")
        coords = None
        if box is not None:
            try:
                coords = tuple(float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
                if not all(math.isfinite(c) for c in coords):
                    raise ValueError("not finite")
            except (TypeError, ValueError):
                raise DatasetError(f"{xml} object[{index}] ({name}): <bndbox> needs numeric xmin, ymin, xmax "
                                   "and ymax") from None
        if not name:
            raise DatasetError(f"{xml} object[{index}]: no <name>")
        objects.append((name, coords))
    image = _find_image(root.findtext("filename"), xml, img_dir)
    width, height = _decoded_size(image, xml)
    said = _int(root.findtext("size/width")), _int(root.findtext("size/height"))
    if all(said) and said != (width, height):
        details.append(f"{xml.name}: <size> says {said[0]}x{said[1]} but {image.name} is {width}x{height}; "
                       "the image's size is used")
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
    tried = list(dict.fromkeys(tried))  # <filename> and the XML's stem often name the same file
    for path in tried:
        if path.is_file():
            return path
    looked = ", ".join(p.name for p in tried[:4]) + (", ..." if len(tried) > 4 else "")
    raise _LeftOut("missing", f"{xml.name}: image file not found (<filename> {filename!r}; looked for {looked} "
                              f"in {img_dir})")


def _decoded_size(image: Path, xml: Path) -> tuple[int, int]:
    """The image's size, after decoding all of it (``Image.open`` alone reads only the header, so a
    truncated file would pass)."""
    try:
        with Image.open(image) as im:
            im.load()
            return im.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise _LeftOut("broken", f"{xml.name}: image {image} does not decode ({err})") from None


def _boxes_per_class(records: list[dict]) -> dict[str, list[str]]:
    """Class name -> the XML file of each of its objects that has a box."""
    boxes_of: dict[str, list[str]] = {}
    for rec in records:
        for name, box in rec["objects"]:
            if box is not None:
                boxes_of.setdefault(name, []).append(rec["xml"])
    return boxes_of


def _coco(records: list[dict], names: list[str], details: list[str], notes: list[str]) -> tuple[dict, dict]:
    """The COCO dict (no ``info``) and the boxes written per class; problems go to ``details``."""
    category_of = {name: k + 1 for k, name in enumerate(names)}
    images, annotations, counts, unknown = [], [], Counter(), Counter()
    for image_id, rec in enumerate(records, start=1):
        images.append({"id": image_id, "file_name": rec["file_name"], "width": rec["width"], "height": rec["height"]})
        for index, (name, box) in enumerate(rec["objects"]):
            where = f"{rec['xml']} object[{index}] ({name})"
            if box is None:
                details.append(f"{where}: no <bndbox>; not written")
            elif name not in category_of:
                unknown[name] += 1
            else:
                clipped = _clip(box, rec["width"], rec["height"], where, details)
                if clipped:
                    x1, y1, x2, y2 = clipped
                    bbox = [_num(x1), _num(y1), _num(x2 - x1), _num(y2 - y1)]
                    annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                        "category_id": category_of[name], "bbox": bbox,
                                        "area": _num((x2 - x1) * (y2 - y1)), "iscrowd": 0})
                    counts[name] += 1
    notes += [f"{n} object(s) of class {name!r}, not in the classes given; not written"
              for name, n in sorted(unknown.items())]
    coco = {"licenses": [], "images": images, "annotations": annotations,
            "categories": [{"id": k, "name": name, "supercategory": "object"} for name, k in category_of.items()]}
    return coco, {name: counts[name] for name in names}


def _clip(box: tuple, W: int, H: int, where: str, details: list[str]) -> tuple | None:
    """The box clipped to the ``W x H`` image, or None (and a warning) if it has no area there."""
    xmin, ymin, xmax, ymax = box
    if xmax <= xmin or ymax <= ymin:
        kind = "zero-size" if xmax == xmin or ymax == ymin else "negative-size"
        details.append(f"{where}: {kind} box (xmin {xmin:g}, ymin {ymin:g}, xmax {xmax:g}, ymax {ymax:g}); not written")
        return None
    x1, y1, x2, y2 = max(xmin, 0.0), max(ymin, 0.0), min(xmax, float(W)), min(ymax, float(H))
    if x2 <= x1 or y2 <= y1:
        details.append(f"{where}: box ({xmin:g}, {ymin:g}, {xmax:g}, {ymax:g}) lies outside the {W}x{H} image; "
                       "not written")
        return None
    if (x1, y1, x2, y2) != box:
        details.append(f"{where}: box ({xmin:g}, {ymin:g}, {xmax:g}, {ymax:g}) clipped to the {W}x{H} image: "
                       f"({x1:g}, {y1:g}, {x2:g}, {y2:g})")
    return x1, y1, x2, y2


def _log(details: list[str], notes: list[str]) -> None:
    for message in details[:LOGGED_WARNINGS]:
        log.warning("%s", message)
    if len(details) > LOGGED_WARNINGS:
        log.warning("... and %d more like these", len(details) - LOGGED_WARNINGS)
    for message in notes:
        log.warning("%s", message)


def _int(text: str | None) -> int | None:
    try:
        return int(float(text)) if text is not None else None
    except (ValueError, OverflowError):  # "inf" parses as a float, not as an int
        return None


def _num(value: float) -> int | float:
    return int(value) if float(value).is_integer() else round(float(value), 3)
