"""COCO-format detection data, read through pycocotools and letterboxed for a proxy detector.

The canvas convention (the proxy sees only this; evaluation maps back with :meth:`to_original`):

* An image of ``W x H`` pixels is resized by ``scale = size / max(W, H)`` (PIL bilinear), so its
  long side is exactly ``size``, and placed at the top-left of a ``size x size`` canvas; the rest
  (right or bottom) is zero.
* A box ``[x, y, w, h]`` of the JSON becomes ``[x, y, x + w, y + h] * scale`` on the canvas.
* ``flip`` mirrors the whole canvas (so the padding moves to the left): ``x -> size - x``.
* Annotations with ``iscrowd = 1``, with a non-positive width or height, or less than one canvas
  pixel wide or high after scaling are left out of the target (counted and logged once, at DEBUG).

``width``/``height`` in the JSON are trusted for the scale; an image file of another size is a
:class:`DatasetError` when it is loaded (``nasfpn check-data`` finds all of them up front).
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

log = logging.getLogger(__name__)


class DatasetError(ValueError):
    """Bad dataset input; the message names the image/annotation id (and file) and the problem."""


def load_coco(annotations: str | Path | Any) -> Any:
    """A ``pycocotools.coco.COCO`` from a JSON path (quietly) or the object itself.

    Raises:
        DatasetError: the file is missing, is not JSON, or lacks the ``images``/``annotations``/
            ``categories`` lists.
    """
    from pycocotools.coco import COCO

    if isinstance(annotations, COCO):
        return annotations
    path = Path(annotations)
    data = read_coco_json(path)
    coco = COCO()
    coco.dataset = data
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints "creating index..."
            coco.createIndex()
    except (KeyError, TypeError) as err:
        raise DatasetError(f"{path}: not COCO: an entry lacks {err} or is malformed "
                           "(`nasfpn check-data` names it)") from None
    return coco


def read_coco_json(path: Path) -> dict:
    """The parsed JSON of a COCO file, with its three top-level lists checked to exist."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(f"{path}: annotation file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"{path}: cannot read the annotation file: {err}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path}: not JSON: {err}") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: not COCO: the top level is a {type(data).__name__}, not an object "
                           "with 'images', 'annotations' and 'categories'")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise DatasetError(f"{path}: not COCO: no '{key}' key")
        if not isinstance(data[key], list):
            raise DatasetError(f"{path}: not COCO: '{key}' is a {type(data[key]).__name__}, not a list")
    return data


