"""Another model's first layers in front of a ViT's encoder stack (the `Stem` surgery).

The ViT keeps its class hierarchy, module paths and weights; its class is switched to a
subclass that runs `stem` on the image first, and `stem` is listed first among its modules.
Layer indices then count the new model's layers: index 0 is the stem's output (the map the
ViT's patch embedding sees), index k the k-th encoder block.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from timm.models._features import feature_take_indices
from timm.models.vision_transformer import VisionTransformer
from torch import nn


class StemLayers(nn.Module):
    """Donor layers run in order; their first `channels` maps, resized to `size`, are the ViT's input.

    Each layer is registered under its donor path with dots as underscores (conv1, layer1_0).
    """

    def __init__(self, layers: dict[str, nn.Module], channels: int, size: tuple[int, int]):
        super().__init__()
        for path, module in layers.items():
            self.add_module(path.replace(".", "_"), module)
        self.channels, self.size = channels, tuple(size)

    def run_layers(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.children():
            x = module(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.run_layers(x)[:, : self.channels]
        if tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        return x


class TimmStemViT(VisionTransformer):
    """timm's ViT with `stem` first; forward_intermediates index 0 is the stem's output."""

    def forward_features(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        return super().forward_features(self.stem(x), **kwargs)

    def forward_intermediates(self, x, indices=None, *, intermediates_only: bool = False, **kwargs):
        take, _ = feature_take_indices(len(self.blocks) + 1, indices)
        x = self.stem(x)
        blocks = [i - 1 for i in take if i > 0]
        if not blocks and intermediates_only:
            return [x]
        out = super().forward_intermediates(x, indices=blocks or [len(self.blocks) - 1], intermediates_only=intermediates_only, **kwargs)
        final, inner = (None, out) if intermediates_only else out
        inner = ([x] if 0 in take else []) + (inner if blocks else [])
        return inner if intermediates_only else (final, inner)


class TorchvisionStemViT(torchvision.models.VisionTransformer):
    """torchvision's ViT with `stem` first (its hidden layers list `stem` before the encoder layers)."""

    def _process_input(self, x: torch.Tensor) -> torch.Tensor:
        return super()._process_input(self.stem(x))


STEM_CLASSES = {VisionTransformer: TimmStemViT, torchvision.models.VisionTransformer: TorchvisionStemViT}


def put_stem_first(net: nn.Module, stem: StemLayers) -> nn.Module:
    """Make `net` (exactly a timm or torchvision VisionTransformer) run `stem` on its input first, in place."""
    net.__class__ = STEM_CLASSES[type(net)]
    net._modules = {"stem": stem, **net._modules}  # first in named_modules and state_dict, as it runs first
    if isinstance(getattr(net, "feature_info", None), list):
        net.feature_info = [dict(module="stem", num_chs=stem.channels, reduction=1), *net.feature_info]
    return net
