"""DetectoRS' recursive feature pyramid (RFP): the neck of a genotype with ``recursion``.

:func:`nasfpn.build_neck` returns a :class:`RecursiveNeck` for such a genotype: the neck itself
(a :class:`~nasfpn.neck.Neck` built from the genotype without its recursion, whose weights
every step uses), the ASPP, one ``rfp_conv`` per fed level and the fusion gate, all made from
vocabulary calls as the rest of the neck (so the exporter writes them); this module does not
import :mod:`nasfpn.neck`, which imports it to build one. It needs the backbone, which it
does not own: ``forward(features, rerun)`` takes the first backbone pass's features
and ``rerun(feedback)``, a callable that runs the backbone again on the same images with
``feedback`` (``c{level}`` maps at the backbone's channels, added in the first block of the
stage making that level) and returns its new features. A :class:`~nasfpn.backbones.Backbone`
of a torchvision ResNet does that: ``lambda feedback: backbone(images, feedback)``; the proxy
detectors call :func:`neck_pass`, which wires it. Without ``rerun`` it refuses to run: a
recursive neck run on fixed features would be another neck under RFP's name.

The rules (what is fed back, where it enters, how steps are fused) are the genotype's, in
:mod:`nasfpn.recursion`.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .genotype import Genotype, GenotypeError
from .made_from_calls import MadeFromCalls
from .vocabulary import layer

if TYPE_CHECKING:
    from .neck import Neck  # annotations only: nasfpn.neck's build_neck makes this module's neck

Rerun = Callable[[Dict[str, Tensor]], Dict[str, Tensor]]


class RecursiveNeck(MadeFromCalls):
    """The neck of a genotype with ``recursion`` (see the module docstring and
    :mod:`nasfpn.recursion`), made by :func:`nasfpn.build_neck`. Parts: ``neck`` (the pyramid,
    shared by every step), ``aspp``, ``rfp_conv.p{level}`` (ASPP channels -> the backbone
    channels of that level, zero-init) and ``gate`` (width -> 1, zero-init). ``out_channels``,
    ``levels``, ``genotype`` and ``pre_fusion_levels`` as :class:`~nasfpn.neck.Neck`; ``calls``
    keeps its own layers' vocabulary calls, as a neck's, for the exporter.

    Args:
        genotype: with ``recursion``, at the neck's width.
        neck: the :class:`~nasfpn.neck.Neck` of ``genotype`` without its recursion.
        in_channels: the backbone channels per level (checked by ``neck``).
    """

    def __init__(self, genotype: Genotype, neck: "Neck", in_channels: Mapping[int, int] | Sequence[int]):
        super().__init__()
        genotype = genotype.validate()
        if genotype.recursion is None:
            raise GenotypeError("recursion: this genotype has none; build it with nasfpn.build_neck")
        if neck.genotype != genotype.replace(recursion=None):
            raise ValueError("neck: not the neck of this genotype without its recursion; use nasfpn.build_neck")
        if not isinstance(in_channels, Mapping):
            in_channels = dict(zip(genotype.backbone_levels, in_channels))
        self.genotype = genotype
        self.recursion = rec = genotype.recursion
        self.neck = neck
        self.out_channels = width = neck.out_channels
        self.levels = genotype.levels
        self.add_layer("aspp", layer("ASPP", width, rec.aspp_width, rec.dilations, image_pool=rec.image_pool))
        self.rfp_conv = nn.ModuleDict()
        for level in rec.levels:
            self.add_layer(f"rfp_conv.p{level}", layer("ZeroConv2d", rec.aspp_channels, in_channels[level]))
        self.add_layer("gate", layer("ZeroConv2d", width, 1))
        self.fed_levels: List[int] = list(rec.levels)
        self.steps = rec.steps

    @property
    def pre_fusion_levels(self) -> List[int]:
        return self.neck.pre_fusion_levels

    def forward(self, x: Dict[str, Tensor], rerun: Optional[Rerun] = None) -> Dict[str, Tensor]:
        """The outputs after ``recursion.steps`` passes. ``x``: the first backbone pass's
        features; ``rerun``: see the module docstring.

        Raises:
            ValueError: ``rerun`` is missing.
        """
        return self.forward_with_laterals(x, rerun)[0]

    def forward_with_laterals(self, x: Dict[str, Tensor], rerun: Optional[Rerun] = None
                              ) -> Tuple[Dict[str, Tensor], Dict[str, Tensor]]:
        """:meth:`forward`, and the neck's pre-fusion features of the last step
        (:meth:`nasfpn.neck.Neck.forward_with_laterals`), for a training-only loss on them."""
        if rerun is None:
            raise ValueError(f"this neck has recursion ({self.recursion.label()}): it runs the backbone again, "
                             "so it needs rerun(feedback) -> features (see nasfpn.rfp); it never runs without one")
        out, laterals = self.neck.forward_with_laterals(x)
        for _ in range(self.steps - 1):
            feedback = OrderedDict((f"c{lv}", self.rfp_conv[f"p{lv}"](self.aspp(out[f"p{lv}"])))
                                   for lv in self.fed_levels)
            new, laterals = self.neck.forward_with_laterals(rerun(feedback))
            out = OrderedDict((key, self.fuse(new[key], out[key])) for key in out)
        return out, laterals

    def fuse(self, new: Tensor, old: Tensor) -> Tensor:
        """DetectoRS' gated fusion of one level: ``a = sigmoid(gate(new))``, ``a * new + (1 - a) * old``."""
        a = torch.sigmoid(self.gate(new))
        return a * new + (1 - a) * old

    def extra_repr(self) -> str:
        return self.recursion.label()


