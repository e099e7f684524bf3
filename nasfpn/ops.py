"""The layers a neck is made of. Torch only: `nasfpn export` copies the source of what a neck
uses from this file into the standalone module, so built and exported necks run the same code.

Resampling follows NAS-FPN: nearest upsampling going finer (to the exact size of the target
level, as torchvision's FPN does, so odd sizes work) and one max-pool with kernel = stride =
2^k going coarser. A stride-2 3x3 conv is used instead where the design learns its
downsampling: PANet's bottom-up path (``DownConv``) and the extra levels of RetinaNet's FPN
(``ExtraConv``).

Layers from the rest of the neck family: AugFPN's residual feature augmentation (``RFA``,
which reads a raw backbone feature), DetectoRS' switchable atrous convolution (``SAConv2d``,
here a neck op followed by BN: ``SACBN``), and the parts of DetectoRS' recursive feature
pyramid (``ASPP``, ``ZeroConv2d`` for its ``rfp_conv`` and gate, and ``feedback_graph``, which
opens a traced ResNet to the feedback).
"""
from typing import List, Tuple

import torch
import torch.fx
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


class RFA(nn.Module):
    """AugFPN's residual feature augmentation (Guo et al., CVPR 2020), as its code builds it
    (Gus-Guo/AugFPN ``high_fpn.py``): from a raw backbone feature (normally C5), one branch per
    ratio: adaptive average pool to ``max(1, int(ratio * size))``, a 1x1 conv with bias to
    ``out_channels``, bilinear upsampling (corners aligned) back to the feature's size; then
    adaptive spatial fusion: the branches concatenated, 1x1 conv, ReLU, 3x3 conv to one map per
    branch, a sigmoid on each (independently), and the branches summed with those weights. The
    neck adds the result to the top lateral before the top-down pass (a node of the genotype).
    Convs keep torch's default init (AugFPN's Xavier init is a training detail, as everywhere
    in this project)."""

    def __init__(self, in_channels: int, out_channels: int, ratios: Tuple[float, ...] = (0.1, 0.2, 0.3)):
        super().__init__()
        self.ratios = [float(r) for r in ratios]
        self.branches = nn.ModuleList([nn.Conv2d(in_channels, out_channels, 1) for _ in self.ratios])
        self.fusion = nn.Sequential(nn.Conv2d(out_channels * len(self.ratios), out_channels, 1), nn.ReLU(),
                                    nn.Conv2d(out_channels, len(self.ratios), 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2], x.shape[-1]
        feats: List[Tensor] = []
        for i, branch in enumerate(self.branches):
            size = [max(1, int(h * self.ratios[i])), max(1, int(w * self.ratios[i]))]
            feats.append(F.interpolate(branch(F.adaptive_avg_pool2d(x, size)), size=[h, w], mode="bilinear",
                                       align_corners=True))
        weights = torch.sigmoid(self.fusion(torch.cat(feats, dim=1)))
        out = feats[0] * weights[:, 0:1]
        for i in range(1, len(feats)):
            out = out + feats[i] * weights[:, i:i + 1]
        return out


class SAConv2d(nn.Module):
    """DetectoRS' switchable atrous convolution (Qiao et al., CVPR 2021), part for part as mmcv's
    ``SAConv2d`` (``mmcv/ops/saconv.py``), 3x3, stride 1, without its deformable option:

    * pre-context: ``x += conv1x1(GAP(x))`` (zero-initialised);
    * switch: ``S = conv1x1(avgpool5x5(x))`` to one channel, initialised to weight 0 and bias 1,
      with no sigmoid (as mmcv);
    * one weight ``W`` applied at dilation 1, and ``W + weight_diff`` (zero-initialised) at
      dilation 3 (padding 3); ``out = S * out1 + (1 - S) * out3``;
    * post-context: ``out += conv1x1(GAP(out))`` (zero-initialised).

    ``context=False`` leaves out both context convs. ``W`` is weight-standardised (per output
    channel, ``(W - mean) / sqrt(var + 1e-5)``) as mmcv's ``ConvAWS2d`` does, so that the
    zero-initialised ``weight_diff`` is learned against a unit-scale weight as in DetectoRS;
    ConvAWS2d's ``weight_gamma``/``weight_beta`` buffers are left out: they exist to reproduce
    a pretrained backbone conv, and set to their defaults (1, 0) they change nothing. No conv
    bias: mmcv's is dead (it convolves with a zero bias) and BN follows here. The 5x5 pool
    averages over the part of its window inside the map, where mmcv pads by reflection, which
    needs maps of 3 pixels or more (a neck runs on P7 maps of 1 or 2).

    DetectoRS puts SAC in the backbone (every 3x3 conv of ResNet stages 2-4, locked to the
    pretrained conv); as a neck op it is an adaptation: nothing pretrained to lock to, and a
    norm after it (:class:`SACBN`).
    """

    def __init__(self, in_channels: int, out_channels: int, context: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, 3, 3))
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)  # nn.Conv2d's default
        self.weight_diff = nn.Parameter(torch.zeros(out_channels, in_channels, 3, 3))
        self.switch = nn.Conv2d(in_channels, 1, 1)
        nn.init.zeros_(self.switch.weight)
        nn.init.ones_(self.switch.bias)
        self.pre_context = nn.Conv2d(in_channels, in_channels, 1) if context else None
        self.post_context = nn.Conv2d(out_channels, out_channels, 1) if context else None
        for conv in (self.pre_context, self.post_context):
            if conv is not None:
                nn.init.zeros_(conv.weight)
                nn.init.zeros_(conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        if self.pre_context is not None:
            x = x + self.pre_context(F.adaptive_avg_pool2d(x, 1))
        switch = self.switch(F.avg_pool2d(x, 5, stride=1, padding=2, count_include_pad=False))
        flat = self.weight.flatten(1)
        mean, std = flat.mean(dim=1).view(-1, 1, 1, 1), torch.sqrt(flat.var(dim=1) + 1e-5).view(-1, 1, 1, 1)
        weight = (self.weight - mean) / std
        small = F.conv2d(x, weight, None, 1, 1, 1)
        large = F.conv2d(x, weight + self.weight_diff, None, 1, 3, 3)
        out = switch * small + (1 - switch) * large
        if self.post_context is not None:
            out = out + self.post_context(F.adaptive_avg_pool2d(out, 1))
        return out


class SACBN(nn.Module):
    """The ``sac`` node op: :class:`SAConv2d` then BN, as a conv op of the neck has its norm."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = SAConv2d(channels, channels)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x))


class ASPP(nn.Module):
    """DetectoRS' ASPP, the feedback of its recursive feature pyramid, as mmdetection's ``ASPP``
    (``mmdet/models/necks/rfp.py``): one branch per dilation, a 1x1 conv where it is 1 and a 3x3
    conv at that dilation (padding = dilation) otherwise, and with ``image_pool`` one more
    branch, global average pooling then a 1x1 conv, broadcast back to the map's size; every
    conv with bias and followed by ReLU, no norm; the branches concatenated
    (``width * (len(dilations) + image_pool)`` channels). mmdetection writes DetectoRS' as
    ``dilations=(1, 3, 6, 1)``, its last branch pooled; here ``(1, 3, 6)`` with ``image_pool``.
    Convs keep torch's default init (mmdetection's is Kaiming)."""

    def __init__(self, in_channels: int, width: int, dilations: Tuple[int, ...] = (1, 3, 6), image_pool: bool = True):
        super().__init__()
        self.branches = nn.ModuleList([
            nn.Conv2d(in_channels, width, 3, padding=d, dilation=d) if d > 1 else nn.Conv2d(in_channels, width, 1)
            for d in dilations])
        self.pool = nn.Conv2d(in_channels, width, 1) if image_pool else None

    def forward(self, x: Tensor) -> Tensor:
        out = [F.relu(branch(x)) for branch in self.branches]
        if self.pool is not None:
            pooled = F.relu(self.pool(F.adaptive_avg_pool2d(x, 1)))
            out.append(pooled.expand(-1, -1, x.shape[-2], x.shape[-1]))
        return torch.cat(out, dim=1)


class ZeroConv2d(nn.Conv2d):
    """A 1x1 conv with bias, weight and bias initialised to zero: RFP's ``rfp_conv`` (the
    feedback starts at zero, so the second backbone pass starts as the first) and its fusion
    gate (``sigmoid(0)``: the new and old outputs start weighted 0.5 each)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, 1)
        nn.init.zeros_(self.weight)
        nn.init.zeros_(self.bias)


