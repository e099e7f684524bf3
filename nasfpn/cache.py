"""The frozen-backbone feature cache.

With a frozen backbone every candidate sees the same C3..C5 for an image, and computing them is
most of a CPU training step. So they are computed once per split (per flip), written to disk as
float16 arrays and memory-mapped: every worker process on the machine reads the same pages from
the OS page cache. The folder name is a digest of everything the features depend on (dataset,
image size, backbone, weights, flips), so a change of any of them builds a new cache and an old
one is never read by mistake. A cache is written into a temporary folder and renamed into place,
so a crash never leaves half a cache, and two builders racing both end with one.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import torch

log = logging.getLogger(__name__)
CACHE_VERSION = 1


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
              batch_size: int = 16) -> "FeatureCache":
        """The cache of ``dataset`` through ``backbone``: read if present, else computed once."""
        key = {"version": CACHE_VERSION, "dataset": dataset_fingerprint(dataset), "backbone": backbone.name,
               "channels": {str(k): v for k, v in backbone.channels.items()}, "weights": weights_id,
               "flips": [bool(f) for f in flips]}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
        folder = Path(root) / "features" / digest
        if (folder / "meta.json").is_file():
            log.info("feature cache hit: %s", folder)
            return cls(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{digest}-", dir=folder.parent))
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
        backbone.eval()
        n = len(dataset)
        arrays: Dict[int, np.memmap] = {}
        shapes: Dict[str, list] = {}
        targets: List[List[dict]] = [[None] * n for _ in flips]
        for slot, flip in enumerate(flips):
            for begin in range(0, n, batch_size):
                indices = range(begin, min(begin + batch_size, n))
                loaded = [dataset.load(i, flip=flip) for i in indices]
                images = torch.stack([img for img, _ in loaded])
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