def neck_pass(detector: nn.Module, images: Optional[Tensor], features: Optional[Dict[str, Tensor]],
              laterals: bool = False) -> Tuple[Dict[str, Tensor], Dict[str, Tensor]]:
    """A proxy detector's neck on one batch: its outputs and, with ``laterals``, its pre-fusion
    features (:meth:`~nasfpn.neck.Neck.forward_with_laterals`; else an empty dict), from
    ``features`` (C3.., e.g. cached) or from ``detector.features(images)``. A recursive neck
    runs ``detector.backbone`` again on ``images`` with its feedback, so it needs both and
    refuses cached features.

    Raises:
        RuntimeError: a recursive neck without images or a backbone, or given cached features.
    """
    neck = detector.neck
    if not isinstance(neck, RecursiveNeck):
        x = detector.features(images) if features is None else features
        return neck.forward_with_laterals(x) if laterals else (neck(x), {})
    backbone = detector.backbone
    if features is not None or images is None or backbone is None:
        raise RuntimeError(f"the neck {neck.genotype.name or neck.genotype.hash()[:12]!r} has recursion "
                           f"({neck.recursion.label()}): it runs the backbone again, so it needs the images and "
                           "the backbone, never cached features")
    outputs, pre_fusion = neck.forward_with_laterals(backbone(images), lambda feedback: backbone(images, feedback))
    return outputs, pre_fusion if laterals else {}


def check_backbone(neck: nn.Module, backbone: Optional[nn.Module]) -> None:
    """Refuse, when a detector is built, a backbone that a recursive neck cannot feed back into.

    Raises:
        BackboneError: a :class:`~nasfpn.backbones.Backbone` that is not a torchvision ResNet.
        TypeError: any other module (it takes no feedback).
    """
    if not isinstance(neck, RecursiveNeck) or backbone is None:
        return
    if not callable(getattr(backbone, "feedback_body", None)):
        raise TypeError(f"recursion ({neck.recursion.label()}) needs a nasfpn Backbone (nasfpn.backbones."
                        f"build_backbone of a torchvision ResNet), got a {type(backbone).__name__}")
    backbone.feedback_body(neck.fed_levels)


def unchanged_backbone(x: Dict[str, Tensor]) -> Rerun:
    """A stand-in for the second backbone pass that returns the first pass's features: for
    counting a recursive neck's own cost (its parts at every step, not the backbone's)."""
    return lambda feedback: x
