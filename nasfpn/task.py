"""Prepare what every candidate of a search shares: data splits, backbone, feature caches.

Where the backbone has no pretrained weights (neither a ``weights`` file nor packaged ImageNet
weights such as ``efficientnet_lite0_imagenet``'s), a short warm-up trains it once inside the
FPN-baseline RetinaNet proxy (whatever the search's detector) on the training split; the warm-up
is cached by everything it depends on, and its file is named in every result.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch

from .backbones import BackboneError, build_backbone, default_weights, weights_fingerprint
from .pretrained import default_backbone_name
from .cache import FeatureCache, build_caches, dataset_fingerprint, default_cache_root, ensure_room
from .fsio import atomic_torch_save, atomic_write_text
from .genotype import Genotype, load_genotype
from .recursion import cached_backbone_problem
from .train import ProxyConfig, ProxyTask, precision_name, proxy_device, train_proxy

log = logging.getLogger(__name__)
WARMUP_HEAD_DEPTH = 2  # the warm-up's own detector head, whatever the proxy's


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from, and how many the proxy uses. No ``annotations``: the built-in
    synthetic set."""
    annotations: Optional[str] = None
    images: Optional[str] = None
    val_annotations: Optional[str] = None
    val_images: Optional[str] = None
    # None: 0.2, raised on a small set towards 150 validation images, at most 0.4
    # (nasfpn.data.split.default_val_fraction, with the measurement behind it).
    val_fraction: Optional[float] = None
    split_seed: int = 0
    synthetic_images: int = 800
    synthetic_seed: int = 0
    # Where the built-in data, the backbone warm-up and the feature caches live (default
    # $NASFPN_CACHE or ~/.cache/nasfpn); a search saves it resolved, so its resume finds them.
    cache_dir: Optional[str] = None
    # The proxy's share of a large set: a class-balanced subset of each split, taken after the
    # split and seeded by split_seed (see nasfpn.data.split.subset_ids); None: every image.
    # NAS-FPN's own proxy searched on a fixed part of COCO.
    max_train_images: Optional[int] = None
    max_val_images: Optional[int] = None
    # The most a task's feature caches may take, in GB (1e9 bytes); None: the free space of
    # cache_dir less 1 GiB is the only limit. A cache over either is refused before it is written.
    cache_max_gb: Optional[float] = None

    def __post_init__(self) -> None:
        value = self.val_fraction
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1):
            raise ValueError(f"data.val_fraction: the share of the images held out for validation, a number in "
                             f"(0, 1) or null (0.2, more on a small set), got {value!r}")
        for name in ("split_seed", "synthetic_seed"):
            if isinstance(getattr(self, name), bool) or not isinstance(getattr(self, name), int):
                raise ValueError(f"data.{name}: must be an integer, got {getattr(self, name)!r}")
        if isinstance(self.synthetic_images, bool) or not isinstance(self.synthetic_images, int) \
                or self.synthetic_images < 2:
            raise ValueError(f"data.synthetic_images: an integer >= 2 (a train and a validation image), "
                             f"got {self.synthetic_images!r}")
        for name in ("max_train_images", "max_val_images"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"data.{name}: must be a positive integer or null, got {value!r}")
        value = self.cache_max_gb
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0):
            raise ValueError(f"data.cache_max_gb: must be a number > 0 or null, got {value!r}")


