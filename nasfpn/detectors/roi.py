"""RoI feature extractors of the Faster R-CNN proxy: torchvision's ``MultiScaleRoIAlign`` (each
RoI from one level, by its size) or AugFPN's soft RoI selection (each RoI from every level)."""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch
from torch import Tensor, nn
from torchvision.ops import MultiScaleRoIAlign, roi_align

ROI_EXTRACTORS = ("level", "soft")
OUTPUT_SIZE = 7      # torchvision's Faster R-CNN box head pools 7x7
SAMPLING_RATIO = 2   # and samples 2x2 points a bin


def make_roi_extractor(name: str, width: int, levels: Sequence[int], canonical_scale: int) -> nn.Module:
    """The extractor ``name`` (see :data:`ROI_EXTRACTORS`) over the features ``p{level}``.

    Args:
        canonical_scale: for ``level``, the RoI side in pixels pooled from P4 (FPN's rule: a
            side twice as large one level up; torchvision's default is 224 for 800-pixel images).
    """
    if name == "level":
        return MultiScaleRoIAlign([f"p{lv}" for lv in levels], OUTPUT_SIZE, SAMPLING_RATIO,
                                  canonical_scale=canonical_scale, canonical_level=4)
    if name == "soft":
        return SoftRoISelection(width, levels)
    raise ValueError(f"roi_extractor: one of {list(ROI_EXTRACTORS)}, got {name!r}")


def pool_every_level(x: Dict[str, Tensor], boxes: List[Tensor], levels: Sequence[int]) -> List[Tensor]:
    """RoIAlign of every box from every level ``p{level}`` (stride ``2**level``): one
    ``[R, C, 7, 7]`` a level, in the order of ``levels``."""
    return [roi_align(x[f"p{lv}"], boxes, OUTPUT_SIZE, spatial_scale=2.0 ** -lv, sampling_ratio=SAMPLING_RATIO)
            for lv in levels]


class SoftRoISelection(nn.Module):
    """AugFPN's soft RoI selection (Guo et al., CVPR 2020): each RoI is pooled from every level,
    and a small convolution weighs the levels at every position of the pooled grid.

    RoIAlign from each of the L levels; concatenated (``L * width`` channels) -> 1x1 conv to
    ``width`` -> ReLU -> 3x3 conv to L channels -> a sigmoid each (levels weighed independently,
    not a softmax) -> the weighted sum of the L pooled features. Xavier-uniform weights and zero
    biases, as AugFPN initialises them. ``L * width * width + width + 9 * width * L + L``
    parameters: 271,620 at width 256 over AugFPN's four levels P2-P5.

    Called as torchvision's ``MultiScaleRoIAlign`` (``RoIHeads.box_roi_pool``): features by name,
    boxes per image in canvas pixels, the image sizes (unused: a level's stride is ``2**level``).
    """

    def __init__(self, width: int, levels: Sequence[int]):
        super().__init__()
        self.levels = tuple(levels)
        n = len(self.levels)
        self.weigh = nn.Sequential(nn.Conv2d(n * width, width, 1), nn.ReLU(inplace=True),
                                   nn.Conv2d(width, n, 3, padding=1))
        for layer in self.weigh:
            if isinstance(layer, nn.Conv2d):
                nn.init.xavier_uniform_(layer.weight)
                nn.init.zeros_(layer.bias)

    def forward(self, x: Dict[str, Tensor], boxes: List[Tensor], image_shapes: List[Tuple[int, int]]) -> Tensor:
        pooled = pool_every_level(x, boxes, self.levels)
        weights = torch.sigmoid(self.weigh(torch.cat(pooled, dim=1)))
        return sum(weights[:, i:i + 1] * p for i, p in enumerate(pooled))

    def extra_repr(self) -> str:
        return f"levels={list(self.levels)}"
