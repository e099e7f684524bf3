"""Backbones: any torchvision classification model, timm model (``timm:NAME``) or a user's
module, cut at C3..C5 by FX feature extraction, weights from a local file, optionally frozen.
timm models and packaged ImageNet weights (``efficientnet_lite0_imagenet``) are in
``nasfpn.pretrained``; this module builds every kind the same way.

A backbone reports the channels of each level it returns, so a neck is built to fit it; levels
are read off the output strides of a probe forward pass, so a user naming return nodes does not
have to say which level each one is.
"""
from __future__ import annotations

import hashlib
import importlib
import logging
import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, Mapping, Optional, Sequence

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.feature_extraction import create_feature_extractor
from torchvision.ops.misc import FrozenBatchNorm2d

from . import pretrained
from .ops import feedback_graph
from .pretrained import IMAGENET_MEAN, IMAGENET_STD, BackboneError  # noqa: F401  (their home for users)

log = logging.getLogger(__name__)

# Return nodes of the models we know by name; any other torchvision model needs them given.
KNOWN_RETURN_NODES: dict[str, tuple[str, ...]] = {
    "resnet18": ("layer2", "layer3", "layer4"),
    "resnet34": ("layer2", "layer3", "layer4"),
    "resnet50": ("layer2", "layer3", "layer4"),
    "resnet101": ("layer2", "layer3", "layer4"),
    "mobilenet_v3_large": ("features.6", "features.12", "features.16"),
    "mobilenet_v3_small": ("features.3", "features.8", "features.12"),
    "efficientnet_b0": ("features.3", "features.5", "features.7"),
}


class Backbone(nn.Module):
    """A feature extractor returning ``OrderedDict`` ``c3``.. (finest first), with ``channels``
    (level -> channels) and ``frozen`` set. A frozen backbone stays in eval mode. ``mean``/``std``:
    the input normalisation its weights were trained with. ``nodes``: the graph nodes the body
    returns, one per level (for a torchvision ResNet, the stages ``layer2``..``layer4``)."""

    def __init__(self, body: nn.Module, channels: Mapping[int, int], frozen: bool, name: str,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 nodes: Sequence[str] = ()):
        super().__init__()
        self.body = body
        self.channels = dict(channels)
        self.frozen = frozen
        self.name = name
        self.nodes = tuple(nodes)
        self._fed: Dict[tuple, nn.Module] = {}  # feedback bodies by levels: they share the body's modules, unregistered
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor, feedback: Optional[Mapping[str, Tensor]] = None) -> "OrderedDict[str, Tensor]":
        """``images``: float in [0, 1], normalised here. ``feedback``: maps ``c{level}`` at that
        level's channels, added inside the backbone as DetectoRS' recursive feature pyramid adds
        them (see :meth:`feedback_body`); None or empty: the plain pass."""
        x = (images - self.mean) / self.std
        if feedback:
            feats = self.feedback_body([int(key[1:]) for key in feedback])(x, *feedback.values())
        else:
            feats = self.body(x)
        return OrderedDict((f"c{level}", f) for level, f in zip(self.channels, feats.values()))

    def feedback_body(self, levels: Sequence[int]) -> nn.Module:
        """The body taking, after the image, one map per level of ``levels``, added in the first
        block of the stage that makes ``C{level}`` before its last ReLU (:func:`nasfpn.ops.feedback_graph`);
        it shares the body's weights. Made once per set of levels.

        Raises:
            BackboneError: the backbone is not a torchvision ResNet cut at its stages (the message
                names it), or a level is not one of its levels.
        """
        levels = tuple(levels)
        if levels not in self._fed:
            known = list(self.channels)
            where = f"backbone {self.name!r}: recursion (RFP) feeds back into the first block of the stages " \
                    f"making {', '.join(f'C{lv}' for lv in levels)}, which runs on torchvision ResNets (resnet18, " \
                    f"resnet34, resnet50, resnet101) cut at layer2..layer4"
            if not set(levels) <= set(known) or len(self.nodes) != len(known):
                raise BackboneError(f"{where}; this backbone returns levels {known} from nodes {list(self.nodes)}")
            try:
                self._fed[levels] = feedback_graph(self.body, [self.nodes[known.index(lv)] for lv in levels])
            except ValueError as err:
                raise BackboneError(f"{where}: {err}") from None
        return self._fed[levels]

    def train(self, mode: bool = True) -> "Backbone":
        return super().train(mode and not self.frozen)