@dataclass(frozen=True)
class BackboneConfig:
    """Which backbone, from which weights; ``warmup_steps`` trains it first when it has none;
    ``cache``: a frozen backbone's features are computed once and shared by every trial.

    ``name``: a torchvision model (``resnet18``), ``timm:NAME`` (``timm:resnet18``, needs the
    ``pretrained`` extra), ``efficientnet_lite0_imagenet`` (ImageNet weights shipped in a package;
    the ``pretrained`` extra), or ``package.module:factory``; see ``nasfpn.backbones``.
    ``weights``: a local file, never downloaded. A backbone with weights (this file or packaged
    ones) is not warmed up, whatever ``warmup_steps`` says."""
    name: str = field(default_factory=default_backbone_name)  # the pretrained extra's Lite0, else resnet18
    weights: Optional[str] = None
    return_nodes: Optional[Sequence[str]] = None
    freeze: bool = True
    cache: bool = True
    # 1200, not 400: after 400 steps the frozen features were too weak for a top-down path to
    # carry anything (a neck without one ranked above FPN); after 1200 FPN beats it by 0.018 AP
    # over 2 seeds on the built-in data. About 10 minutes on 2 CPU cores with bfloat16 autocast
    # (16 in float32), once, cached.
    warmup_steps: int = 1200
    warmup_lr: float = 1e-3
    # The warm-up's own seed: proxy seeds (confirmation, ``nasfpn train --seed``) vary only the
    # proxy, on the same features, and never start a new warm-up.
    warmup_seed: int = 0


def prepare_task(data: DataConfig, backbone: BackboneConfig, proxy: ProxyConfig, *, use_cache: bool = True,
                 cache_root: str | Path | None = None) -> ProxyTask:
    """Datasets, backbone (warmed up if needed) and feature caches, once per search."""
    from .data import DetectionDataset, split_ids, synthetic_dataset

    root = Path(cache_root or data.cache_dir or default_cache_root())
    if data.annotations is None:
        annotations, images = synthetic_dataset(root, num_images=data.synthetic_images, seed=data.synthetic_seed)
    else:
        if data.images is None:
            raise ValueError("data.images: the image folder of data.annotations is missing")
        annotations, images = data.annotations, data.images
    size = proxy.image_size
    if data.val_annotations:
        train = DetectionDataset(annotations, images, size)
        val = DetectionDataset(data.val_annotations, data.val_images or images, size)
    else:
        everything = DetectionDataset(annotations, images, size)
        train_ids, val_ids = split_ids(everything.image_ids, val_fraction(data, len(everything.image_ids)),
                                       data.split_seed)
        train = DetectionDataset(everything.coco, images, size, image_ids=train_ids)
        val = DetectionDataset(everything.coco, images, size, image_ids=val_ids)
    train = proxy_subset(train, data.max_train_images, data.split_seed)
    val = proxy_subset(val, data.max_val_images, data.split_seed)
    weights = starting_weights(backbone)
    caching = backbone.freeze and backbone.cache and use_cache
    splits = [(train, (False, True)), (val, (False,))]
    if weights is None and backbone.freeze and backbone.warmup_steps > 0:
        if caching and not warmup_path(train, backbone, proxy, root).is_file():
            # The warm-up takes minutes: a cache that cannot fit is refused before it, not after
            # (feature shapes do not depend on the weights).
            untrained = build_backbone(backbone.name, return_nodes=backbone.return_nodes, probe_size=size)
            ensure_room(untrained, splits, root, data.cache_max_gb)
        weights = str(warmup_backbone(train, val, backbone, proxy, root))
    net = build_backbone(backbone.name, weights=weights, return_nodes=backbone.return_nodes, freeze=backbone.freeze,
                         probe_size=size)
    weights_id = weights_fingerprint(weights)
    task = ProxyTask(train, val, net, backbone_weights=str(weights) if weights else "random")
    if caching:  # room for both is checked before either is written
        task.train_cache, task.val_cache = build_caches(net, splits, root, weights_id=weights_id,
                                                        max_gb=data.cache_max_gb)
    val_annotations = str(data.val_annotations) if data.val_annotations else str(annotations)
    task.spec = {
        "size": size,
        "train": {"annotations": str(Path(annotations).resolve()), "images": str(Path(images).resolve()),
                  "ids": list(train.image_ids)},
        "val": {"annotations": str(Path(val_annotations).resolve()),
                "images": str(Path(data.val_images or images).resolve()), "ids": list(val.image_ids)},
        "backbone": {**dataclasses.asdict(backbone), "weights": str(Path(weights).resolve()) if weights else None},
        "train_cache": str(task.train_cache.folder) if task.train_cache else None,
        "val_cache": str(task.val_cache.folder) if task.val_cache else None,
    }
    return task


