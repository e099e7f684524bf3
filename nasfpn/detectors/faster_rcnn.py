"""The Faster R-CNN proxy: backbone -> neck (any genotype) -> torchvision's RPN and RoI heads.

torchvision supplies the region proposal network (head, anchors, matching, sampling, losses,
proposal NMS), the RoI pooling (``MultiScaleRoIAlign``), the box head (``TwoMLPHead``) and
predictor, the RoI sampling (``RoIHeads.select_training_samples``), the Fast R-CNN loss and the
postprocessing. This module routes around torchvision's image transform, as the RetinaNet proxy
does, and adds what torchvision does not have: AugFPN's soft RoI selection
(:mod:`nasfpn.detectors.roi`) and its consistent supervision in two-stage form.

Levels: the RPN runs on every output level (P3..P7), as torchvision's FPN Faster R-CNN does on
P2..P6; RoIs are pooled from the levels with a backbone feature (P3..P5), as it pools from
P2..P5 and leaves the extra level to the RPN.

Labels: the dataset's are ``0..num_classes-1``; torchvision's box predictor counts the
background as class 0, so targets go in shifted by one and detections come out shifted back.
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Tuple

import torch
from torch import Tensor, nn
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead

from ..detector import NeckDetector
from ..genotype import Genotype
from ..rfp import neck_pass
from .common import Float32Anchors, MatchMemo, canvas
from .roi import OUTPUT_SIZE, make_roi_extractor, pool_every_level


# The proxy's sizes, small for a CPU (torchvision's for 800-pixel COCO images in brackets): RPN
# proposals kept per level before NMS 600 training / 300 testing (2000 / 1000), after NMS 300 /
# 100 (2000 / 1000); 256 anchors sampled per image for the RPN loss (256); 128 RoIs sampled per
# image for the box loss (512), a quarter positive (0.25); a box head of two fully connected
# layers of 4 x the width (1024 at 256).
RPN_PRE_NMS = {"training": 600, "testing": 300}
RPN_POST_NMS = {"training": 300, "testing": 100}
RPN_ANCHORS_PER_IMAGE = 256
ROIS_PER_IMAGE = 128
REPRESENTATION = 4  # x the width


class FasterRCNNProxy(NeckDetector):
    """A small Faster R-CNN whose neck is built from a genotype.

    Args:
        genotype, in_channels, num_classes, image_size, backbone, width: as
            :class:`~nasfpn.detector.ProxyDetector` (labels ``0..num_classes-1``).
        head_depth: 3x3 conv layers of the RPN head (torchvision's: 1).
        anchor_scale: RPN anchor side in strides (one size a level, aspect ratios 0.5, 1, 2, as
            torchvision's Faster R-CNN; its anchors are 8 strides at 800 pixels). It also sets
            which level ``level`` pools a RoI from: the level whose anchor side the RoI's side
            reaches, FPN's rule with P4 at ``16 * anchor_scale`` pixels instead of 224.
        roi_extractor: ``level`` (torchvision's ``MultiScaleRoIAlign``: each RoI from one level)
            or ``soft`` (AugFPN's soft RoI selection: every level, weighed; see
            :class:`~nasfpn.detectors.roi.SoftRoISelection`).
        score_thresh, nms_thresh, detections_per_img: postprocessing of the box head,
            torchvision's meaning.
        remember_matches: keep each image's RPN anchor matching for the next time it is seen
            (CPU). The RoIs' matching is not kept: the proposals change every step.
        aux_loss: AugFPN's consistent supervision, two-stage form (training only): the sampled
            RoIs are also pooled from each lateral before fusion (RoIAlign at that level alone),
            through a separate box head and predictor shared across levels (``aux_box_head``,
            ``aux_box_predictor``), with the same labels and box targets; each level's Fast
            R-CNN loss times ``aux_loss``, summed over the levels, as AugFPN weighs them (0.25
            each). Laterals of the pooled levels only (AugFPN's: those of the RoI levels).
    """

    def __init__(self, genotype: Genotype, in_channels: Mapping[int, int], num_classes: int, image_size: int, *,
                 backbone: nn.Module | None = None, width: int | None = None, head_depth: int = 1,
                 anchor_scale: float = 4.0, roi_extractor: str = "level", score_thresh: float = 0.05,
                 nms_thresh: float = 0.5, detections_per_img: int = 100, remember_matches: bool = True,
                 aux_loss: float = 0.0):
        super().__init__(genotype, in_channels, image_size, backbone=backbone, width=width, head_depth=head_depth,
                         aux_loss=aux_loss)
        width = self.neck.out_channels
        levels = genotype.levels
        self.roi_levels = [lv for lv in levels if lv in genotype.backbone_levels]
        anchors = Float32Anchors(tuple((anchor_scale * 2 ** lv,) for lv in levels), ((0.5, 1.0, 2.0),) * len(levels))
        self.rpn = _RPN(anchors, _RPNHead(width, anchors.num_anchors_per_location()[0], conv_depth=head_depth),
                        fg_iou_thresh=0.7, bg_iou_thresh=0.3, batch_size_per_image=RPN_ANCHORS_PER_IMAGE,
                        positive_fraction=0.5, pre_nms_top_n=RPN_PRE_NMS, post_nms_top_n=RPN_POST_NMS,
                        nms_thresh=0.7, matches=MatchMemo(remember_matches))
        representation = REPRESENTATION * width
        pool = make_roi_extractor(roi_extractor, width, self.roi_levels, round(16 * anchor_scale))
        self.roi_heads = RoIHeads(pool, TwoMLPHead(width * OUTPUT_SIZE ** 2, representation),
                                  FastRCNNPredictor(representation, num_classes + 1),  # + the background
                                  fg_iou_thresh=0.5, bg_iou_thresh=0.5, batch_size_per_image=ROIS_PER_IMAGE,
                                  positive_fraction=0.25, bbox_reg_weights=None, score_thresh=score_thresh,
                                  nms_thresh=nms_thresh, detections_per_img=detections_per_img)
        # Consistent supervision: made last, so that the rest starts from the same initialisation.
        self.aux_loss = float(aux_loss)
        self.aux_levels = [lv for lv in self.neck.pre_fusion_levels if lv in self.roi_levels] if aux_loss else []
        self.aux_box_head = self.aux_box_predictor = None
        if self.aux_levels:
            self.aux_box_head = TwoMLPHead(width * OUTPUT_SIZE ** 2, representation)
            self.aux_box_predictor = FastRCNNPredictor(representation, num_classes + 1)
        elif aux_loss:
            self.warn_no_aux_levels(aux_loss, genotype,
                                    f"has no lateral at its width on the RoI levels {self.roi_levels}")

    @property
    def remember_matches(self) -> bool:
        return self.rpn.matches.enabled

    @remember_matches.setter
    def remember_matches(self, value: bool) -> None:
        self.rpn.matches.enabled = value

    def forward(self, images: Optional[Tensor] = None, targets: Optional[List[Dict[str, Tensor]]] = None,
                features: Optional[Dict[str, Tensor]] = None):
        """Training: losses ``{"loss_objectness", "loss_rpn_box_reg", "loss_classifier",
        "loss_box_reg"}`` (torchvision's names; with consistent supervision ``aux_loss_classifier``
        and ``aux_loss_box_reg`` too, already weighted). Eval: detections per image (``boxes``
        xyxy in canvas pixels, ``scores``, ``labels`` in ``0..num_classes-1``). Arguments as
        :meth:`nasfpn.detector.ProxyDetector.forward`."""
        supervise_laterals = self.training and self.aux_box_head is not None
        # A recursive neck (RFP) runs the backbone again: neck_pass wires it.
        outputs, laterals = neck_pass(self, images, features, supervise_laterals)
        images_seen = canvas(next(iter(outputs.values())), self.image_size)
        if self.training:
            if targets is None:
                raise ValueError("training needs targets")
            targets = [{"boxes": t["boxes"], "labels": t["labels"] + 1} for t in targets]  # 0 is the background
        proposals, losses = self.rpn(images_seen, outputs, targets)
        heads = self.roi_heads
        if self.training:
            proposals, _, labels, box_targets = heads.select_training_samples(proposals, targets)
        # As RoIHeads.forward does, with the predictions in float32 for the loss and the scores.
        pooled = heads.box_roi_pool({f"p{lv}": outputs[f"p{lv}"] for lv in self.roi_levels}, proposals,
                                    images_seen.image_sizes)
        class_logits, box_regression = (v.float() for v in heads.box_predictor(heads.box_head(pooled)))
        if self.training:
            classifier, box_reg = fastrcnn_loss(class_logits, box_regression, labels, box_targets)
            losses.update(loss_classifier=classifier, loss_box_reg=box_reg)
            if supervise_laterals:
                aux = self._lateral_losses(laterals, proposals, labels, box_targets)
                losses.update({f"aux_{name}": self.aux_loss * value for name, value in aux.items()})
            return losses
        boxes, scores, classes = heads.postprocess_detections(class_logits, box_regression, proposals,
                                                              images_seen.image_sizes)
        return [{"boxes": b, "scores": s, "labels": c - 1} for b, s, c in zip(boxes, scores, classes)]

    def _lateral_losses(self, laterals: Dict[str, Tensor], proposals: List[Tensor], labels: List[Tensor],
                        box_targets: List[Tensor]) -> Dict[str, Tensor]:
        """Fast R-CNN's loss of the auxiliary box head on the sampled RoIs pooled from each
        lateral alone, summed over the laterals, unweighted."""
        pooled = pool_every_level(laterals, proposals, self.aux_levels)
        rois = pooled[0].shape[0]
        x = self.aux_box_head(torch.cat(pooled))
        class_logits, box_regression = (v.float() for v in self.aux_box_predictor(x))
        total: Dict[str, Tensor] = {}
        for logits, deltas in zip(class_logits.split(rois), box_regression.split(rois)):
            classifier, box_reg = fastrcnn_loss(logits, deltas, labels, box_targets)
            total["loss_classifier"] = total.get("loss_classifier", 0) + classifier
            total["loss_box_reg"] = total.get("loss_box_reg", 0) + box_reg
        return total


class _RPNHead(RPNHead):
    """torchvision's RPN head with its predictions in float32: under autocast the proposals are
    decoded, and the RPN's losses taken, in float32."""

    def forward(self, x: List[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
        logits, deltas = super().forward(x)
        return [v.float() for v in logits], [v.float() for v in deltas]


class _RPN(RegionProposalNetwork):
    """torchvision's RPN, whose anchor matching of each image is remembered by its boxes (see
    :class:`~nasfpn.detectors.common.MatchMemo`): the labels as int8, the matched boxes as they are."""

    def __init__(self, *args, matches: MatchMemo, **kwargs):
        super().__init__(*args, **kwargs)
        self.matches = matches

    def assign_targets_to_anchors(self, anchors: List[Tensor], targets: List[Dict[str, Tensor]]
                                  ) -> Tuple[List[Tensor], List[Tensor]]:
        labels, matched = [], []
        for a, t in zip(anchors, targets):
            def assign(a=a, t=t):
                one_labels, one_boxes = RegionProposalNetwork.assign_targets_to_anchors(self, [a], [t])
                return one_labels[0].to(torch.int8), one_boxes[0]  # labels are 1, 0 or -1

            packed_labels, boxes = self.matches(t["boxes"], a, assign)
            labels.append(packed_labels.float())
            matched.append(boxes)
        return labels, matched
