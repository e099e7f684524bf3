"""A genotype's optional ``recursion``: DetectoRS' Recursive Feature Pyramid (RFP) as data.

Without the field a genotype is a neck fed once by the backbone, as before (its hash does not
change). With it, the neck's outputs are fed back into the backbone, which runs again, and the
*same* neck runs on its new features (Qiao et al., CVPR 2021; DetectoRS' own code and mmdetection's
``RFP``):

* step 1: backbone -> neck -> outputs ``x``;
* step t = 2..``steps``: for each of ``levels`` (backbone levels), the output ``P{level}`` goes
  through ``feedback`` -- ``aspp``: one ASPP shared by every level and step (branches of
  ``aspp_width`` channels, each a conv with bias then ReLU, no norm: a 1x1 conv where a dilation
  is 1, else a 3x3 conv at that dilation; with ``image_pool`` also global average pooling then
  a 1x1 conv, broadcast back; concatenated) -- then through its own zero-initialised 1x1 conv
  with bias (``rfp_conv``) to the channels of ``C{level}``, and is added inside the backbone
  (``enters``: ``first_block``: in the first block of the stage that makes ``C{level}``, after
  the residual sum and before its last ReLU); the backbone runs again (``backbone``: ``shared``,
  the same backbone weights at every step, as DetectoRS' own code allows; mmdetection trains a
  second ResNet), then the same neck weights; every output level fuses the new and old outputs
  (``fusion``: ``gate``: ``a = sigmoid(conv1x1(x_new))``, one zero-initialised 1x1 conv from the
  width to one channel shared by every level, ``x = a * x_new + (1 - a) * x``).

At initialisation the feedback is zero, so the second backbone pass repeats the first, and the
gate is 0.5 on equal outputs: an RFP neck starts as its neck alone. DetectoRS' ``detectors``
config: ``steps: 2``, ``aspp_width: 64``, ``dilations: [1, 3, 6]`` with ``image_pool`` (mmdet
writes ``(1, 3, 6, 1)``, the last 1 being the pooled branch), ``levels: [3, 4, 5]``.

This module is plain data (no torch); the layers are in :mod:`nasfpn.ops` and the module that
runs them in :mod:`nasfpn.rfp`. Errors name the field as ``recursion.<field>``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

FEEDBACKS = ("aspp",)
ENTERS = ("first_block",)
FUSIONS = ("gate",)
BACKBONES = ("shared",)


@dataclass(frozen=True)
class Recursion:
    steps: int = 2
    feedback: str = "aspp"
    aspp_width: int = 64
    dilations: tuple[int, ...] = (1, 3, 6)
    image_pool: bool = True
    levels: tuple[int, ...] = (3, 4, 5)
    enters: str = "first_block"
    fusion: str = "gate"
    backbone: str = "shared"

    @property
    def aspp_channels(self) -> int:
        """Channels of the ASPP's output (its branches concatenated)."""
        return self.aspp_width * (len(self.dilations) + bool(self.image_pool))

    def problem(self, backbone_levels: Sequence[int]) -> str:
        """What is wrong with this recursion for a neck whose backbone gives ``backbone_levels``;
        empty when nothing is. The message starts with ``recursion.<field>``."""
        for name, choices in (("feedback", FEEDBACKS), ("enters", ENTERS), ("fusion", FUSIONS),
                              ("backbone", BACKBONES)):
            value = getattr(self, name)
            if not isinstance(value, str) or value not in choices:
                return f"recursion.{name}: unknown value {value!r}; choose one of {list(choices)}"
        if not _is_int(self.steps) or self.steps < 2:
            return (f"recursion.steps: the backbone and neck run this many times, at least 2, got {self.steps!r} "
                    f"(a neck without recursion has no recursion field)")
        if not _is_int(self.aspp_width) or self.aspp_width < 1:
            return f"recursion.aspp_width: must be a positive integer, got {self.aspp_width!r}"
        if not isinstance(self.dilations, tuple) or not self.dilations or \
                not all(_is_int(d) and d >= 1 for d in self.dilations):
            return f"recursion.dilations: must be a non-empty list of positive integers, got {_show(self.dilations)}"
        if not isinstance(self.image_pool, bool):
            return f"recursion.image_pool: must be true or false, got {self.image_pool!r}"
        levels = self.levels
        if not isinstance(levels, tuple) or not levels or not all(_is_int(lv) for lv in levels) \
                or list(levels) != sorted(set(levels)):
            return f"recursion.levels: must be a non-empty list of ascending, distinct levels, got {_show(levels)}"
        outside = [lv for lv in levels if lv not in backbone_levels]
        if outside:
            return (f"recursion.levels: {outside} not among the backbone levels {list(backbone_levels)}; the "
                    f"feedback of P{{level}} enters the backbone stage that makes C{{level}}")
        return ""

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.update(dilations=list(self.dilations), levels=list(self.levels))
        return data

    @classmethod
    def from_dict(cls, data: Any) -> "Recursion":
        """A recursion from plain data (as loaded from YAML); omitted fields take DetectoRS' values.
        Checked in full by the genotype (:meth:`problem`).

        Raises:
            ValueError: not a mapping, an unknown field, or a list field that is not a list.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"recursion: must be a mapping such as {{steps: 2}}, got {data!r}")
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(map(str, data)) - set(valid))
        if unknown:
            raise ValueError(f"recursion: unknown field(s) {unknown}; valid fields are {valid}")
        values = dict(data)
        for key in ("dilations", "levels"):
            if key in values:
                if not isinstance(values[key], (list, tuple)):
                    raise ValueError(f"recursion.{key}: must be a list, got {values[key]!r}")
                values[key] = tuple(values[key])
        return cls(**values)

    def canonical(self) -> "Recursion":
        """The same recursion in one spelling: the ASPP's branches are concatenated and read by
        1x1 convs, so their order changes nothing but the channel order."""
        return dataclasses.replace(self, dilations=tuple(sorted(self.dilations)))

    def label(self) -> str:
        """A short description for drawings and reports: ``RFP x2, ASPP(P3-P5) -> backbone``."""
        levels = f"P{self.levels[0]}" + (f"-P{self.levels[-1]}" if len(self.levels) > 1 else "")
        return f"RFP x{self.steps}: {self.feedback.upper()}({levels}) -> backbone {self.enters.replace('_', ' ')}, " \
               f"{self.fusion} fusion"


def cached_backbone_problem(genotype: Any) -> str:
    """Why ``genotype`` cannot train on a cached frozen backbone's features (empty when it can):
    a recursion runs the backbone again with feedback, which a feature cache cannot do."""
    if genotype.recursion is None:
        return ""
    name = genotype.name or genotype.hash()[:12]
    return (f"genotype {name!r} has recursion ({genotype.recursion.label()}): it runs the backbone again with "
            f"feedback from the neck, and a cached frozen backbone never runs; set backbone.cache: false "
            f"(--no-cache: the frozen backbone runs, shared by every step) or backbone.freeze: false (--no-freeze)")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _show(value: Any) -> str:
    return repr(list(value)) if isinstance(value, tuple) else repr(value)
