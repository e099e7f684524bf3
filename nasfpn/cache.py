"""The frozen-backbone feature cache.

With a frozen backbone every candidate sees the same C3..C5 for an image, and computing them is
most of a CPU training step. So they are computed once per split (per flip), written to disk as
float16 arrays and memory-mapped: every worker process on the machine reads the same pages from
the OS page cache. The folder name is a digest of everything the features depend on (dataset,
image size, backbone, weights, flips, the versions of torch, torchvision and timm), so a change of
any of them builds a new cache and an old one is never read by mistake. A cache is written into a temporary folder and renamed into place,
so a crash never leaves half a cache, and two builders racing both end with one.

Before a cache is written its size is estimated (one probe forward gives each level's shape:
``images x flips x sum(C x H x W) x 2`` bytes, plus the targets), and a cache that would not fit
in the free space of its folder (less ``SPARE_BYTES``, with ``SLACK`` on the estimate) or under
the user's cap (``data.cache_max_gb``) is refused with :class:`CacheSpaceError` before anything
is written: ResNet-50 at 512 px is about 7 MB an image and flip, so a COCO-sized set would
otherwise fill the disk halfway through and then fail.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .pretrained import is_timm

log = logging.getLogger(__name__)
CACHE_VERSION = 1
GB = 1e9  # the sizes users are shown and give (data.cache_max_gb) are decimal gigabytes, as df -H
SPARE_BYTES = 2 ** 30  # left free on the disk for everything else: the ledger, logs, checkpoints
SLACK = 0.05  # on top of the estimate when comparing with the free space: its error, file-system blocks
# meta.json holds each image's targets per flip as JSON: a box is four float32 values printed as
# Python floats (up to ~18 characters each) and a label; an image adds its braces, keys and id.
TARGET_BYTES_PER_BOX = 90
TARGET_BYTES_PER_IMAGE = 40


class CacheSpaceError(ValueError):
    """A feature cache that would not fit (the disk or ``data.cache_max_gb``), refused before
    anything is written. A ``ValueError``: the command line prints it as one line, exit code 2."""


def default_cache_root() -> Path:
    return Path(os.environ.get("NASFPN_CACHE", Path.home() / ".cache" / "nasfpn"))


def dataset_fingerprint(dataset) -> str:
    """A digest of what a dataset feeds the proxy: its images, their annotations and the size."""
    coco = dataset.coco
    digest = hashlib.sha256(f"size={dataset.size}".encode())
    for image_id in dataset.image_ids:
        image = coco.imgs[image_id]
        anns = [coco.anns[a] for a in coco.getAnnIds(imgIds=[image_id])]
        digest.update(json.dumps([image.get("file_name"), image.get("width"), image.get("height"),
                                  [(a.get("bbox"), a.get("category_id"), a.get("iscrowd", 0)) for a in anns]],
                                 sort_keys=True).encode())
    digest.update(json.dumps(dataset.category_ids).encode())
    return digest.hexdigest()[:16]


class FeatureCache:
    """C3..C5 (and the targets) of every image of one split, for each flip, memory-mapped."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        meta = json.loads((self.folder / "meta.json").read_text())
        self.meta = meta
        self.flips: List[bool] = meta["flips"]
        self.levels: List[int] = meta["levels"]
        self.arrays = {lv: np.memmap(self.folder / f"c{lv}.f16", dtype=np.float16, mode="r",
                                     shape=tuple(meta["shapes"][str(lv)])) for lv in self.levels}
        self.targets = meta["targets"]  # [flip][index] -> {"boxes": [[x1, y1, x2, y2]], "labels": [..]}

    def __len__(self) -> int:
        return self.meta["count"]

    def features(self, indices: Sequence[int], flips: Sequence[bool]) -> "OrderedDict[str, torch.Tensor]":
        slots = [self.flips.index(bool(f)) for f in flips]
        return OrderedDict((f"c{lv}", torch.from_numpy(np.stack([self.arrays[lv][s, i] for s, i in zip(slots, indices)]))
                            .float()) for lv in self.levels)

    def batch_targets(self, indices: Sequence[int], flips: Sequence[bool]) -> List[Dict[str, torch.Tensor]]:
        out = []
        for i, f in zip(indices, flips):
            t = self.targets[self.flips.index(bool(f))][i]
            out.append({"boxes": torch.tensor(t["boxes"], dtype=torch.float32).reshape(-1, 4),
                        "labels": torch.tensor(t["labels"], dtype=torch.int64)})
        return out

    @classmethod
    def build(cls, backbone, dataset, root: Path, flips: Sequence[bool] = (False, True), weights_id: str = "random",
              batch_size: int = 16, *, max_gb: Optional[float] = None, check_room: bool = True) -> "FeatureCache":
        """The cache of ``dataset`` through ``backbone``: read if present, else computed once.

        Raises:
            CacheSpaceError: a missing cache that would not fit (see :func:`ensure_room`; skipped
                with ``check_room=False`` when the caller has checked).
        """
        key = cache_key(backbone, dataset, flips, weights_id)
        folder = cache_folder(root, key)
        if (folder / "meta.json").is_file():
            log.info("feature cache hit: %s", folder)
            return cls(folder)
        if check_room:
            ensure_room(backbone, [(dataset, flips)], root, max_gb)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        try:
            cls._compute(backbone, dataset, tmp, list(flips), key, batch_size)
            try:
                tmp.rename(folder)
            except OSError:  # another process finished first: use its copy
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return cls(folder)

    @staticmethod
    @torch.no_grad()
    def _compute(backbone, dataset, folder: Path, flips: List[bool], key: dict, batch_size: int) -> None:
        start = time.perf_counter()
        # Channels-last: EfficientNet-Lite0's depthwise convolutions run about 1.5x faster on
        # CPU (measured: 160 images at 256 px, 9.2 s -> 6.2 s in float32 on 2 cores).
        backbone.eval().to(memory_format=torch.channels_last)
        n = len(dataset)
        arrays: Dict[int, np.memmap] = {}
        shapes: Dict[str, list] = {}
        targets: List[List[dict]] = [[None] * n for _ in flips]
        for slot, flip in enumerate(flips):
            for begin in range(0, n, batch_size):
                indices = range(begin, min(begin + batch_size, n))
                loaded = [dataset.load(i, flip=flip) for i in indices]
                images = torch.stack([img for img, _ in loaded]).contiguous(memory_format=torch.channels_last)
                feats = backbone(images)
                for (i, (_, target)) in zip(indices, loaded):
                    targets[slot][i] = {"boxes": target["boxes"].tolist(), "labels": target["labels"].tolist()}
                for name, f in feats.items():
                    level = int(name[1:])
                    if level not in arrays:
                        shape = (len(flips), n, *f.shape[1:])
                        shapes[str(level)] = list(shape)
                        arrays[level] = np.memmap(folder / f"c{level}.f16", dtype=np.float16, mode="w+", shape=shape)
                    arrays[level][slot, begin:begin + len(indices)] = f.numpy().astype(np.float16)
        for array in arrays.values():
            array.flush()
        meta = {**key, "count": n, "levels": sorted(arrays), "shapes": shapes, "image_ids": list(dataset.image_ids),
                "targets": targets, "seconds": round(time.perf_counter() - start, 2)}
        (folder / "meta.json").write_text(json.dumps(meta))
        log.info("feature cache: %d images x %d flips in %.1f s", n, len(flips), meta["seconds"])


