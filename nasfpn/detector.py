"""The proxy detector: backbone -> neck (any genotype) -> torchvision's RetinaNet head.

torchvision's ``RetinaNet`` supplies the head, anchors, focal loss, box coding, matching and
NMS; this module only routes around its image transform, because the proxy's images are already
letterboxed to one size and, with a frozen backbone, its C3..C5 may come from the feature cache
instead of the backbone.

With ``aux_loss`` above 0 it adds AugFPN's consistent supervision (Guo et al., CVPR 2020) in a
single-stage form, during training only: see :class:`ProxyDetector`.
"""
from __future__ import annotations

import logging
import math
from typing import Dict, List, Mapping, Optional

import torch
from torch import Tensor, nn
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.ops import boxes as box_ops

from .genotype import Genotype
from .neck import Neck, build_neck
from .rfp import check_backbone, neck_pass

log = logging.getLogger(__name__)
MATCH_MEMORY = 64 * 2 ** 20  # bytes of remembered anchor matches per detector (1,280 at 256 px: 31 MB)


class _NoBackbone(nn.Module):
    """RetinaNet insists on a backbone with ``out_channels``; ours lives beside it."""

    def __init__(self, out_channels: int):
        super().__init__()
        self.out_channels = out_channels


class NeckDetector(nn.Module):
    """What every proxy detector (RetinaNet here, FCOS and Faster R-CNN in
    :mod:`nasfpn.detectors`) starts with, in this order (the order of random initialisation): its
    head arguments checked, the backbone (None when features always come from the cache), the
    neck built from the genotype, and the letterboxed image size."""

    def __init__(self, genotype: Genotype, in_channels: Mapping[int, int], image_size: int, *,
                 backbone: nn.Module | None, width: int | None, head_depth: int, aux_loss: float):
        super().__init__()
        if not 0 <= head_depth <= 4:
            raise ValueError(f"head_depth must be 0..4 (torchvision's heads have 4 layers), got {head_depth}")
        if isinstance(aux_loss, bool) or not isinstance(aux_loss, (int, float)) or not 0 <= aux_loss < math.inf:
            raise ValueError(f"aux_loss must be a finite number >= 0 (0: off), got {aux_loss!r}")
        self.backbone = backbone
        self.neck: Neck = build_neck(genotype, in_channels, width)
        check_backbone(self.neck, backbone)  # one a recursive neck cannot feed back into is refused now
        self.image_size = image_size

    def features(self, images: Tensor) -> Dict[str, Tensor]:
        if self.backbone is None:
            raise RuntimeError("this proxy has no backbone: pass cached features")
        return self.backbone(images)

    def warn_no_aux_levels(self, aux_loss: float, genotype: Genotype, why: str) -> None:
        """Consistent supervision asked for, with nothing to supervise (``why``)."""
        log.warning("aux_loss %g: the neck %s %s; no auxiliary loss", aux_loss,
                    genotype.name or genotype.hash()[:12], why)


