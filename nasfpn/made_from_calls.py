"""The base of every module the builder makes from vocabulary calls (a neck's cells and nodes,
the recursion's layers): it keeps each call by the layer's path, which the exporter writes."""
from __future__ import annotations

from typing import Dict

from torch import nn

from .vocabulary import Layer


class MadeFromCalls(nn.Module):
    """A module whose learned layers are made from vocabulary calls. ``calls`` keeps each call by
    the layer's path, in the order made: the exporter writes exactly these."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Dict[str, Layer] = {}

    def add_layer(self, path: str, call: Layer) -> nn.Module:
        parent, _, name = path.rpartition(".")
        module = call.make()
        self.get_submodule(parent).add_module(name, module)
        self.calls[path] = call
        return module