def cache_key(backbone, dataset, flips: Sequence[bool], weights_id: str) -> dict:
    """Everything a cache's features depend on; the dataset fingerprint covers which images (so
    a subset, ``data.max_train_images``, has its own cache) and the image size."""
    return {"version": CACHE_VERSION, "dataset": dataset_fingerprint(dataset), "backbone": backbone.name,
            "channels": {str(k): v for k, v in backbone.channels.items()}, "weights": weights_id,
            "flips": [bool(f) for f in flips], "libraries": library_versions(backbone.name)}


def library_versions(backbone_name: str) -> Dict[str, str]:
    """The versions of the libraries that define the backbone and compute its features: an
    upgrade may change a model's layers or its arithmetic (the weights alone would load into
    either), so a cache made under other versions is not read. timm only for its backbones, so
    installing it does not throw away a torchvision backbone's caches."""
    import torchvision

    # Without the build's suffix (+cpu, +cu130): the cache is computed on the CPU alike.
    versions = {"torch": torch.__version__.split("+")[0], "torchvision": torchvision.__version__.split("+")[0]}
    if is_timm(backbone_name):
        import timm

        versions["timm"] = timm.__version__.split("+")[0]
    return versions


def cache_folder(root: Path, key: dict) -> Path:
    return Path(root) / "features" / hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


