"""The layers a neck is made of. Torch only: `nasfpn export` copies the source of what a neck
uses from this file into the standalone module, so built and exported necks run the same code.

Resampling follows NAS-FPN: nearest upsampling going finer (to the exact size of the target
level, as torchvision's FPN does, so odd sizes work) and one max-pool with kernel = stride =
2^k going coarser. A stride-2 3x3 conv is used instead where the design learns its
downsampling: PANet's bottom-up path (``DownConv``) and the extra levels of RetinaNet's FPN
(``ExtraConv``).
"""
from typing import List

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def upsample(x: Tensor, like: Tensor) -> Tensor:
    """Nearest upsampling of ``x`` to the spatial size of ``like``."""
    return F.interpolate(x, size=(like.shape[-2], like.shape[-1]), mode="nearest")


def downsample(x: Tensor, factor: int) -> Tensor:
    """Max-pool with kernel = stride = ``factor``; ceil mode gives ceil(n / factor), the size a
    stride-2 conv chain gives, so odd sizes line up with the backbone's."""
    return F.max_pool2d(x, kernel_size=factor, stride=factor, ceil_mode=True)


def global_attention(hi: Tensor, lo: Tensor) -> Tensor:
    """NAS-FPN's global-pooling merge as Google's reference code writes it:
    ``hi + lo * sigmoid(globalmax(hi))``, ``hi`` being the input from the coarser level.
    Both inputs are already resampled to the node's level."""
    return hi + lo * torch.sigmoid(torch.amax(hi, dim=(2, 3), keepdim=True))


def global_attention_avg(hi: Tensor, lo: Tensor) -> Tensor:
    """mmcv's orientation of the same merge (``GlobalPoolingCell``):
    ``lo + hi * sigmoid(globalavg(lo))``."""
    return lo + hi * torch.sigmoid(torch.mean(lo, dim=(2, 3), keepdim=True))


class WeightedFusion(nn.Module):
    """BiFPN's fast normalised fusion: ``sum(w_i * x_i) / (eps + sum(w))``, ``w = relu(weight)``."""

    def __init__(self, num_inputs: int, eps: float = 1e-4):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_inputs))
        self.eps = eps

    def forward(self, inputs: List[Tensor]) -> Tensor:
        w = F.relu(self.weight)
        w = w / (w.sum() + self.eps)
        out = inputs[0] * w[0]
        for i in range(1, len(inputs)):
            out = out + inputs[i] * w[i]
        return out


class ConvBN(nn.Module):
    """A conv without bias (BN follows) and BatchNorm: laterals and channel adapters."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x))


class ReluConvBN(nn.Module):
    """NAS-FPN's node op: ReLU, 3x3 conv, BN."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(F.relu(x)))


class SepConvBN(nn.Module):
    """BiFPN's node op: activation, depthwise 3x3 conv, pointwise 1x1 conv, BN. No conv has a
    bias (BN follows), as effdet's ``efficientdet_d0`` builds it; its ``tf_`` port keeps a
    redundant pointwise bias."""

    def __init__(self, channels: int, swish: bool = True):
        super().__init__()
        self.depthwise = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
        self.pointwise = nn.Conv2d(channels, channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.swish = swish

    def forward(self, x: Tensor) -> Tensor:
        x = F.silu(x) if self.swish else F.relu(x)
        return self.bn(self.pointwise(self.depthwise(x)))


class DownConv(nn.Module):
    """PANet's learned downsampling: a 3x3 stride-2 conv with bias. A jump of more than one
    level max-pools first, so an edge costs one conv however far it reaches."""

    def __init__(self, channels: int, factor: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        self.factor = factor

    def forward(self, x: Tensor) -> Tensor:
        if self.factor > 2:
            x = downsample(x, self.factor // 2)
        return self.conv(x)


class ExtraConv(nn.Module):
    """RetinaNet's extra level: optional ReLU, then a 3x3 stride-2 conv with bias."""

    def __init__(self, in_channels: int, out_channels: int, relu: bool):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)
        self.relu = relu

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.relu(x) if self.relu else x)


class ExtraPool(nn.Module):
    """An extra level by 2x2 max-pool, after a 1x1 conv + BN when ``project`` (mmdetection's
    NAS-FPN, and EfficientDet's channel adapter on C5)."""

    def __init__(self, in_channels: int, out_channels: int, project: bool):
        super().__init__()
        self.project = ConvBN(in_channels, out_channels, 1) if project else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return downsample(self.project(x), 2)