def val_fraction(data: DataConfig, images: int) -> float:
    """The share of ``images`` held out for validation: ``data.val_fraction``, or when it is not
    given the default for a set of that size, said when it is more than 0.2."""
    from .data.split import VAL_FRACTION, default_val_fraction

    if data.val_fraction is not None:
        return data.val_fraction
    fraction = default_val_fraction(images)
    if fraction > VAL_FRACTION:
        log.warning("validation split: %.2f of the %d images (data.val_fraction not given: raised from %g on a "
                    "small set, so that the proxy's AP is less a matter of seeds; set it to choose)",
                    fraction, images, VAL_FRACTION)
    return fraction


def resolved_val_fraction(data: DataConfig) -> Optional[float]:
    """``data.val_fraction`` as :func:`prepare_task` will take it (None with ``val_annotations``,
    or when the annotations cannot be read: preparing the task then says what is wrong)."""
    if data.val_fraction is not None or data.val_annotations:
        return data.val_fraction
    if data.annotations is None:
        return val_fraction(data, data.synthetic_images)
    try:
        images = len(json.loads(Path(data.annotations).read_text())["images"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return val_fraction(data, images)


def task_problem(genotype: Genotype, backbone: BackboneConfig) -> str:
    """Why ``genotype`` cannot be trained on a task prepared with ``backbone`` (empty when it can),
    told before the task is prepared: a neck with ``recursion`` (RFP) runs the backbone again,
    which a cached frozen backbone never does (see :func:`nasfpn.recursion.cached_backbone_problem`),
    and feeds back into it, which only a torchvision ResNet takes: the backbone is built now to
    ask it (a second), not after a preparation that may take minutes."""
    if genotype.recursion is None:
        return ""
    if backbone.freeze and backbone.cache:
        return cached_backbone_problem(genotype)
    try:
        built = build_backbone(backbone.name, weights=backbone.weights, return_nodes=backbone.return_nodes,
                               freeze=backbone.freeze, probe_size=64)
        built.feedback_body(genotype.recursion.levels)
    except BackboneError as err:
        return f"genotype {genotype.name or genotype.hash()[:12]!r}: {err}"
    return ""


def proxy_subset(dataset, count: Optional[int], seed: int):
    """``dataset`` cut to a class-balanced ``count`` images (see ``subset_ids``); itself when
    ``count`` is None or not smaller. The classes of an image are those of the boxes the proxy
    trains on (a zero-size or sub-pixel box does not make its image count for its class)."""
    from .data import DetectionDataset
    from .data.split import subset_ids

    if count is None or count >= len(dataset):
        return dataset
    coco = dataset.coco
    classes = {i: dataset.labels_of(i) for i in dataset.image_ids}
    ids = subset_ids(classes, count, seed)
    log.info("proxy subset: %d of %d images, class-balanced (seed %d)", len(ids), len(dataset), seed)
    return DetectionDataset(coco, dataset.images, dataset.size, image_ids=ids)


def starting_weights(backbone: BackboneConfig) -> Optional[str]:
    """The backbone's weights before any warm-up: its ``weights`` file, else a named pretrained
    backbone's packaged file; None: random, to be warmed up. A path, not a name, so that the
    feature caches and the results name the very file (its digest keys the caches)."""
    if backbone.weights:
        return backbone.weights
    packaged = default_weights(backbone.name)
    return None if packaged is None else str(packaged)


def task_from_spec(spec: Mapping[str, Any]) -> ProxyTask:
    """Rebuild a prepared task in another process (a search trial): datasets from their files,
    the feature caches memory-mapped; the backbone is loaded only when there is no cache."""
    from .data import DetectionDataset

    def dataset(part: Mapping[str, Any]):
        return DetectionDataset(part["annotations"], part["images"], spec["size"], image_ids=part["ids"])

    backbone = None
    if spec["train_cache"] is None:
        b = spec["backbone"]
        backbone = build_backbone(b["name"], weights=b["weights"], return_nodes=b["return_nodes"], freeze=b["freeze"],
                                  probe_size=spec["size"])
    task = ProxyTask(dataset(spec["train"]), dataset(spec["val"]), backbone,
                     backbone_weights=spec["backbone"]["weights"] or "random", spec=dict(spec))
    if spec["train_cache"] is not None:
        task.train_cache = FeatureCache(Path(spec["train_cache"]))
        task.val_cache = FeatureCache(Path(spec["val_cache"]))
    return task


def warmup_path(train, backbone: BackboneConfig, proxy: ProxyConfig, root: Path) -> Path:
    """Where the warm-up of ``backbone`` on ``train`` under ``proxy`` is (or will be) cached."""
    return _warmup_plan(train, backbone, proxy, root)[0]


def _warmup_plan(train, backbone: BackboneConfig, proxy: ProxyConfig, root: Path) -> tuple:
    """The warm-up's file, its cache key and its training recipe."""
    config = dataclasses.replace(proxy, steps=backbone.warmup_steps, lr=backbone.warmup_lr, eval_every=0,
                                 seed=backbone.warmup_seed,
                                 max_loss=ProxyConfig.max_loss, head_depth=WARMUP_HEAD_DEPTH, report_every=1,
                                 threads=None, aux_loss=0.0, detector="retinanet", roi_extractor="level")
    # Not in the key: what does not change the trained backbone (progress reports, threads; the
    # repeat cap, since the warm-up's FPN is a single cell; the auxiliary loss and the detector,
    # never used in a warm-up: it always trains inside the RetinaNet proxy, so that searches for
    # every detector, with consistent supervision or without, rank necks on one backbone's features).
    ignored = ("report_every", "eval_every", "threads", "max_repeats", "aux_loss", "detector", "roi_extractor")
    recipe = {k: v for k, v in dataclasses.asdict(config).items() if k not in ignored}
    key = {"dataset": dataset_fingerprint(train), "backbone": backbone.name, "return_nodes": backbone.return_nodes,
           "recipe": recipe, "precision": precision_name(config.amp, proxy_device()),
           # "anchors": warm-ups made before anchors were kept in float32 under autocast are not reused
           "torch": torch.__version__.split("+")[0], "anchors": "float32"}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return root / "warmup" / f"{backbone.name}-{digest}.pt", key, config


def warmup_backbone(train, val, backbone: BackboneConfig, proxy: ProxyConfig, root: Path) -> Path:
    """Train the backbone inside an FPN proxy for ``warmup_steps``; cached by its inputs."""
    path, key, config = _warmup_plan(train, backbone, proxy, root)
    if path.is_file():
        log.info("warm-up backbone from cache: %s", path)
        return path
    log.warning("warming up %s for %d steps on %d training images (once; cached in %s)",
                backbone.name, backbone.warmup_steps, len(train), path)
    net = build_backbone(backbone.name, return_nodes=backbone.return_nodes, freeze=False, probe_size=proxy.image_size)
    every = max(1, backbone.warmup_steps // 12)
    started = time.perf_counter()

    def progress(report: dict) -> None:
        step, total = report["step"], backbone.warmup_steps
        if step % every == 0:
            elapsed = time.perf_counter() - started
            log.warning("  warm-up step %d/%d, loss %.3f, %.0f s elapsed, ~%.0f s left", step, total, report["loss"],
                        elapsed, elapsed / step * (total - step))

    result = train_proxy(load_genotype("fpn"), ProxyTask(train, val, net), config, report=progress)
    if result["status"] != "ok":
        raise RuntimeError(f"backbone warm-up failed: {result['error']}")
    log.warning("warm-up done in %.0f s: FPN proxy AP %.3f on the validation split", result["seconds"], result["ap"])
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path.with_suffix(".json"), json.dumps({**key, "result": result}, indent=1))
    atomic_torch_save(net.body.state_dict(), path)  # last: the cache check looks for this file
    return path