@dataclass(frozen=True)
class _Parts:
    """A whole model before it is cut, and how its kind (torchvision or timm) is cut and frozen."""
    model: nn.Module
    nodes: tuple[str, ...] | None  # C3..C5; None: a user module returning its own dict
    mean: tuple[float, ...]
    std: tuple[float, ...]
    freeze: Callable[[nn.Module], nn.Module]
    extract: Callable[[nn.Module, Sequence[str]], nn.Module]
    convert: Callable[[dict], dict] | None = None  # renames a weights file's keys to the model's


def build_backbone(name: str, *, weights: str | Path | None = None, return_nodes: Sequence[str] | None = None,
                   freeze: bool = True, probe_size: int = 256) -> Backbone:
    """Build a backbone.

    Args:
        name: a torchvision classification model (``resnet18``, ``mobilenet_v3_large``, any name
            ``torchvision.models.get_model`` knows); ``timm:NAME`` for a timm model
            (``timm:resnet18``); ``efficientnet_lite0_imagenet`` (ImageNet weights from a package,
            see ``nasfpn.pretrained``); or ``package.module:attribute`` for your own ``nn.Module``
            class or factory (called with no arguments).
        weights: a local state-dict file for the whole model (``torch.save(model.state_dict())``,
            or ``.safetensors``; loaded as tensors only). None: random initialisation, or the
            packaged weights of a named pretrained backbone; nothing is ever downloaded.
        return_nodes: graph nodes giving C3..C5 (finest first); needed for torchvision models not
            in ``KNOWN_RETURN_NODES`` (timm models have them from ``feature_info``). A user module
            without them must itself return a dict of maps.
        freeze: no gradients, and BatchNorm frozen (``FrozenBatchNorm2d``).

    Raises:
        BackboneError: unknown model, bad return nodes, weights that do not fit, or a timm
            backbone without timm installed.
    """
    parts = _timm_parts(name, return_nodes) if pretrained.is_timm(name) else _torchvision_parts(name, return_nodes)
    weights = weights if weights is not None else default_weights(name)
    model = parts.freeze(parts.model) if freeze else parts.model
    if parts.nodes:
        try:
            body = parts.extract(model, parts.nodes)
        except (ValueError, KeyError) as err:
            raise BackboneError(f"backbone {name!r}: return nodes {list(parts.nodes)}: {err}") from None
    else:
        body = model
    if weights is not None:
        # Into the body, not the whole model: a saved body (the warm-up's) lacks the classifier.
        load_weights(body, weights, spare=model.state_dict().keys(), convert=parts.convert)
    channels = _probe_levels(body, name, probe_size)
    if freeze:
        for p in body.parameters():
            p.requires_grad_(False)
    backbone = Backbone(body, channels, freeze, name, parts.mean, parts.std, nodes=parts.nodes or ())
    return backbone.train(False) if freeze else backbone


def default_weights(name: str) -> Path | None:
    """The weights a backbone has without a ``weights`` file: a named pretrained backbone's
    packaged ImageNet weights; None (random) for every other."""
    return pretrained.packaged_weights(name) if name in pretrained.PACKAGED else None