def build_caches(backbone, splits: Sequence[Tuple[object, Sequence[bool]]], root: Path, *, weights_id: str = "random",
                 max_gb: Optional[float] = None) -> List[FeatureCache]:
    """The caches of several ``(dataset, flips)``; room for all the missing ones is checked
    together before the first is written, so a too-large set leaves no cache behind."""
    missing = [(dataset, flips) for dataset, flips in splits
               if not (cache_folder(root, cache_key(backbone, dataset, flips, weights_id)) / "meta.json").is_file()]
    if missing:
        ensure_room(backbone, missing, root, max_gb)
    return [FeatureCache.build(backbone, dataset, root, flips, weights_id, check_room=False)
            for dataset, flips in splits]


@torch.no_grad()
def feature_shapes(backbone, size: int) -> Dict[int, Tuple[int, ...]]:
    """``(channels, height, width)`` of each level for a ``size`` square image: one probe forward,
    exact whatever the backbone's padding rounds to."""
    was_training = backbone.training
    backbone.eval()
    feats = backbone(torch.zeros(1, 3, size, size))
    backbone.train(was_training)
    return {int(name[1:]): tuple(f.shape[1:]) for name, f in feats.items()}


def estimate_cache_bytes(shapes: Dict[int, Tuple[int, ...]], dataset, flips: Sequence[bool]) -> int:
    """The bytes a cache of ``dataset`` will take: float16 features plus its targets' JSON."""
    images, copies = len(dataset.image_ids), len(flips)
    features = sum(math.prod(shape) for shape in shapes.values()) * 2 * images * copies
    boxes = sum(len(dataset.coco.imgToAnns.get(i, [])) for i in dataset.image_ids)  # crowd ones too: an upper bound
    return features + (boxes * TARGET_BYTES_PER_BOX + images * TARGET_BYTES_PER_IMAGE) * copies


def ensure_room(backbone, splits: Sequence[Tuple[object, Sequence[bool]]], root: Path,
                max_gb: Optional[float] = None) -> None:
    """Refuse caches of ``splits`` that would not fit, before anything is written.

    Raises:
        CacheSpaceError: with the numbers (images, flips, estimated and free GB) and the ways out.
    """
    size = splits[0][0].size
    shapes = feature_shapes(backbone, size)
    needed = sum(estimate_cache_bytes(shapes, dataset, flips) for dataset, flips in splits)
    free = shutil.disk_usage(_existing(Path(root))).free
    if needed * (1 + SLACK) <= free - SPARE_BYTES and (max_gb is None or needed <= max_gb * GB):
        return
    raise CacheSpaceError(_refusal(backbone.name, size, shapes, splits, needed, root, free, max_gb))


def _refusal(backbone_name: str, size: int, shapes: Dict[int, Tuple[int, ...]], splits, needed: int, root: Path,
             free: int, max_gb: Optional[float]) -> str:
    """One line: how big, why it does not fit, how many images would, and the ways out."""
    parts = ", ".join(f"{len(d.image_ids)} images x {len(f)} flip{'s' if len(f) > 1 else ''}" for d, f in splits)
    per_image = sum(math.prod(shape) for shape in shapes.values()) * 2
    if max_gb is not None and needed > max_gb * GB:
        limit, available = f"over data.cache_max_gb {max_gb:g}", max_gb * GB
    else:
        limit = f"but {root} has {_gb(free)} GB free (keeping {SPARE_BYTES / 2 ** 30:g} GiB spare)"
        available = max(free - SPARE_BYTES, 0) / (1 + SLACK)
    fits = int(available // (per_image * 2))
    return (f"the feature cache would take about {_gb(needed)} GB ({parts}; {backbone_name} at {size} px is "
            f"{per_image / 1e6:.2f} MB an image and flip in float16), {limit}; nothing was written. Ways out: a "
            f"smaller proxy.image_size (the cache grows with its square), a class-balanced subset "
            f"(data.max_train_images, data.max_val_images: about {fits} images with both flips fit), a "
            f"data.cache_dir (--cache-dir) with more room{', a larger data.cache_max_gb' if max_gb is not None else ''}"
            f", or no cache (backbone.cache: false or --no-cache: the backbone then runs at every step, much slower)")


def _gb(count: int | float) -> str:
    value = count / GB
    return f"{value:.1f}" if value >= 1 else f"{value:.3g}"


def _existing(path: Path) -> Path:
    """``path`` or its nearest existing parent: the disk a folder not made yet will be on."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path
