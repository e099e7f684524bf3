"""The proxy detectors a neck can be searched for: one table from a name to its builder.

Each is torchvision's own detector (``RetinaNet``, ``FCOS``, Faster R-CNN's parts) around the
neck of a genotype and, optionally, the backbone; the images are letterboxed to one size and
C3..C5 may come from the feature cache. All share one interface, what :func:`nasfpn.train.train_proxy`
and :func:`nasfpn.evaluate.evaluate` use:

- ``model(images, targets, features)``: ``images`` float ``[B, 3, S, S]`` in [0, 1] or None
  with ``features`` (C3..C5, from the cache); ``targets`` per image ``boxes`` (xyxy, canvas
  pixels) and ``labels`` (``0..num_classes-1``), training only.
- training: a dict of scalar losses, float32 under autocast, whose sum is the loss (auxiliary
  ones, named ``aux_...``, already weighted);
- eval: per image ``boxes`` (xyxy, canvas pixels), ``scores`` and ``labels`` (``0..num_classes-1``);
- ``model.neck``: the neck alone (what is counted, and exported).
"""
from __future__ import annotations

from typing import Callable, Dict, Mapping

from torch import nn

from ..detector import ProxyDetector
from ..genotype import Genotype
from .faster_rcnn import FasterRCNNProxy
from .fcos import FCOSProxy
from .roi import ROI_EXTRACTORS, SoftRoISelection

__all__ = ["DETECTORS", "ROI_EXTRACTORS", "FCOSProxy", "FasterRCNNProxy", "ProxyDetector", "SoftRoISelection",
           "build_detector"]


def _retinanet(genotype, in_channels, num_classes, image_size, *, backbone, width, head_depth, anchor_scale, aux_loss,
               roi_extractor):
    return ProxyDetector(genotype, in_channels, num_classes, image_size, backbone=backbone, width=width,
                         head_depth=head_depth, anchor_scale=anchor_scale, aux_loss=aux_loss)


def _fcos(genotype, in_channels, num_classes, image_size, *, backbone, width, head_depth, anchor_scale, aux_loss,
          roi_extractor):
    # No anchor scale: FCOS's points are stride-sized (torchvision's FCOS), whatever anchor_scale says.
    return FCOSProxy(genotype, in_channels, num_classes, image_size, backbone=backbone, width=width,
                     head_depth=head_depth, aux_loss=aux_loss)


def _faster_rcnn(genotype, in_channels, num_classes, image_size, *, backbone, width, head_depth, anchor_scale,
                 aux_loss, roi_extractor):
    return FasterRCNNProxy(genotype, in_channels, num_classes, image_size, backbone=backbone, width=width,
                           head_depth=head_depth, anchor_scale=anchor_scale, roi_extractor=roi_extractor,
                           aux_loss=aux_loss)


DETECTORS: Dict[str, Callable[..., nn.Module]] = {"retinanet": _retinanet, "fcos": _fcos, "faster_rcnn": _faster_rcnn}
TWO_STAGE = ("faster_rcnn",)  # the detectors with an RoI extractor


def detector_problem(detector: object, roi_extractor: object) -> str | None:
    """What is wrong with this pair of settings (the message, without the key's section), or None."""
    if not isinstance(detector, str) or detector not in DETECTORS:
        return f"detector: one of {sorted(DETECTORS)}, got {detector!r}"
    if not isinstance(roi_extractor, str) or roi_extractor not in ROI_EXTRACTORS:
        return f"roi_extractor: one of {list(ROI_EXTRACTORS)}, got {roi_extractor!r}"
    if roi_extractor != "level" and detector not in TWO_STAGE:
        return (f"roi_extractor: {roi_extractor!r} is an RoI extractor of a two-stage detector "
                f"({', '.join(TWO_STAGE)}); the detector is {detector!r}")
    return None


def build_detector(name: str, genotype: Genotype, in_channels: Mapping[int, int], num_classes: int, image_size: int,
                   *, backbone: nn.Module | None = None, width: int | None = None, head_depth: int = 4,
                   anchor_scale: float = 4.0, aux_loss: float = 0.0, roi_extractor: str = "level") -> nn.Module:
    """The proxy detector ``name`` (a key of :data:`DETECTORS`) around ``genotype``'s neck.

    Raises:
        ValueError: an unknown detector or RoI extractor, or ``roi_extractor`` other than
            ``level`` for a single-stage detector (naming the valid ones).
    """
    problem = detector_problem(name, roi_extractor)
    if problem:
        raise ValueError(problem)
    return DETECTORS[name](genotype, in_channels, num_classes, image_size, backbone=backbone, width=width,
                           head_depth=head_depth, anchor_scale=anchor_scale, aux_loss=aux_loss,
                           roi_extractor=roi_extractor)