def load_weights(model: nn.Module, path: str | Path, *, spare: Iterable[str] = (),
                 convert: Callable[[dict], dict] | None = None) -> None:
    """Load a local state dict (``weights_only``: tensors, never arbitrary objects). Keys may be
    wrapped in ``state_dict``/``model`` and prefixed ``module.``/``backbone.``; the classifier may
    be missing; keys in ``spare`` (the parts of the whole model that ``model`` does not use) are
    skipped; ``convert`` renames keys first. Anything else that does not fit is an error naming
    the keys."""
    state = _read_state_dict(Path(path))
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise BackboneError(f"backbone weights {path}: not a state dict")
    for prefix in ("module.", "backbone.body.", "backbone."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    if convert is not None:
        state = convert(state)
    # Skipped by module, not by key: a frozen BatchNorm of the head has no num_batches_tracked.
    own = model.state_dict().keys()
    spare_modules = {k.rpartition(".")[0] for k in spare}
    state = {k: v for k, v in state.items() if k in own or k.rpartition(".")[0] not in spare_modules}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        detail = " ".join(line.strip() for line in str(err).splitlines()[1:3])
        raise BackboneError(f"backbone weights {path} do not fit the model: {detail}") from None
    head = ("fc.", "classifier.", "head.")
    missing = [k for k in missing if not k.startswith(head)]
    if missing or unexpected:
        raise BackboneError(f"backbone weights {path} do not fit the model: missing {missing[:5]}, "
                            f"unexpected {unexpected[:5]}")


def _read_state_dict(path: Path) -> object:
    if not path.is_file():
        raise BackboneError(f"backbone weights {path}: no such file")
    try:
        if path.suffix == ".safetensors":  # timm's hub files; the package comes with timm
            from safetensors.torch import load_file
            return load_file(path)
        return torch.load(path, map_location="cpu", weights_only=True)
    except ImportError:
        raise BackboneError(f"backbone weights {path}: reading .safetensors needs pip install safetensors") from None
    except Exception as err:  # torch raises several kinds for a file that is not a state dict
        raise BackboneError(f"backbone weights {path}: not a state dict: {str(err).splitlines()[0]}") from None


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm2d`` by torchvision's ``FrozenBatchNorm2d`` with its statistics."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            frozen.weight.copy_(child.weight.detach())
            frozen.bias.copy_(child.bias.detach())
            frozen.running_mean.copy_(child.running_mean)
            frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
        else:
            freeze_batchnorm(child)
    return module


def weights_fingerprint(path: str | Path | None) -> str:
    """A digest of a weights file (for cache keys); ``random`` for none."""
    if path is None:
        return "random"
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _torchvision_parts(name: str, return_nodes: Sequence[str] | None) -> _Parts:
    model = _model(name)  # first: an unknown name is the error to report, not missing nodes
    nodes = tuple(return_nodes) if return_nodes else KNOWN_RETURN_NODES.get(name)
    if not nodes and ":" not in name:
        raise BackboneError(f"backbone {name!r}: give return_nodes (the graph nodes of C3, C4, C5, finest first), "
                            f"e.g. {list(KNOWN_RETURN_NODES['resnet50'])} for a ResNet")
    return _Parts(model, nodes, IMAGENET_MEAN, IMAGENET_STD, freeze_batchnorm,
                  lambda model, nodes: create_feature_extractor(model, return_nodes={n: n for n in nodes}))


def _timm_parts(name: str, return_nodes: Sequence[str] | None) -> _Parts:
    model = pretrained.create_timm(name)
    mean, std = pretrained.normalisation(model)
    nodes = tuple(return_nodes) if return_nodes else pretrained.level_nodes(model)
    return _Parts(model, nodes, mean, std, pretrained.freeze_batchnorm, pretrained.feature_extractor,
                  pretrained.converter(name, model))


def _model(name: str) -> nn.Module:
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise BackboneError(f"backbone {name!r}: cannot import it: {err}") from None
        model = factory()
        if not isinstance(model, nn.Module):
            raise BackboneError(f"backbone {name!r}: calling it gave {type(model).__name__}, not an nn.Module")
        return model
    try:
        return torchvision.models.get_model(name, weights=None)
    except ValueError:
        known = sorted(torchvision.models.list_models(module=torchvision.models))
        raise BackboneError(f"backbone {name!r}: not a torchvision classification model; e.g. "
                            f"{', '.join(k for k in known if k.startswith(('resnet', 'mobilenet')))}") from None


@torch.no_grad()
def _probe_levels(body: nn.Module, name: str, size: int) -> dict[int, int]:
    """Channels per level, the level of each output read off its stride."""
    was_training = body.training
    body.eval()
    out = body(torch.zeros(1, 3, size, size))
    body.train(was_training)
    if not isinstance(out, Mapping) or not out:
        raise BackboneError(f"backbone {name!r} must return a dict of feature maps, got {type(out).__name__}")
    channels: dict[int, int] = {}
    for key, feat in out.items():
        level = round(math.log2(size / feat.shape[-1]))
        if level in channels:
            raise BackboneError(f"backbone {name!r}: outputs {list(out)} have two maps at stride {2 ** level}")
        channels[level] = feat.shape[1]
    levels = list(channels)
    if levels != list(range(levels[0], levels[0] + len(levels))):
        raise BackboneError(f"backbone {name!r}: outputs {list(out)} are at strides {[2 ** lv for lv in levels]}; "
                            "they must be consecutive levels, finest first (e.g. 8, 16, 32)")
    return channels