def feedback_graph(body: nn.Module, stages: List[str]) -> nn.Module:
    """A copy of a traced backbone ``body`` (a ``torch.fx.GraphModule``, such as torchvision's
    ``create_feature_extractor`` of a ResNet) that takes, after its input, one map per stage of
    ``stages`` (module paths, e.g. ``layer2``) and adds it to the output of that stage's first
    block (``layer2.0``) after the residual sum and before the block's last ReLU, where
    DetectoRS' recursive feature pyramid adds its feedback. The copy shares the body's modules,
    and so its weights; the body itself is unchanged.

    Raises:
        ValueError: ``body`` is not traced, or a stage's first block does not end in
            ``relu(out + identity)`` (torchvision's ``BasicBlock`` and ``Bottleneck`` do).
    """
    if not isinstance(getattr(body, "graph", None), torch.fx.Graph):
        raise ValueError(f"the backbone body is a {type(body).__name__}, not a traced torch.fx.GraphModule")
    graph = torch.fx.Graph()
    graph.output(graph.graph_copy(body.graph, {}))
    ends = []
    for stage in stages:
        relus = [n for n in graph.nodes if n.op == "call_module" and n.target == stage + ".0.relu"]
        added = relus[-1].args[0] if relus and relus[-1].args else None
        if not isinstance(added, torch.fx.Node) or added.op != "call_function" or \
                getattr(added.target, "__name__", "") not in ("add", "iadd"):
            raise ValueError(f"the first block of stage {stage!r} ({stage}.0) does not end in relu(out + identity)")
        ends.append(relus[-1])
    last = [n for n in graph.nodes if n.op == "placeholder"][-1]
    for stage, end in zip(stages, ends):
        with graph.inserting_after(last):
            last = graph.placeholder("feedback_" + stage.replace(".", "_"))
        with graph.inserting_before(end):
            fed = graph.call_function(torch.add, (end.args[0], last))
        end.args = (fed,) + tuple(end.args[1:])
    graph.lint()
    return torch.fx.GraphModule(body, graph)
