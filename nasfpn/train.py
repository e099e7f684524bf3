"""Train one proxy detector with a candidate neck and score it: the reward of a search.

``ProxyTask`` is what every candidate of a search shares (data splits, the backbone, the
feature caches); it is prepared once. ``train_proxy(genotype, task, config)`` trains a fresh
detector for a fixed step budget and returns a plain dict: COCO AP and its breakdown, the neck's
parameters and multiply-adds, wall time, and a status. A non-finite or exploding loss ends the
trial with ``status: "failed"`` instead of an exception, so a search goes on.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional

import torch

from .cache import FeatureCache
from .detectors import build_detector, detector_problem
from .evaluate import METRICS, evaluate
from .genotype import Genotype
from .profile import count_macs, count_params
from .recursion import cached_backbone_problem
from .neck import example_inputs

log = logging.getLogger(__name__)
Reporter = Callable[[Dict[str, Any]], None]


@dataclass(frozen=True)
class ProxyConfig:
    """How a candidate is trained and scored (one recipe for every neck of a search).

    The defaults are the CPU proxy measured in scripts/bench_proxy.py: 600 steps at lr 2e-3 with
    a one-layer head reach about 3x the AP of 300 steps at 5e-4 on the built-in data, for about
    a minute a candidate on two CPU threads with the feature cache (one cell of any neck)."""
    image_size: int = 256
    width: int = 64
    # Stacked cells are capped in the proxy, as width is: the search ranks cells, and a 600-step
    # CPU proxy under-trains a stack of freshly initialised cells. Measured on the built-in data:
    # at 3 repeats BiFPN 0.270 and NAS-FPN 0.258 AP (1 seed) fell below a neck with no top-down
    # path (0.282, 2 seeds); as one cell they score 0.290-0.309 and 0.301-0.317 (2 seeds), above
    # it, in about half the time.
    # NAS-FPN's own search proxy (10 COCO epochs on TPUs) stacked 3. None: every neck's own repeats.
    max_repeats: Optional[int] = 1
    # The detector the neck is searched for: ``retinanet``, ``fcos`` or ``faster_rcnn`` (see
    # nasfpn.detectors), built from torchvision's own parts at the proxy's sizes. The head depth
    # is each dense head's (RetinaNet's and FCOS's subnets, the RPN head); FCOS ignores the
    # anchor scale (its points are stride-sized); ``roi_extractor`` is Faster R-CNN's: ``level``
    # (torchvision's MultiScaleRoIAlign) or ``soft`` (AugFPN's soft RoI selection).
    detector: str = "retinanet"
    roi_extractor: str = "level"
    head_depth: int = 1
    anchor_scale: float = 2.0
    # AugFPN's consistent supervision: the detection loss also on the neck's laterals before
    # fusion, through a separate training-only head, times this weight. 0 is off (every recipe
    # before it); 0.25 is AugFPN's weight. One number rather than a switch and a weight: no
    # weight that does nothing while off, and the recipe names what changes the score.
    aux_loss: float = 0.0
    steps: int = 600
    batch_size: int = 8
    optimizer: str = "adamw"
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 30
    grad_clip: float = 5.0
    seed: int = 0
    report_every: int = 25
    eval_every: int = 0
    max_loss: float = 1e3
    threads: Optional[int] = None
    amp: bool = True  # mixed precision on CUDA, and on CPUs with native bfloat16 (see autocast_settings)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("image_size", "width", "steps", "batch_size") and (not isinstance(value, int) or value < 1):
                raise ValueError(f"proxy.{f.name}: must be a positive integer, got {value!r}")
        if self.max_repeats is not None and (isinstance(self.max_repeats, bool) or not isinstance(self.max_repeats, int)
                                             or self.max_repeats < 1):
            raise ValueError(f"proxy.max_repeats: a positive integer or null, got {self.max_repeats!r}")
        if self.image_size % 128:
            raise ValueError(f"proxy.image_size: must be a multiple of 128 (P7's stride), got {self.image_size}")
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"proxy.optimizer: 'adamw' or 'sgd', got {self.optimizer!r}")
        problem = detector_problem(self.detector, self.roi_extractor)
        if problem:
            raise ValueError(f"proxy.{problem}")
        if not 0 <= self.head_depth <= 4:
            raise ValueError(f"proxy.head_depth: 0..4, got {self.head_depth!r}")
        if isinstance(self.aux_loss, bool) or not isinstance(self.aux_loss, (int, float)) \
                or not 0 <= self.aux_loss < math.inf:
            raise ValueError(f"proxy.aux_loss: a finite number >= 0 (0: off; AugFPN's weight is 0.25), "
                             f"got {self.aux_loss!r}")
        object.__setattr__(self, "aux_loss", float(self.aux_loss))  # 1 and 1.0 name one recipe
        if self.lr <= 0 or self.grad_clip <= 0:
            raise ValueError("proxy.lr and proxy.grad_clip must be positive")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "ProxyConfig":
        return section(cls, data, "proxy")


def section(cls, data: Mapping[str, Any] | None, name: str):
    """Build a config dataclass from a YAML section; unknown keys name the valid ones."""
    data = dict(data or {})
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(valid))
    if unknown:
        raise ValueError(f"{name}: unknown key(s) {unknown}; valid keys are {valid}")
    return cls(**data)


@dataclass
class ProxyTask:
    """Data splits, backbone and feature caches shared by every candidate of a search."""
    train: Any
    val: Any
    backbone: Any
    train_cache: Optional[FeatureCache] = None
    val_cache: Optional[FeatureCache] = None
    backbone_weights: str = "random"

    spec: Optional[Dict[str, Any]] = None  # how a worker process rebuilds this task (see nasfpn.task)

    @property
    def num_classes(self) -> int:
        return self.train.num_classes

    @property
    def channels(self) -> Dict[int, int]:
        """Backbone channels per level (from the cache when no backbone is loaded)."""
        if self.backbone is not None:
            return self.backbone.channels
        return {int(k): v for k, v in self.train_cache.meta["channels"].items()}

    def batch(self, split: str, indices: List[int], flips: List[bool]):
        """(images or None, features or None, targets) for dataset indices of a split."""
        dataset, cache = (self.train, self.train_cache) if split == "train" else (self.val, self.val_cache)
        if cache is not None:
            return None, cache.features(indices, flips), cache.batch_targets(indices, flips)
        loaded = [dataset.load(i, flip=f) for i, f in zip(indices, flips)]
        targets = [{"boxes": t["boxes"], "labels": t["labels"]} for _, t in loaded]
        return torch.stack([img for img, _ in loaded]), None, targets


def train_proxy(genotype: Genotype, task: ProxyTask, config: ProxyConfig,
                report: Optional[Reporter] = None) -> Dict[str, Any]:
    """Train a proxy detector with ``genotype``'s neck and evaluate it on the validation split.

    Args:
        report: called every ``config.report_every`` steps with ``{"step", "loss"}`` and, every
            ``config.eval_every`` steps, the AP metrics and the neck's ``params``/``macs`` too
            (what ASHA stops trials on).

    Returns:
        ``status`` ("ok" or "failed"), ``error``, the AP metrics, ``params``/``macs`` of the neck
        as the proxy builds it (proxy width, ``proxy_repeats`` repeats),
        ``steps`` done, ``train_seconds``, ``eval_seconds``, ``seconds``, ``final_loss`` (the
        total: with ``config.aux_loss`` the weighted auxiliary loss too), ``precision`` and
        ``detector`` (``config.detector``).

    Raises:
        ValueError: a genotype with ``recursion`` on a task whose frozen backbone is cached
            (:func:`nasfpn.task.task_problem` says so before a task is prepared).
    """
    start = time.perf_counter()
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    device = proxy_device()
    cached = task.train_cache is not None
    problem = cached_backbone_problem(genotype) if cached else ""
    if problem:  # never another neck trained under its name
        raise ValueError(problem)
    genotype = proxy_genotype(genotype, config)
    model = build_detector(config.detector, genotype, task.channels, task.num_classes, config.image_size,
                           backbone=None if cached else task.backbone, width=config.width,
                           head_depth=config.head_depth, anchor_scale=config.anchor_scale,
                           aux_loss=config.aux_loss, roi_extractor=config.roi_extractor)
    # Channels-last: mkldnn's convolutions skip a layout conversion per call. Measured on the
    # 2-core AMD EPYC, one thread, Lite0 features: a float32 step 10% faster for FPN (176 ->
    # 158 ms) and 20% for NAS-FPN's cell (520 -> 413 ms); the same arithmetic.
    model = model.to(device, memory_format=torch.channels_last)
    neck_cost = _neck_cost(model, task.channels, config.image_size)
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "adamw":
        optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.SGD(params, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, config))
    amp, amp_dtype = autocast_settings(config.amp, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp and amp_dtype == torch.float16)
    order = torch.Generator().manual_seed(config.seed)
    permutation: List[int] = []
    result: Dict[str, Any] = {"status": "ok", "error": None, **neck_cost, "steps": 0, "proxy_repeats": genotype.repeats,
                              "precision": precision_name(config.amp, device), "detector": config.detector}
    loss_value = math.nan
    model.train()
    for step in range(1, config.steps + 1):
        if len(permutation) < config.batch_size:
            permutation += torch.randperm(len(task.train), generator=order).tolist()
        indices, permutation = permutation[:config.batch_size], permutation[config.batch_size:]
        flips = (torch.rand(len(indices), generator=order) < 0.5).tolist()
        images, features, targets = task.batch("train", indices, flips)
        images, features, targets = _to(device, images, features, targets)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
            losses = model(images, targets, features)
            loss = sum(losses.values())
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value) or loss_value > config.max_loss:
            result.update(status="failed", error=f"loss {loss_value:.4g} at step {step} (non-finite or above "
                                                 f"max_loss {config.max_loss:g})", steps=step)
            break
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        schedule.step()
        result["steps"] = step
        metrics: Dict[str, Any] = {}
        if config.eval_every and step % config.eval_every == 0 and step < config.steps:
            metrics = {**_evaluate(model, task, device), **neck_cost,
                       "seconds": round(time.perf_counter() - start, 3)}  # what a trial stopped here cost
            model.train()
        if report is not None and (metrics or step % config.report_every == 0):
            report({"step": step, "loss": loss_value, **metrics})
    result["final_loss"] = loss_value
    result["train_seconds"] = round(time.perf_counter() - start, 3)
    if result["status"] == "ok":
        eval_start = time.perf_counter()
        result.update(_evaluate(model, task, device))
        result["eval_seconds"] = round(time.perf_counter() - eval_start, 3)
    else:
        result.update({m: 0.0 for m in METRICS})
        result["eval_seconds"] = 0.0
    result["seconds"] = round(time.perf_counter() - start, 3)
    return result


def proxy_device() -> torch.device:
    """Where proxies train: the GPU Ray gave the trial (it sees only its own), else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def native_cpu_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AMX or AVX-512 BF16): there, autocast to
    bfloat16 makes a ResNet-18 training step 2.2x faster (forward + backward, batch 8, 256 px,
    measured on this project's machine); elsewhere it would be emulated and slower."""
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")  # private in torch.cpu; absent = no
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def autocast_settings(amp: bool, device: torch.device) -> tuple[bool, torch.dtype]:
    """``(enabled, dtype)`` of mixed precision: on CUDA bfloat16 where supported, else float16
    (with a gradient scaler); on a CPU bfloat16 where it is native, else off."""
    if not amp:
        return False, torch.float32
    if device.type == "cuda":
        return True, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return (True, torch.bfloat16) if native_cpu_bf16() else (False, torch.float32)


def precision_name(amp: bool, device: torch.device) -> str:
    """"bfloat16", "float16" or "float32": what a proxy with ``amp`` computes in on ``device``."""
    enabled, dtype = autocast_settings(amp, device)
    return str(dtype).replace("torch.", "") if enabled else "float32"


def proxy_genotype(genotype: Genotype, config: ProxyConfig) -> Genotype:
    """The neck the proxy trains: ``genotype`` with its repeats capped at ``config.max_repeats``
    (the width is the proxy's too; see :class:`nasfpn.detector.ProxyDetector`)."""
    if config.max_repeats is None or genotype.repeats <= config.max_repeats:
        return genotype
    return dataclasses.replace(genotype, repeats=config.max_repeats)


def _evaluate(model: torch.nn.Module, task: ProxyTask, device: torch.device) -> Dict[str, float]:
    model.eval()

    def detect(indices: List[int]):
        images, features, _ = task.batch("val", indices, [False] * len(indices))
        images, features, _ = _to(device, images, features, None)
        return model(images, None, features)

    return evaluate(detect, task.val)


def _neck_cost(model: torch.nn.Module, channels: Mapping[int, int], image_size: int) -> Dict[str, int]:
    neck = model.neck
    device = next(neck.parameters()).device
    was_training = neck.training
    neck.eval()
    x = {k: v.to(device) for k, v in example_inputs(channels, image_size).items()}
    cost = {"params": count_params(neck), "macs": count_macs(neck, x)}
    neck.train(was_training)
    return cost


def _lr_factor(step: int, config: ProxyConfig) -> float:
    """Linear warm-up, then cosine decay to 0 over the step budget."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _to(device, images, features, targets):
    if images is not None:
        images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
    if features is not None:
        features = {k: v.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
                    for k, v in features.items()}
    if targets is not None:
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
    return images, features, targets
