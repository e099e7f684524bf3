"""The words of the genotype language, each one record: node ops, combines, laterals, extra-level
ops and learned downsampling.

A record says all the project knows about a word, so nothing else keeps a list of names: the
genotype checks names and input counts against these tables, the canonical form asks a combine
whether the order of its inputs matters, the builder makes each record's layer and resolves its
merge once, the exporter writes the same layer call into a standalone file, and the drawings
print its label. A new word is one record here plus, when it learns something, its layer in
:mod:`nasfpn.ops`.

A layer is a :class:`Layer`: a call such as ``ReluConvBN(64)`` written as data, which the builder
makes from :mod:`nasfpn.ops` and the exporter writes as source. The two cannot drift apart, and
this module (read by the genotype and the search space) needs no torch.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence, TypeVar

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class Layer:
    """One layer call, spelled as :mod:`nasfpn.ops` and an exported file both spell it:
    ``name`` is a layer of :mod:`nasfpn.ops` (``ReluConvBN``) or of torch (``nn.Conv2d``)."""
    name: str
    args: tuple[Any, ...] = ()
    kwargs: tuple[tuple[str, Any], ...] = ()

    def source(self) -> str:
        """The call as Python source: ``SepConvBN(64, swish=True)``."""
        arguments = [repr(a) for a in self.args] + [f"{key}={value!r}" for key, value in self.kwargs]
        return f"{self.name}({', '.join(arguments)})"

    def make(self) -> nn.Module:
        """The layer itself, made from :mod:`nasfpn.ops` (where ``nn`` is torch's)."""
        from . import ops  # here, so that the genotype and the space can read the tables without torch

        factory: Any = ops
        for part in self.name.split("."):
            factory = getattr(factory, part)
        return factory(*self.args, **dict(self.kwargs))


def layer(name: str, *args: Any, **kwargs: Any) -> Layer:
    """``layer("SepConvBN", 64, swish=True)``: a :class:`Layer` written like the call it stands for."""
    return Layer(name, args, tuple(kwargs.items()))


@dataclass(frozen=True)
class Op:
    """A node op: what a node applies to its merged inputs, at the neck's width.

    An op with a ``backbone_layer`` instead (AugFPN's RFA) reads a raw backbone feature at the
    backbone's channels: its node reads exactly that one feature, ``C{level}``, at the node's own
    level, and the layer is made for the feature's channels (no adapter before it). Every other
    op works at the width; a node whose input is a raw feature of another width reads it through
    its own :func:`adapter`, the same per-edge 1x1 conv + BN the first cell of EfficientDet's
    ``edge_conv_bn`` gives a backbone feature. So raw inputs are open to every node, in every
    cell, by machinery the builder and exporter already had, and only an op that needs the raw
    channels says so.
    """
    name: str
    label: str                                              # in drawings
    layer: Callable[[int, str], Layer] | None = None        # (width, activation) -> its layer; None: no op
    reads_activation: bool = False                          # uses the genotype's ``activation`` field
    backbone_layer: Callable[[int, int], Layer] | None = None  # (backbone channels, width) -> its layer

    def __post_init__(self) -> None:
        if self.layer is not None and self.backbone_layer is not None:
            raise ValueError(f"op {self.name!r}: an op reads the width or a backbone feature, not both")

    @property
    def reads_backbone(self) -> bool:
        return self.backbone_layer is not None

    def input_problem(self, inputs: Sequence[str], raw: Mapping[str, int], level: int) -> str:
        """Why a node at ``level`` with this op cannot read ``inputs`` (``raw``: the raw backbone
        features by name, with their levels); empty when it can."""
        if self.reads_backbone and (len(inputs) != 1 or raw.get(inputs[0]) != level):
            return (f"op {self.name!r} reads exactly one raw backbone feature at the node's level "
                    f"(one of {list(raw)}), got inputs {list(inputs)} at level {level}")
        return ""


ANY, BY_LEVEL, LISTED = "any", "by_level", "listed"


@dataclass(frozen=True)
class Combine:
    """How a node merges its inputs once they are resampled to its level.

    ``input_order`` says what the order of the inputs means, for the builder and the canonical
    form: ``any``, nothing (the merge is symmetric, or, like weighted fusion, symmetric but for
    learned weights that start equal, so the canonical form sorts the inputs); ``by_level``, the
    merge takes its inputs coarsest level first, and only between inputs of one level does the
    listed order decide; ``listed``, the merge takes them as listed.

    The merge itself is one of three kinds: a learned ``layer``, made for the number of inputs and
    called on their list (registered as ``fuse``); a ``function`` of :mod:`nasfpn.ops` called with
    the inputs as arguments; or, with neither, the inputs added. :meth:`merge_function` gives the
    builder the second and third as one callable, :meth:`source` the exporter all three.
    """
    name: str
    label: str                                              # in drawings
    arity: tuple[int, ...]                                  # the numbers of inputs it merges
    input_order: str = ANY
    function: str = ""
    layer: Callable[[int], Layer] | None = None             # (number of inputs) -> its layer

    def __post_init__(self) -> None:
        if self.input_order not in (ANY, BY_LEVEL, LISTED):
            raise ValueError(f"combine {self.name!r}: input_order {self.input_order!r} is not one of "
                             f"{[ANY, BY_LEVEL, LISTED]}")
        if self.function and self.layer is not None:
            raise ValueError(f"combine {self.name!r}: a merge is a function or a layer, not both")

    def order(self, levels: Sequence[int]) -> tuple[int, ...]:
        """The positions of the inputs in the order the merge takes them, given their levels."""
        if self.input_order == BY_LEVEL:
            return tuple(sorted(range(len(levels)), key=lambda j: -levels[j]))  # stable: ties as listed
        return tuple(range(len(levels)))

    def order_matters(self, levels: Sequence[int]) -> bool:
        """Whether listing inputs of these levels in another order changes what the merge computes."""
        return self.input_order == LISTED or (self.input_order == BY_LEVEL and len(set(levels)) < len(levels))

    def arity_text(self) -> str:
        """``exactly 2`` or ``1 to 3``, for error messages."""
        return count_text(self.arity)

    def merge_function(self) -> Callable[[list], Any] | None:
        """The merge as one callable on the list of inputs in merge order; None for a learned
        merge, whose layer is that callable."""
        if self.layer is not None:
            return None
        if self.function:
            from . import ops  # here, as in Layer.make

            return partial(_spread, getattr(ops, self.function))
        return _added

    def source(self, inputs: Sequence[str], fuse: str) -> str:
        """The merge as an exported file writes it, given each input's source in merge order and
        the attribute holding the learned layer."""
        if self.layer is not None:
            return f"{fuse}([{', '.join(inputs)}])"
        if self.function:
            return f"{self.function}({', '.join(inputs)})"
        return " + ".join(inputs)


@dataclass(frozen=True)
class Lateral:
    """How backbone features become cell inputs of the neck's width."""
    name: str
    label: str                                              # in drawings
    layer: Callable[[int, int], Layer] | None = None        # (backbone channels, width) -> one level's lateral

    @property
    def shared(self) -> bool:
        """Whether each backbone level has one lateral that every reader shares. Without one, every
        first-cell edge reading a backbone feature of another width has its own :func:`adapter`."""
        return self.layer is not None


@dataclass(frozen=True)
class ExtraOp:
    """How one pyramid level the backbone lacks is made from the level below it."""
    name: str
    label: str                                              # in drawings
    layer: Callable[[int, int], Layer]                      # (channels in, width) -> its layer
    keeps_channels: bool = False                            # so it needs its input at the width already


@dataclass(frozen=True)
class Downsample:
    """How an edge from a finer level is brought down to its node's level."""
    name: str
    label: str                                              # in drawings
    layer: Callable[[int, int], Layer] | None = None        # (width, factor) -> a learned layer per edge; None: max-pool


def adapter(channels: int, width: int) -> Layer:
    """The layer through which an edge or output of the first cell reads a backbone feature of
    another width than the neck's: its own 1x1 conv + BN (EfficientDet's per-edge laterals)."""
    return layer("ConvBN", channels, width)


Record = TypeVar("Record", Op, Combine, Lateral, ExtraOp, Downsample)


def _table(*records: Record) -> dict[str, Record]:
    """Records by name, in the order given (the order error messages list them in). A plain dict,
    read-only by its type below: a test adds a word to show that nothing else needs to change."""
    return {record.name: record for record in records}


OPS: Mapping[str, Op] = _table(
    Op("none", "—"),
    Op("conv3x3", "conv3x3", lambda width, activation: layer("nn.Conv2d", width, width, 3, padding=1)),
    Op("relu_conv_bn", "relu-conv-bn", lambda width, activation: layer("ReluConvBN", width)),
    Op("sepconv_bn", "sepconv-bn", lambda width, activation: layer("SepConvBN", width, swish=activation == "swish"),
       reads_activation=True),
    Op("sac", "SAC", lambda width, activation: layer("SACBN", width)),
    Op("rfa", "RFA", backbone_layer=lambda channels, width: layer("RFA", channels, width)),
)

COMBINES: Mapping[str, Combine] = _table(
    Combine("sum", "sum", arity=(1, 2, 3)),
    Combine("weighted", "weighted", arity=(1, 2, 3), layer=lambda inputs: layer("WeightedFusion", inputs)),
    Combine("global_attention", "GP attn", arity=(2,), input_order=BY_LEVEL, function="global_attention"),
    Combine("global_attention_avg", "GP attn avg", arity=(2,), input_order=BY_LEVEL, function="global_attention_avg"),
)

LATERALS: Mapping[str, Lateral] = _table(
    Lateral("conv", "1x1 conv", lambda channels, width: layer("nn.Conv2d", channels, width, 1)),
    Lateral("conv_bn", "1x1 conv + BN", lambda channels, width: layer("ConvBN", channels, width)),
    Lateral("edge_conv_bn", "per-edge 1x1 conv + BN"),
)

EXTRA_OPS: Mapping[str, ExtraOp] = _table(
    ExtraOp("conv", "conv", lambda channels, width: layer("ExtraConv", channels, width, relu=False)),
    ExtraOp("relu_conv", "relu-conv", lambda channels, width: layer("ExtraConv", channels, width, relu=True)),
    ExtraOp("pool", "pool", lambda channels, width: layer("ExtraPool", channels, width, project=False),
            keeps_channels=True),
    ExtraOp("proj_pool", "proj-pool", lambda channels, width: layer("ExtraPool", channels, width, project=True)),
)

DOWNSAMPLES: Mapping[str, Downsample] = _table(
    Downsample("pool", "max-pool"),
    Downsample("conv", "3x3 stride-2 conv", lambda width, factor: layer("DownConv", width, factor)),
)

# The most inputs a node may read: the most any combine merges.
MAX_INPUTS = max(n for combine in COMBINES.values() for n in combine.arity)


def _spread(function: Callable[..., Any], inputs: list) -> Any:
    return function(*inputs)


def _added(inputs: list) -> Any:
    out = inputs[0]
    for x in inputs[1:]:
        out = out + x
    return out


def count_text(counts: Sequence[int]) -> str:
    """Input counts for a message: ``exactly 2``, ``1 to 3``, ``1 or 3``."""
    counts = sorted(set(counts))
    if len(counts) == 1:
        return f"exactly {counts[0]}"
    if counts == list(range(counts[0], counts[-1] + 1)):
        return f"{counts[0]} to {counts[-1]}"
    return ", ".join(map(str, counts[:-1])) + f" or {counts[-1]}"


def mergeable_counts(combines: Sequence[str]) -> tuple[int, ...]:
    """The input counts that at least one of ``combines`` merges."""
    return tuple(sorted({n for name in combines for n in COMBINES[name].arity}))