class ProxyDetector(NeckDetector):
    """A small RetinaNet whose neck is built from a genotype.

    Args:
        genotype: the neck.
        in_channels: backbone channels per level (``Backbone.channels``).
        num_classes: object classes (labels ``0..num_classes-1``).
        image_size: the letterboxed input size.
        backbone: the backbone module, or None when features always come from the cache.
        width: neck and head width (the genotype's when None).
        head_depth: 3x3 conv layers in each head subnet before its predictor (RetinaNet: 4).
        anchor_scale: anchor size in strides (RetinaNet: 4, i.e. 32 px at P3); 3 scales x 3
            aspect ratios per position as in RetinaNet.
        score_thresh, nms_thresh, detections_per_img: postprocessing, torchvision's meaning.
        remember_matches: keep each image's anchor matching for the next time it is seen (CPU).
        aux_loss: weight of the consistent-supervision loss (0: off; 0.25 is AugFPN's). When on,
            a second RetinaNet head (``aux_head``: its own weights, shared across levels, as
            deep as the main head) predicts from the neck's features before fusion
            (:meth:`nasfpn.neck.Neck.forward_with_laterals`: the width-``w`` laterals of C3..C5
            and the extra levels the neck makes before its cells), and the same focal and box
            losses, with the same anchors and the same anchor matches restricted to those
            levels, are added times ``aux_loss``. Training only: evaluation never runs the
            auxiliary head, and it is not part of the neck (nor of the neck's parameter count,
            nor of an exported neck).

    Where this differs from AugFPN: its consistent supervision pools RoI features from every
    lateral through a separate RoI head shared across levels (two-stage detectors: the
    proposals; its RetinaNet variant: boxes decoded from RetinaNet's own predictions, assigned
    and sampled as RoIs, laterals of C3..C5 only), and each level's loss is weighted 0.25 on its
    own. Here the auxiliary head is dense: a separate RetinaNet head applied to every lateral
    level as the main head is to the outputs, each anchor supervised once, at its own level,
    by the same matching as the main loss; the weight multiplies that one loss. Levels the neck
    makes only after fusion (``extra.source: output``, as FPN's P6-P7) get no auxiliary loss,
    and a neck without a shared lateral (``edge_conv_bn``, BiFPN) has only its extra levels.
    """

    def __init__(self, genotype: Genotype, in_channels: Mapping[int, int], num_classes: int, image_size: int, *,
                 backbone: nn.Module | None = None, width: int | None = None, head_depth: int = 4,
                 anchor_scale: float = 4.0, score_thresh: float = 0.05, nms_thresh: float = 0.5,
                 detections_per_img: int = 100, remember_matches: bool = True, aux_loss: float = 0.0):
        super().__init__(genotype, in_channels, image_size, backbone=backbone, width=width, head_depth=head_depth,
                         aux_loss=aux_loss)
        levels = genotype.levels
        sizes = tuple(tuple(anchor_scale * 2 ** lv * 2 ** (k / 3) for k in range(3)) for lv in levels)
        anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(levels))
        head = _retinanet_head(self.neck.out_channels, anchors.num_anchors_per_location()[0], num_classes, head_depth)
        self.retinanet = RetinaNet(_NoBackbone(self.neck.out_channels), num_classes, min_size=image_size,
                                   max_size=image_size, anchor_generator=anchors, head=head,
                                   score_thresh=score_thresh, nms_thresh=nms_thresh,
                                   detections_per_img=detections_per_img)
        self.remember_matches = remember_matches
        self._matches: Dict[tuple, Tensor] = {}
        self._matches_bytes = 0
        # Consistent supervision: made last, so that the rest starts from the same random
        # initialisation with it or without it.
        self.aux_loss = float(aux_loss)
        self.aux_levels = self.neck.pre_fusion_levels if aux_loss else []
        self.aux_head = _retinanet_head(self.neck.out_channels, anchors.num_anchors_per_location()[0], num_classes,
                                        head_depth) if self.aux_levels else None
        if aux_loss and not self.aux_levels:
            self.warn_no_aux_levels(aux_loss, genotype, "makes no feature at its width before fusion")

    def _matched_anchors(self, boxes: Tensor, anchors: Tensor) -> Tensor:
        """RetinaNet's anchor-to-box matching (torchvision's IoU and Matcher, as in its
        ``compute_loss``), remembered per set of boxes on the CPU: the anchors never change and a
        proxy sees each image (and flip) several times, and matching was 17% of a cached CPU
        training step (14 of 83 ms, FPN, batch 8, 256 px)."""
        if boxes.numel() == 0:
            return torch.full((anchors.shape[0],), -1, dtype=torch.int64, device=anchors.device)
        remember = self.remember_matches and boxes.device.type == "cpu" and len(boxes) < 2 ** 15
        # The anchors are fixed by the image size; their count guards against another size.
        key = (anchors.shape[0], str(boxes.dtype), boxes.numpy().tobytes()) if remember else None
        if remember and key in self._matches:
            return self._matches[key].long()
        matched = self.retinanet.proposal_matcher(box_ops.box_iou(boxes, anchors))
        if remember and self._matches_bytes < MATCH_MEMORY:
            self._matches[key] = matched.to(torch.int16)  # -2, -1 or a box index: small
            self._matches_bytes += 2 * matched.numel()
        return matched

    def forward(self, images: Optional[Tensor] = None, targets: Optional[List[Dict[str, Tensor]]] = None,
                features: Optional[Dict[str, Tensor]] = None):
        """Training: losses ``{"classification", "bbox_regression"}``, and with consistent
        supervision ``aux_classification`` and ``aux_bbox_regression`` too (already times
        ``aux_loss``: the total loss is the sum of the values). Eval: detections per image
        (``boxes`` xyxy in canvas pixels, ``scores``, ``labels``).

        Args:
            images: float ``[B, 3, S, S]`` in [0, 1], letterboxed; or None with ``features``.
            targets: per image ``boxes`` (xyxy, canvas pixels) and ``labels`` (training only).
            features: C3..C5 from the cache, instead of running the backbone.
        """
        supervise_laterals = self.training and self.aux_head is not None
        # A recursive neck (RFP) runs the backbone again: neck_pass wires it.
        outputs, laterals = neck_pass(self, images, features, supervise_laterals)
        pyramid = list(outputs.values())
        batch = pyramid[0].shape[0]
        # Under autocast the head computes in half precision; the focal loss, box decoding and
        # scores are taken in float32.
        head_outputs = {k: v.float() for k, v in self.retinanet.head(pyramid).items()}
        # The anchor generator reads only sizes, the device and the dtype of what it is given;
        # float32 stand-ins, so that anchors stay exact under autocast (bfloat16 would round a
        # 256-pixel anchor to 2 pixels).
        canvas = ImageList(pyramid[0].new_empty(batch, 0, self.image_size, self.image_size, dtype=torch.float32),
                           [(self.image_size, self.image_size)] * batch)
        grids = [p.new_empty(0, 0, *p.shape[-2:], dtype=torch.float32) for p in pyramid]
        anchors = self.retinanet.anchor_generator(canvas, grids)
        if self.training:
            if targets is None:
                raise ValueError("training needs targets")
            matched = [self._matched_anchors(t["boxes"], a) for t, a in zip(targets, anchors)]
            losses = self.retinanet.head.compute_loss(targets, head_outputs, anchors, matched)
            if supervise_laterals:
                # Consistent supervision, dense: a separate RetinaNet head on the laterals with
                # these matches, where AugFPN pools RoIs from each lateral into a separate RoI
                # head and weights each level's loss (class docstring).
                aux = self._lateral_losses(laterals, pyramid, targets, anchors, matched)
                losses.update({f"aux_{name}": self.aux_loss * value for name, value in aux.items()})
            return losses
        # As RetinaNet.forward does in eval: split per level, then decode, score and NMS.
        per_level = [x.shape[2] * x.shape[3] for x in pyramid]
        per_anchor = head_outputs["cls_logits"].shape[1] // sum(per_level)
        split = [n * per_anchor for n in per_level]
        split_outputs = {k: list(v.split(split, dim=1)) for k, v in head_outputs.items()}
        split_anchors = [list(a.split(split)) for a in anchors]
        return self.retinanet.postprocess_detections(split_outputs, split_anchors, canvas.image_sizes)

    def _lateral_losses(self, laterals: Dict[str, Tensor], pyramid: List[Tensor], targets: List[Dict[str, Tensor]],
                        anchors: List[Tensor], matched: List[Tensor]) -> Dict[str, Tensor]:
        """The main losses, unweighted, of the auxiliary head on the pre-fusion features, over
        the anchors of their levels with the main loss's matches (AugFPN's consistent
        supervision in dense single-stage form: see the class docstring)."""
        # The anchors of one image are level after level (finest first), H x W x A each.
        per_anchor = anchors[0].shape[0] // sum(p.shape[-2] * p.shape[-1] for p in pyramid)
        ranges, start = {}, 0
        for level, p in zip(self.neck.levels, pyramid):
            ranges[f"p{level}"] = (start, start + p.shape[-2] * p.shape[-1] * per_anchor, p.shape[-2:])
            start = ranges[f"p{level}"][1]
        for name, x in laterals.items():
            if x.shape[-2:] != ranges[name][2]:
                raise RuntimeError(f"the lateral {name} is {tuple(x.shape[-2:])}, its output level "
                                   f"{tuple(ranges[name][2])}: the auxiliary loss needs the same grid")
        keep = [ranges[name][:2] for name in laterals]

        def kept(x: Tensor) -> Tensor:
            return torch.cat([x[a:b] for a, b in keep]) if len(keep) > 1 else x[keep[0][0]:keep[0][1]]

        outputs = {k: v.float() for k, v in self.aux_head(list(laterals.values())).items()}  # losses in float32
        return self.aux_head.compute_loss(targets, outputs, [kept(a) for a in anchors], [kept(m) for m in matched])


def _retinanet_head(width: int, num_anchors: int, num_classes: int, depth: int) -> RetinaNetHead:
    head = RetinaNetHead(width, num_anchors, num_classes)
    for subnet in (head.classification_head, head.regression_head):
        subnet.conv = subnet.conv[:depth]  # torchvision builds 4; the proxy may keep fewer
    return head
