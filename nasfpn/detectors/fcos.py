"""The FCOS proxy: backbone -> neck (any genotype) -> torchvision's FCOS head, points and losses.

As :class:`nasfpn.detector.ProxyDetector` does for RetinaNet, this routes around torchvision's
image transform (the images are letterboxed to one size and C3..C5 may come from the feature
cache) and remembers each image's matching; torchvision does the rest: the head (classification,
box regression, centre-ness), the point-to-box assignment (centre sampling, a size range per
level), the focal, GIoU and centre-ness losses, decoding and NMS.
"""
from __future__ import annotations

import math
from functools import partial
from types import SimpleNamespace
from typing import Dict, List, Mapping, Optional

import torch
from torch import Tensor, nn
from torchvision.models.detection import FCOS
from torchvision.models.detection.fcos import FCOSClassificationHead, FCOSHead, FCOSRegressionHead

from ..detector import NeckDetector, _NoBackbone
from ..genotype import Genotype
from ..rfp import neck_pass
from .common import Float32Anchors, MatchMemo, canvas


class FCOSProxy(NeckDetector):
    """A small FCOS whose neck is built from a genotype; every output level P3..P7 is a level of
    FCOS's points, as in FCOS itself.

    Args:
        genotype, in_channels, num_classes, image_size, backbone, width: as
            :class:`~nasfpn.detector.ProxyDetector` (labels ``0..num_classes-1``, no background
            class: FCOS's scores are sigmoids).
        head_depth: conv + GroupNorm + ReLU layers in each head subnet (FCOS: 4). GroupNorm has
            32 groups where the width allows (FCOS's), else as many as divide it.
        score_thresh, nms_thresh, detections_per_img: postprocessing, torchvision's meaning
            (0.05 as the RetinaNet proxy, for COCO AP; NMS at FCOS's 0.6).
        remember_matches: keep each image's point assignment for the next time it is seen (CPU).
        aux_loss: AugFPN's consistent supervision in the dense form of the RetinaNet proxy: a
            second FCOS head (``aux_head``, its own weights shared across levels) on the neck's
            features before fusion, with the same points and assignment restricted to those
            levels, its losses times ``aux_loss``; training only.

    FCOS has no anchor scale: each point is a stride-sized box, as torchvision's FCOS needs it.
    """

    def __init__(self, genotype: Genotype, in_channels: Mapping[int, int], num_classes: int, image_size: int, *,
                 backbone: nn.Module | None = None, width: int | None = None, head_depth: int = 4,
                 score_thresh: float = 0.05, nms_thresh: float = 0.6, detections_per_img: int = 100,
                 remember_matches: bool = True, aux_loss: float = 0.0):
        super().__init__(genotype, in_channels, image_size, backbone=backbone, width=width, head_depth=head_depth,
                         aux_loss=aux_loss)
        levels = genotype.levels
        points = Float32Anchors(tuple((2 ** lv,) for lv in levels), ((1.0,),) * len(levels))
        width = self.neck.out_channels
        self.fcos = FCOS(_NoBackbone(width), num_classes, min_size=image_size, max_size=image_size,
                         anchor_generator=points, head=fcos_head(width, num_classes, head_depth),
                         score_thresh=score_thresh, nms_thresh=nms_thresh, detections_per_img=detections_per_img)
        self.matches = MatchMemo(remember_matches)
        # Consistent supervision: made last, so that the rest starts from the same initialisation.
        self.aux_loss = float(aux_loss)
        self.aux_levels = self.neck.pre_fusion_levels if aux_loss else []
        self.aux_head = fcos_head(width, num_classes, head_depth) if self.aux_levels else None
        if aux_loss and not self.aux_levels:
            self.warn_no_aux_levels(aux_loss, genotype, "makes no feature at its width before fusion")

    def forward(self, images: Optional[Tensor] = None, targets: Optional[List[Dict[str, Tensor]]] = None,
                features: Optional[Dict[str, Tensor]] = None):
        """Training: losses ``{"classification", "bbox_regression", "bbox_ctrness"}`` (and
        ``aux_`` each with consistent supervision, already weighted). Eval: detections per image
        (``boxes`` xyxy in canvas pixels, ``scores``, ``labels``). Arguments as
        :meth:`nasfpn.detector.ProxyDetector.forward`."""
        supervise_laterals = self.training and self.aux_head is not None
        # A recursive neck (RFP) runs the backbone again: neck_pass wires it.
        outputs, laterals = neck_pass(self, images, features, supervise_laterals)
        pyramid = list(outputs.values())
        # The head may compute in half precision; the losses, decoding and scores are in float32.
        head_outputs = {k: v.float() for k, v in self.fcos.head(pyramid).items()}
        images_seen = canvas(pyramid[0], self.image_size)
        points = self.fcos.anchor_generator(images_seen, pyramid)
        per_level = [p.shape[-2] * p.shape[-1] for p in pyramid]
        if self.training:
            if targets is None:
                raise ValueError("training needs targets")
            matched = [self._matched_points(t, p, per_level) for t, p in zip(targets, points)]
            losses = self.fcos.head.compute_loss(targets, head_outputs, points, matched)
            if supervise_laterals:
                aux = self._lateral_losses(laterals, per_level, targets, points, matched)
                losses.update({f"aux_{name}": self.aux_loss * value for name, value in aux.items()})
            return losses
        # As FCOS.forward does in eval: split per level, then decode, score and NMS.
        split_outputs = {k: list(v.split(per_level, dim=1)) for k, v in head_outputs.items()}
        split_points = [list(p.split(per_level)) for p in points]
        return self.fcos.postprocess_detections(split_outputs, split_points, images_seen.image_sizes)

    def _matched_points(self, target: Dict[str, Tensor], points: Tensor, per_level: List[int]) -> Tensor:
        """torchvision's FCOS assignment of one image's points to its boxes (-1: background)."""
        def assign():
            # FCOS.compute_loss assigns, then hands the assignment to its head's loss: called
            # with a head that returns it, it is torchvision's assignment alone.
            only = SimpleNamespace(head=_AssignmentOnly, center_sampling_radius=self.fcos.center_sampling_radius)
            return (FCOS.compute_loss(only, [target], {}, [points], per_level)[0].to(torch.int16),)

        return self.matches(target["boxes"], points, assign)[0].long()

    def _lateral_losses(self, laterals: Dict[str, Tensor], per_level: List[int], targets: List[Dict[str, Tensor]],
                        points: List[Tensor], matched: List[Tensor]) -> Dict[str, Tensor]:
        """The main losses, unweighted, of the auxiliary head on the pre-fusion features, over
        the points of their levels with the main loss's assignment."""
        starts = {f"p{lv}": sum(per_level[:i]) for i, lv in enumerate(self.neck.levels)}
        sizes = dict(zip(starts, per_level))
        for name, x in laterals.items():
            if x.shape[-2] * x.shape[-1] != sizes[name]:
                raise RuntimeError(f"the lateral {name} is {tuple(x.shape[-2:])}, not the grid of its output level: "
                                   "the auxiliary loss needs the same grid")
        keep = torch.cat([torch.arange(starts[name], starts[name] + sizes[name]) for name in laterals])
        keep = keep.to(points[0].device)
        outputs = {k: v.float() for k, v in self.aux_head(list(laterals.values())).items()}
        return self.aux_head.compute_loss(targets, outputs, [p[keep] for p in points], [m[keep] for m in matched])


class _AssignmentOnly:
    """Stands in for FCOS's head inside ``FCOS.compute_loss``: returns the assignment it is given."""

    @staticmethod
    def compute_loss(targets, head_outputs, anchors, matched_idxs):
        return matched_idxs


def fcos_head(width: int, num_classes: int, depth: int) -> FCOSHead:
    """torchvision's FCOS head with ``depth`` layers per subnet, GroupNorm with 32 groups or as
    many as divide ``width`` (the proxy's test widths are below 32)."""
    head = FCOSHead(width, 1, num_classes, num_convs=0)
    norm = partial(nn.GroupNorm, math.gcd(32, width))
    head.classification_head = FCOSClassificationHead(width, 1, num_classes, depth, norm_layer=norm)
    head.regression_head = FCOSRegressionHead(width, 1, depth, norm_layer=norm)
    return head
