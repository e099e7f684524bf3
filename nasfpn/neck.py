"""One builder turns any genotype into a ``torch.nn.Module``.

Every channel count, resampling factor and module is worked out when the neck is built; the
forward passes are short loops over that plan and mutate nothing they are given.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .genotype import Genotype, GenotypeError
from .made_from_calls import MadeFromCalls
from .ops import downsample, upsample
from .rfp import RecursiveNeck
from .vocabulary import COMBINES, DOWNSAMPLES, EXTRA_OPS, LATERALS, OPS, adapter


def build_neck(genotype: Genotype, in_channels: Mapping[int, int] | Sequence[int],
               width: int | None = None) -> "Neck | RecursiveNeck":
    """Build the neck a genotype describes.

    Args:
        genotype: the topology (validated here).
        in_channels: channels of the backbone features, by level (``{3: 512, 4: 1024, 5: 2048}``)
            or as a list from the finest level up.
        width: channels inside the neck; the genotype's ``width`` when omitted.

    Returns:
        A module taking the backbone's ``OrderedDict[str, Tensor]`` (finest first, any keys) and
        returning ``OrderedDict`` ``p3``..``p7``, with ``out_channels`` set. For a genotype with
        ``recursion``, a :class:`nasfpn.rfp.RecursiveNeck`, whose forward also needs the backbone.

    Example:
        >>> import torch, nasfpn
        >>> neck = nasfpn.build_neck(nasfpn.load_genotype("fpn"), {3: 8, 4: 16, 5: 32}, width=16)
        >>> x = {"c3": torch.rand(1, 8, 32, 32), "c4": torch.rand(1, 16, 16, 16), "c5": torch.rand(1, 32, 8, 8)}
        >>> [tuple(v.shape) for v in neck(x).values()][-1]
        (1, 16, 1, 1)
    """
    if genotype.recursion is not None:  # DetectoRS' RFP: this neck, fed back into the backbone
        neck = Neck(genotype.replace(recursion=None), in_channels, width)
        return RecursiveNeck(genotype.replace(width=neck.out_channels), neck, in_channels)
    return Neck(genotype, in_channels, width)


class MergeNode(MadeFromCalls):
    """One node: resample every input to the node's level, merge, apply the op.

    Holds its learned parts under the names the exporter uses: ``lat{j}`` (a first-cell channel
    adapter on input j), ``down{j}`` (a learned downsampling of input j), ``fuse`` (a learned
    merge) and ``op``. What each input goes through and how the merge is computed are settled
    here, so ``forward`` only calls. Parts are reached through their attributes, never through
    a second reference, so that a tool that swaps a submodule (quantisation, BN freezing,
    DataParallel's replicas) is followed.
    """

    def __init__(self, genotype: Genotype, index: int, channels: Mapping[str, int], width: int):
        super().__init__()
        node = genotype.nodes[index]
        combine, op = COMBINES[node.combine], OPS[node.op]
        levels = [genotype.level_of(name) for name in node.inputs]
        # Per input: how many levels it moves (negative: coarser input, upsample).
        self.steps = [node.level - level for level in levels]
        learned_down = DOWNSAMPLES[genotype.downsample].layer
        # Per input, the names of its adapter and its learned downsampling, or None.
        self.adapters: List[Optional[str]] = []
        self.downs: List[Optional[str]] = []
        for j, (name, step) in enumerate(zip(node.inputs, self.steps)):
            # An op that reads a raw backbone feature takes it at its own channels (and level).
            adapts = channels[name] != width and not op.reads_backbone
            learns = step > 0 and learned_down is not None
            if adapts:
                self.add_layer(f"lat{j}", adapter(channels[name], width))
            if learns:
                self.add_layer(f"down{j}", learned_down(width, 2 ** step))
            self.adapters.append(f"lat{j}" if adapts else None)
            self.downs.append(f"down{j}" if learns else None)
        # The positions of the inputs in the order the merge takes them (attention: coarser first).
        self.order = combine.order(levels)
        # The merge: a learned layer called on the list of inputs, or a function of them.
        self.fuse = None if combine.layer is None else self.add_layer("fuse", combine.layer(len(node.inputs)))
        self.merge = combine.merge_function()
        call = (op.backbone_layer(channels[node.inputs[0]], width) if op.reads_backbone else
                None if op.layer is None else op.layer(width, genotype.activation))
        self.op = None if call is None else self.add_layer("op", call)

    def forward(self, inputs: List[Tensor], like: Tensor) -> Tensor:
        xs = []
        for x, adapter_name, step, down in zip(inputs, self.adapters, self.steps, self.downs):
            if adapter_name is not None:
                x = self._modules[adapter_name](x)
            if step < 0:
                x = upsample(x, like)
            elif down is not None:
                x = self._modules[down](x)
            elif step > 0:
                x = downsample(x, 2 ** step)
            xs.append(x)
        ordered = [xs[j] for j in self.order]
        out = self.merge(ordered) if self.fuse is None else self.fuse(ordered)
        return out if self.op is None else self.op(out)


class Cell(MadeFromCalls):
    """One repeat of the cell: its live nodes, in genotype order, named ``n{i}``. It takes the
    cell inputs followed by the raw backbone features its nodes read (:func:`raw_levels`)."""

    def __init__(self, genotype: Genotype, channels: Mapping[str, int], width: int):
        super().__init__()
        self.input_names = genotype.cell_inputs + tuple(f"C{level}" for level in raw_levels(genotype))
        self.outputs = genotype.outputs
        self.plan = []  # (node name, its inputs, the cell input giving its size)
        channels = dict(channels)
        for i in sorted(genotype.live_nodes()):
            node = genotype.nodes[i]
            self.add_module(f"n{i}", MergeNode(genotype, i, channels, width))
            self.plan.append((f"n{i}", node.inputs, f"P{node.level}"))
            channels[f"n{i}"] = width
        # An output that is a first-cell backbone feature of another width gets its own adapter,
        # like every other edge that reads one.
        self.output_adapters: List[Optional[str]] = []  # per output, the name of its adapter or None
        for level, name in zip(genotype.cell_levels, genotype.outputs):
            adapts = channels[name] != width
            if adapts:
                self.add_layer(f"out_p{level}", adapter(channels[name], width))
            self.output_adapters.append(f"out_p{level}" if adapts else None)

    def forward(self, inputs: List[Tensor]) -> List[Tensor]:
        values: Dict[str, Tensor] = dict(zip(self.input_names, inputs))
        for name, sources, size_from in self.plan:
            values[name] = self._modules[name]([values[s] for s in sources], values[size_from])
        return [values[name] if adapter_name is None else self._modules[adapter_name](values[name])
                for adapter_name, name in zip(self.output_adapters, self.outputs)]


class Neck(MadeFromCalls):
    """The neck of a genotype: laterals, extra levels, ``repeats`` cells. See :func:`build_neck`."""

    def __init__(self, genotype: Genotype, in_channels: Mapping[int, int] | Sequence[int],
                 width: int | None = None):
        super().__init__()
        genotype = genotype.validate()
        if genotype.recursion is not None:
            raise GenotypeError("recursion: a Neck is fed once by the backbone; build a genotype with recursion "
                                "with nasfpn.build_neck (nasfpn.rfp.RecursiveNeck)")
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
        lateral = LATERALS[genotype.lateral].layer
        self.lateral = nn.ModuleDict()
        if lateral is not None:
            for level in levels:
                if f"P{level}" in read or (level == top and source == "lateral"):
                    self.add_layer(f"lateral.p{level}", lateral(in_channels[level], width))
        self.lateral_levels = [lv for lv in levels if f"lateral.p{lv}" in self.calls]  # as self.lateral lists them
        lateral_width = {lv: (width if lv in self.lateral_levels else in_channels[lv]) for lv in levels}

        self.extra = nn.ModuleDict()
        c = {"backbone": in_channels[top], "lateral": lateral_width[top], "output": width}[source]
        for i, (level, name) in enumerate(zip(genotype.extra_levels, genotype.extra.ops)):
            if EXTRA_OPS[name].keeps_channels and c != width:
                projecting = [other for other, op in EXTRA_OPS.items() if not op.keeps_channels]
                raise GenotypeError(f"extra.ops[{i}]: {name!r} keeps the {c} channels of C{top}; use one of "
                                    f"{projecting} to reach the width {width}")
            self.add_layer(f"extra.p{level}", EXTRA_OPS[name].layer(c, width))
            c = width
        # Where the extra levels start: before the cells from C5 or P5, or after them from the P5 output.
        self.extra_from_backbone, self.extra_after_cells = source == "backbone", source == "output"

        raw = {f"C{lv}": in_channels[lv] for lv in levels}  # read by a node as they are, in every cell
        first = {f"P{lv}": lateral_width[lv] for lv in levels} | {f"P{lv}": width for lv in genotype.extra_levels} | raw
        rest = {name: width for name in graph.cell_inputs} | raw
        self.raw_levels = raw_levels(graph)
        self.cells = nn.ModuleList(Cell(graph, first if k == 0 else rest, width) for k in range(genotype.repeats))

    @property
    def pre_fusion_levels(self) -> List[int]:
        """The levels whose first-cell input the neck itself makes at its width before any
        fusion: the shared laterals (none with ``edge_conv_bn``) and the extra levels when they
        are made before the cells (``extra.source`` ``backbone`` or ``lateral``). What
        :meth:`forward_with_laterals` returns besides the pyramid."""
        return self.lateral_levels + ([] if self.extra_after_cells else list(self.genotype.extra_levels))

    def forward(self, x: Dict[str, Tensor]) -> Dict[str, Tensor]:
        return self.forward_with_laterals(x)[0]

    def forward_with_laterals(self, x: Dict[str, Tensor]) -> Tuple[Dict[str, Tensor], Dict[str, Tensor]]:
        """:meth:`forward`, and the features of :attr:`pre_fusion_levels` as the first cell
        receives them (``OrderedDict`` ``p{level}``, finest first): for a training-only loss on
        the laterals (AugFPN's consistent supervision; see :class:`nasfpn.detector.ProxyDetector`).
        The exported neck has only :meth:`forward`."""
        feats = list(x.values())
        levels = self.genotype.backbone_levels
        if len(feats) != len(levels):
            raise ValueError(f"expected {len(levels)} backbone features (levels {list(levels)}), got {len(feats)}")
        raw = dict(zip(levels, feats))
        pyramid = dict(raw)
        for level, layer in zip(self.lateral_levels, self.lateral.values()):
            pyramid[level] = layer(raw[level])
        if not self.extra_after_cells:
            self._add_extra(pyramid, raw[levels[-1]] if self.extra_from_backbone else pyramid[levels[-1]])
        laterals = OrderedDict((f"p{lv}", pyramid[lv]) for lv in self.pre_fusion_levels)
        cell_levels = self.genotype.cell_levels
        feats = [pyramid[lv] for lv in cell_levels]
        raws = [raw[lv] for lv in self.raw_levels]
        for cell in self.cells:
            feats = cell(feats + raws)
        pyramid = dict(zip(cell_levels, feats))
        if self.extra_after_cells:
            self._add_extra(pyramid, pyramid[levels[-1]])
        return OrderedDict((f"p{lv}", pyramid[lv]) for lv in self.levels), laterals

    def _add_extra(self, pyramid: Dict[int, Tensor], x: Tensor) -> None:
        for level, layer in zip(self.genotype.extra_levels, self.extra.values()):
            x = layer(x)
            pyramid[level] = x

    def extra_repr(self) -> str:
        name = f"{self.genotype.name!r}, " if self.genotype.name else ""
        return f"{name}levels={list(self.levels)}, width={self.out_channels}, repeats={self.genotype.repeats}"


def raw_levels(graph: Genotype) -> List[int]:
    """The levels whose raw backbone feature (``C{level}``) a live node of ``graph`` reads."""
    read = {n for i in graph.live_nodes() for n in graph.nodes[i].inputs}
    return [lv for lv, name in zip(graph.backbone_levels, graph.raw_inputs) if name in read]


@torch.no_grad()
def example_inputs(in_channels: Mapping[int, int], image_size: int = 512, batch: int = 1) -> "OrderedDict[str, Tensor]":
    """Random backbone features for a square image: ``c{level}`` of size image / 2**level."""
    return OrderedDict((f"c{lv}", torch.randn(batch, c, image_size >> lv, image_size >> lv))
                       for lv, c in sorted(in_channels.items()))
