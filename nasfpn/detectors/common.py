"""What the FCOS and Faster R-CNN proxies share beyond :class:`nasfpn.detector.NeckDetector`:
anchors kept in float32 under autocast, the canvas torchvision's
parts are told about, and the per-image match memory."""
from __future__ import annotations

from typing import Callable, Dict, List, Tuple

import torch
from torch import Tensor
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList

from ..detector import MATCH_MEMORY


class Float32Anchors(AnchorGenerator):
    """torchvision's ``AnchorGenerator``, always in float32.

    It reads only the sizes, the device and the dtype of the feature maps it is given, and keeps
    its cell anchors in the last dtype it saw: under autocast bfloat16 would round a 256-pixel
    anchor to 2 pixels, for good. It is given float32 stand-ins instead (as ``ProxyDetector``
    gives RetinaNet's), here inside the generator because torchvision's RPN calls it itself."""

    def forward(self, image_list: ImageList, feature_maps: List[Tensor]) -> List[Tensor]:
        stand_ins = [f.new_empty(0, 0, *f.shape[-2:], dtype=torch.float32) for f in feature_maps]
        return super().forward(image_list, stand_ins)


def canvas(like: Tensor, image_size: int) -> ImageList:
    """The letterboxed batch as torchvision's parts see it: sizes only (no pixels), float32."""
    batch = like.shape[0]
    return ImageList(like.new_empty(batch, 0, image_size, image_size, dtype=torch.float32),
                     [(image_size, image_size)] * batch)


class MatchMemo:
    """Per-image results of matching boxes to a fixed set of anchors (or FCOS's points), kept on
    the CPU by the boxes, as :meth:`nasfpn.detector.ProxyDetector._matched_anchors` keeps
    RetinaNet's: a proxy sees each image (and flip) several times, and the anchors are fixed by
    the image size (their count guards against another size). At most ``budget`` bytes are kept;
    the caller packs what it stores into small dtypes."""

    def __init__(self, enabled: bool = True, budget: int = MATCH_MEMORY):
        self.enabled = enabled
        self.budget = budget
        self._kept: Dict[tuple, Tuple[Tensor, ...]] = {}
        self._bytes = 0

    def __call__(self, boxes: Tensor, anchors: Tensor, compute: Callable[[], Tuple[Tensor, ...]]) -> Tuple[Tensor, ...]:
        """What ``compute()`` returns for these boxes, computed once while there is room."""
        remember = self.enabled and boxes.device.type == "cpu" and len(boxes) < 2 ** 15
        key = (anchors.shape[0], str(boxes.dtype), boxes.numpy().tobytes()) if remember else None
        if key is not None and key in self._kept:
            return self._kept[key]
        value = compute()
        if key is not None and self._bytes < self.budget:
            self._kept[key] = value
            self._bytes += sum(v.numel() * v.element_size() for v in value)
        return value

    def __len__(self) -> int:
        return len(self._kept)
