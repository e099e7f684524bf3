"""Parameters and multiply-adds of a neck, counted by torch's own FLOP counter."""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .genotype import Genotype
from .neck import build_neck, example_inputs
from .rfp import RecursiveNeck, unchanged_backbone


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def count_macs(module: nn.Module, inputs) -> int:
    """Multiply-adds of one forward pass (convolutions and matrix products; torch's counter
    reports 2 FLOPs per multiply-add). Pooling, resampling and elementwise merges are not
    counted, as is usual for detection necks.

    A recursive neck (RFP) is counted with a stand-in for its second backbone pass that returns
    the first pass's features: its own layers at every step (the neck ``steps`` times, the ASPP,
    ``rfp_conv`` and gate), not the backbone's extra passes, which are backbone cost."""
    counter = FlopCounterMode(display=False)
    with counter:
        if isinstance(module, RecursiveNeck):
            module(inputs, unchanged_backbone(inputs))
        else:
            module(inputs)
    return counter.get_total_flops() // 2


def neck_cost(genotype: Genotype, in_channels: Mapping[int, int], image_size: int = 512,
              width: int | None = None) -> dict[str, int]:
    """``{"params": ..., "macs": ...}`` of the neck for a square image of ``image_size``."""
    neck = build_neck(genotype, in_channels, width).eval()
    return {"params": count_params(neck), "macs": count_macs(neck, example_inputs(in_channels, image_size))}