class DetectionDataset(torch.utils.data.Dataset):
    """COCO-format detection data read through pycocotools, letterboxed to ``size x size``.

    Args:
        annotations: a COCO JSON file, or a ``pycocotools.coco.COCO`` already loaded.
        images: the folder the images' ``file_name`` are relative to.
        size: the side of the square canvas.
        image_ids: a subset of the images (e.g. one side of :func:`nasfpn.data.split_ids`);
            default all.

    ``dataset[i]`` is ``(image, target)``: a float32 ``[3, size, size]`` tensor in ``[0, 1]`` and
    ``{"boxes": float32 [N, 4] xyxy canvas pixels, "labels": int64 [N] in 0..num_classes-1,
    "image_id": int, "scale": float, "flip": bool}``. Labels are contiguous: label ``k`` is COCO
    category ``category_ids[k]`` (sorted ids).

    Example::

        ds = DetectionDataset("train.json", "images/", size=256)
        image, target = ds.load(0, flip=True)
        boxes = ds.to_original(target["boxes"], target["image_id"], flip=True)   # back to JSON pixels

    Raises:
        DatasetError: unreadable JSON, an unknown image id in ``image_ids``, an annotation of an
            unknown category, a non-positive ``size``; at :meth:`load`: a missing or unreadable
            image file, or one whose size differs from the JSON's.
    """

    def __init__(self, annotations: str | Path | Any, images: str | Path, size: int,
                 image_ids: Sequence[int] | None = None):
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise DatasetError(f"size must be a positive integer, got {size!r}")
        self.coco = load_coco(annotations)
        self.images = Path(images)
        self.size = size
        cats = self.coco.loadCats(sorted(self.coco.getCatIds()))
        self.category_ids: list[int] = [c["id"] for c in cats]
        self.class_names: list[str] = [str(c.get("name", c["id"])) for c in cats]
        self.num_classes = len(self.category_ids)
        label_of = {cat: k for k, cat in enumerate(self.category_ids)}

        known = set(self.coco.getImgIds())
        if image_ids is None:
            ids = sorted(known)
        else:
            ids = sorted({int(i) for i in image_ids})
            unknown = [i for i in ids if i not in known]
            if unknown:
                raise DatasetError(f"image id {unknown[0]} is not in the annotations"
                                   + (f" (nor are {len(unknown) - 1} more)" if len(unknown) > 1 else ""))
        self.image_ids: list[int] = ids

        self._boxes: dict[int, np.ndarray] = {}   # original-pixel xyxy, kept annotations only
        self._labels: dict[int, np.ndarray] = {}
        skipped = {"crowd": 0, "empty": 0, "tiny": 0}
        for image_id in ids:
            info = self.coco.imgs[image_id]
            scale = self.scale_of(image_id)
            boxes, labels = [], []
            for ann in self.coco.imgToAnns.get(image_id, []):
                if ann["category_id"] not in label_of:
                    raise DatasetError(f"annotation {ann.get('id')} (image {image_id}): unknown category id "
                                       f"{ann['category_id']}")
                if ann.get("iscrowd", 0):
                    skipped["crowd"] += 1
                    continue
                x, y, w, h = (float(v) for v in ann["bbox"])
                if not (w > 0 and h > 0):
                    skipped["empty"] += 1
                    continue
                x1, y1 = max(x, 0.0), max(y, 0.0)
                x2, y2 = min(x + w, float(info["width"])), min(y + h, float(info["height"]))
                if (x2 - x1) * scale < 1 or (y2 - y1) * scale < 1:
                    skipped["tiny"] += 1
                    continue
                boxes.append((x1, y1, x2, y2))
                labels.append(label_of[ann["category_id"]])
            self._boxes[image_id] = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
            self._labels[image_id] = np.asarray(labels, dtype=np.int64)
        self.skipped = skipped
        if any(skipped.values()):
            log.debug("left out of the targets: %d crowd, %d with non-positive size, %d under one canvas pixel "
                      "at size %d", skipped["crowd"], skipped["empty"], skipped["tiny"], size)

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        return self.load(index, flip=False)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({len(self)} images, {self.num_classes} classes, size={self.size}, "
                f"images={str(self.images)!r})")

    def labels_of(self, image_id: int) -> list[int]:
        """The class labels (0-based) of the boxes kept for training (no crowd, empty or tiny ones)."""
        return self._labels[image_id].tolist()

    def scale_of(self, image_id: int) -> float:
        """Canvas pixels per original pixel for this image."""
        info = self.coco.imgs[image_id]
        return self.size / max(info["width"], info["height"])

    def image_path(self, image_id: int) -> Path:
        return self.images / self.coco.imgs[image_id]["file_name"]

    def load(self, index: int, flip: bool = False) -> tuple[torch.Tensor, dict]:
        """The letterboxed image and its target (see the class docstring)."""
        image_id = self.image_ids[index]
        info = self.coco.imgs[image_id]
        width, height = int(info["width"]), int(info["height"])
        scale = self.scale_of(image_id)
        new_w = min(self.size, max(1, round(width * scale)))
        new_h = min(self.size, max(1, round(height * scale)))
        path = self.image_path(image_id)
        try:
            with Image.open(path) as img:
                if img.size != (width, height):
                    raise DatasetError(f"image {image_id} ({path}): the file is {img.size[0]}x{img.size[1]}, "
                                       f"the annotations say {width}x{height}")
                img.draft("RGB", (new_w, new_h))  # JPEG: decode at a reduced scale when that is enough
                pixels = img.convert("RGB").resize((new_w, new_h), Image.BILINEAR)
        except FileNotFoundError:
            raise DatasetError(f"image {image_id}: file not found: {path}") from None
        except (OSError, SyntaxError, ValueError) as err:
            if isinstance(err, DatasetError):
                raise
            raise DatasetError(f"image {image_id} ({path}): cannot read the image: {err}") from None
        # numpy, not torch, for these small copies: torch's intra-op threads only cost time here
        canvas = np.zeros((3, self.size, self.size), dtype=np.float32)
        canvas[:, :new_h, :new_w] = np.asarray(pixels).transpose(2, 0, 1)
        canvas *= np.float32(1 / 255)
        boxes = self._boxes[image_id] * np.float32(scale)
        np.clip(boxes[:, 0::2], 0, new_w, out=boxes[:, 0::2])
        np.clip(boxes[:, 1::2], 0, new_h, out=boxes[:, 1::2])
        if flip:
            canvas = np.ascontiguousarray(canvas[:, :, ::-1])
            boxes = np.stack([self.size - boxes[:, 2], boxes[:, 1], self.size - boxes[:, 0], boxes[:, 3]], axis=1)
        target = {"boxes": torch.from_numpy(boxes), "labels": torch.from_numpy(self._labels[image_id].copy()),
                  "image_id": image_id, "scale": scale, "flip": bool(flip)}
        canvas = torch.from_numpy(canvas)
        return canvas, target

    def to_original(self, boxes_xyxy: torch.Tensor, image_id: int, flip: bool = False) -> torch.Tensor:
        """Canvas ``xyxy`` boxes of ``image_id`` (loaded with ``flip``) in original-image pixels, clipped to it."""
        info = self.coco.imgs[image_id]
        boxes = boxes_xyxy.detach().to(torch.float32).reshape(-1, 4)
        if flip:
            boxes = torch.stack([self.size - boxes[:, 2], boxes[:, 1], self.size - boxes[:, 0], boxes[:, 3]], dim=1)
        boxes = boxes / self.scale_of(image_id)
        x = boxes[:, 0::2].clamp(0, float(info["width"]))
        y = boxes[:, 1::2].clamp(0, float(info["height"]))
        return torch.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], dim=1)
