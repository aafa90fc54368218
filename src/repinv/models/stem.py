"""Another model's first layers in front of a ViT's encoder stack (the `Stem` surgery).

The ViT keeps its class hierarchy, module paths and weights; its class is switched to a
subclass that runs `stem` on the image first (each model source names that subclass,
`ModelSource.stem_classes`), and `stem` is listed first among its modules. Layer indices then
count the new model's layers: index 0 is the stem's output (the map the ViT's patch embedding
sees), index k the k-th encoder block.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FirstChannels(nn.Module):
    """The first `channels` maps of its input: the stem's own output, before it is resized (`stem.maps`, a layer to
    invert: ResNet50's conv1 gives 3x112x112 there, as many outputs as ViT-B/32's patch embedding)."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, : self.channels]


class StemLayers(nn.Module):
    """Donor layers run in order; their first `channels` maps (`maps`), resized to `size`, are the ViT's input.

    Each layer is registered under its donor path with dots as underscores (conv1, layer1_0).
    """

    def __init__(self, layers: dict[str, nn.Module], channels: int, size: tuple[int, int]):
        super().__init__()
        for path, module in layers.items():
            self.add_module(path.replace(".", "_"), module)
        self.maps = FirstChannels(channels)
        self.size = tuple(size)

    @property
    def channels(self) -> int:
        return self.maps.channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.children():
            x = module(x)
        if tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        return x


def put_stem_first(net: nn.Module, stem: StemLayers, stemmed: type[nn.Module]) -> nn.Module:
    """Make `net` an instance of `stemmed` (its class's stem subclass) that runs `stem` on its input first, in place."""
    net.__class__ = stemmed
    net._modules = {"stem": stem, **net._modules}  # first in named_modules and state_dict, as it runs first
    if isinstance(getattr(net, "feature_info", None), list):
        net.feature_info = [dict(module="stem", num_chs=stem.channels, reduction=1), *net.feature_info]
    return net
