"""One builder turns any genotype into a ``torch.nn.Module``.

Every channel count, resampling factor and module is worked out when the neck is built; the
forward passes are short loops over that plan and mutate nothing they are given.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, Mapping, Sequence

import torch
from torch import Tensor, nn

from .genotype import Genotype, GenotypeError
from .ops import (ConvBN, DownConv, ExtraConv, ExtraPool, ReluConvBN, SepConvBN, WeightedFusion,
                  downsample, global_attention, global_attention_avg, upsample)


def build_neck(genotype: Genotype, in_channels: Mapping[int, int] | Sequence[int],
               width: int | None = None) -> "Neck":
    """Build the neck a genotype describes.

    Args:
        genotype: the topology (validated here).
        in_channels: channels of the backbone features, by level (``{3: 512, 4: 1024, 5: 2048}``)
            or as a list from the finest level up.
        width: channels inside the neck; the genotype's ``width`` when omitted.

    Returns:
        A module taking the backbone's ``OrderedDict[str, Tensor]`` (finest first, any keys) and
        returning ``OrderedDict`` ``p3``..``p7``, with ``out_channels`` set.

    Example:
        >>> import torch, nasfpn
        >>> neck = nasfpn.build_neck(nasfpn.load_genotype("fpn"), {3: 8, 4: 16, 5: 32}, width=16)
        >>> x = {"c3": torch.rand(1, 8, 32, 32), "c4": torch.rand(1, 16, 16, 16), "c5": torch.rand(1, 32, 8, 8)}
        >>> [tuple(v.shape) for v in neck(x).values()][-1]
        (1, 16, 1, 1)
    """
    return Neck(genotype, in_channels, width)


class MergeNode(nn.Module):
    """One node: resample every input to the node's level, merge, apply the op.

    Holds its learned parts under the names the exporter uses: ``lat{j}`` (a first-cell channel
    adapter on input j), ``down{j}`` (a learned downsampling of input j), ``fuse`` (weighted
    fusion) and ``op``.
    """

    def __init__(self, genotype: Genotype, index: int, channels: Mapping[str, int], width: int):
        super().__init__()
        node = genotype.nodes[index]
        self.combine = node.combine
        # Per input: how many levels it moves (negative: coarser input, upsample).
        self.steps = [node.level - genotype.level_of(name) for name in node.inputs]
        for j, name in enumerate(node.inputs):
            if channels[name] != width:
                self.add_module(f"lat{j}", ConvBN(channels[name], width))
            if self.steps[j] > 0 and genotype.downsample == "conv":
                self.add_module(f"down{j}", DownConv(width, 2 ** self.steps[j]))
        if node.combine == "weighted":
            self.fuse = WeightedFusion(len(node.inputs))
        if node.combine in ("global_attention", "global_attention_avg"):
            # Orientation follows the inputs' own levels; on a tie the first input is "hi".
            a, b = (genotype.level_of(n) for n in node.inputs)
            self.hi_first = a >= b
        op = {"none": None, "conv3x3": lambda: nn.Conv2d(width, width, 3, padding=1),
              "relu_conv_bn": lambda: ReluConvBN(width),
              "sepconv_bn": lambda: SepConvBN(width, swish=genotype.activation == "swish")}[node.op]
        if op is not None:
            self.op = op()

    def forward(self, inputs: List[Tensor], like: Tensor) -> Tensor:
        xs = []
        for j, x in enumerate(inputs):
            modules = self._modules
            if f"lat{j}" in modules:
                x = modules[f"lat{j}"](x)
            if self.steps[j] < 0:
                x = upsample(x, like)
            elif self.steps[j] > 0:
                x = modules[f"down{j}"](x) if f"down{j}" in modules else downsample(x, 2 ** self.steps[j])
            xs.append(x)
        if self.combine == "sum":
            out = xs[0]
            for x in xs[1:]:
                out = out + x
        elif self.combine == "weighted":
            out = self.fuse(xs)
        else:
            hi, lo = (xs[0], xs[1]) if self.hi_first else (xs[1], xs[0])
            merge = global_attention if self.combine == "global_attention" else global_attention_avg
            out = merge(hi, lo)
        return self.op(out) if "op" in self._modules else out


class Cell(nn.Module):
    """One repeat of the cell: its live nodes, in genotype order, named ``n{i}``."""

    def __init__(self, genotype: Genotype, channels: Mapping[str, int], width: int):
        super().__init__()
        self.input_names = genotype.cell_inputs
        self.outputs = genotype.outputs
        self.output_levels = genotype.cell_levels
        self.plan = []  # (node name, its inputs, the cell input giving its size)
        channels = dict(channels)
        for i in sorted(genotype.live_nodes()):
            node = genotype.nodes[i]
            self.add_module(f"n{i}", MergeNode(genotype, i, channels, width))
            self.plan.append((f"n{i}", node.inputs, f"P{node.level}"))
            channels[f"n{i}"] = width
        # An output that is a first-cell backbone feature of another width gets its own adapter,
        # like every other edge that reads one.
        for level, name in zip(genotype.cell_levels, genotype.outputs):
            if channels[name] != width:
                self.add_module(f"out_p{level}", ConvBN(channels[name], width))

    def forward(self, inputs: List[Tensor]) -> List[Tensor]:
        values: Dict[str, Tensor] = dict(zip(self.input_names, inputs))
        for name, sources, size_from in self.plan:
            values[name] = self._modules[name]([values[s] for s in sources], values[size_from])
        return [self._modules[f"out_p{lv}"](values[name]) if f"out_p{lv}" in self._modules else values[name]
                for lv, name in zip(self.output_levels, self.outputs)]


class Neck(nn.Module):
    """The neck of a genotype: laterals, extra levels, ``repeats`` cells. See :func:`build_neck`."""

    def __init__(self, genotype: Genotype, in_channels: Mapping[int, int] | Sequence[int],
                 width: int | None = None):
        super().__init__()
        genotype = genotype.validate()
        if width is not None:
            genotype = genotype.replace(width=width)
        width = genotype.width
        levels = genotype.backbone_levels
        if not isinstance(in_channels, Mapping):
            in_channels = dict(zip(levels, in_channels)) if len(in_channels) == len(levels) else {}
        if sorted(in_channels) != list(levels) or not all(isinstance(c, int) and c > 0 for c in in_channels.values()):
            raise ValueError(f"in_channels must give a positive channel count for each backbone level "
                             f"{list(levels)}, got {in_channels!r}")
        self.genotype = genotype
        self.out_channels = width
        self.levels = genotype.levels
        graph = genotype.spelled_out()
        top = levels[-1]
        source = genotype.extra.source

        # Which cell inputs the first cell reads; only those get a lateral.
        read = {n for i in graph.live_nodes() for n in graph.nodes[i].inputs} | set(graph.outputs)
        self.lateral = nn.ModuleDict()
        if genotype.lateral in ("conv", "conv_bn"):
            for level in levels:
                if f"P{level}" in read or (level == top and source == "lateral"):
                    c = in_channels[level]
                    self.lateral[f"p{level}"] = (nn.Conv2d(c, width, 1) if genotype.lateral == "conv"
                                                 else ConvBN(c, width))
        lateral_width = {lv: (width if f"p{lv}" in self.lateral else in_channels[lv]) for lv in levels}

        self.extra = nn.ModuleDict()
        c = {"backbone": in_channels[top], "lateral": lateral_width[top], "output": width}[source]
        for i, (level, op) in enumerate(zip(genotype.extra_levels, genotype.extra.ops)):
            if op == "pool" and c != width:
                raise GenotypeError(f"extra.ops[{i}]: 'pool' keeps the {c} channels of C{top}; use "
                                    f"'proj_pool' or 'conv' to reach the width {width}")
            self.extra[f"p{level}"] = (ExtraConv(c, width, relu=op == "relu_conv") if op in ("conv", "relu_conv")
                                       else ExtraPool(c, width, project=op == "proj_pool"))
            c = width

        first = {f"P{lv}": lateral_width[lv] for lv in levels} | {f"P{lv}": width for lv in genotype.extra_levels}
        rest = {name: width for name in graph.cell_inputs}
        self.cells = nn.ModuleList(Cell(graph, first if k == 0 else rest, width) for k in range(genotype.repeats))

    def forward(self, x: Dict[str, Tensor]) -> Dict[str, Tensor]:
        feats = list(x.values())
        levels = self.genotype.backbone_levels
        if len(feats) != len(levels):
            raise ValueError(f"expected {len(levels)} backbone features (levels {list(levels)}), got {len(feats)}")
        raw = dict(zip(levels, feats))
        pyramid = {lv: (self.lateral[f"p{lv}"](t) if f"p{lv}" in self.lateral else t) for lv, t in raw.items()}
        source = self.genotype.extra.source
        if source != "output":
            self._add_extra(pyramid, raw[levels[-1]] if source == "backbone" else pyramid[levels[-1]])
        cell_levels = self.genotype.cell_levels
        feats = [pyramid[lv] for lv in cell_levels]
        for cell in self.cells:
            feats = cell(feats)
        pyramid = dict(zip(cell_levels, feats))
        if source == "output":
            self._add_extra(pyramid, pyramid[levels[-1]])
        return OrderedDict((f"p{lv}", pyramid[lv]) for lv in self.levels)

    def _add_extra(self, pyramid: Dict[int, Tensor], x: Tensor) -> None:
        for level in self.genotype.extra_levels:
            x = self.extra[f"p{level}"](x)
            pyramid[level] = x

    def extra_repr(self) -> str:
        name = f"{self.genotype.name!r}, " if self.genotype.name else ""
        return f"{name}levels={list(self.levels)}, width={self.out_channels}, repeats={self.genotype.repeats}"


@torch.no_grad()
def example_inputs(in_channels: Mapping[int, int], image_size: int = 512, batch: int = 1) -> "OrderedDict[str, Tensor]":
    """Random backbone features for a square image: ``c{level}`` of size image / 2**level."""
    return OrderedDict((f"c{lv}", torch.randn(batch, c, image_size >> lv, image_size >> lv))
                       for lv, c in sorted(in_channels.items()))
