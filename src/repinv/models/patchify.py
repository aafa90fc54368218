"""A faster, equivalent patch embedding for CPU.

A convolution whose stride equals its kernel (ViT and Mixer patch embeddings) is a matmul
over non-overlapping patches. On CPU its forward plus input gradient is several times faster
than the convolution's (`cpu_choices` in scripts/benchmark.py times both), and the matmul runs on
packed weights like every other frozen linear layer (`repinv.models.packed`). The module keeps its
class hierarchy, parameters and state-dict keys; only `forward` changes.
"""

from __future__ import annotations

import torch
from torch import nn

from repinv.models.packed import linear


class PatchConv2d(nn.Conv2d):
    """nn.Conv2d with kernel == stride, no padding, computed as patch-flatten + linear."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kh, kw = self.kernel_size
        n, c, h, w = x.shape
        gh, gw = h // kh, w // kw
        x = x[:, :, : gh * kh, : gw * kw]
        patches = x.reshape(n, c, gh, kh, gw, kw).permute(0, 2, 4, 1, 3, 5).reshape(n, gh, gw, c * kh * kw)
        out = linear(self, patches, self.weight.reshape(self.out_channels, -1), self.bias)
        return out.permute(0, 3, 1, 2)


def _is_patch_conv(m: nn.Module) -> bool:
    return (
        type(m) is nn.Conv2d
        and m.kernel_size == m.stride
        and m.kernel_size != (1, 1)
        and m.padding == (0, 0)
        and m.dilation == (1, 1)
        and m.groups == 1
        and m.padding_mode == "zeros"
    )


def patchify_convs(net: nn.Module) -> int:
    """Switch every patch convolution in `net` to PatchConv2d in place; returns how many."""
    count = 0
    for m in net.modules():
        if _is_patch_conv(m):
            m.__class__ = PatchConv2d
            count += 1
    return count
