"""Pixel-space metrics: each `(image, reference) -> [N]`, images [N, 3, H, W], image unclamped
(torchmetrics where it has them)."""

from __future__ import annotations

import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure


@torch.no_grad()
def psnr(image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB (data range 1) of the image clamped to [0, 1]."""
    return peak_signal_noise_ratio(image.detach().float().clamp(0, 1), reference.float(), data_range=1.0,
                                   reduction="none", dim=(1, 2, 3))


@torch.no_grad()
def ssim(image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Structural similarity (data range 1) of the image clamped to [0, 1]."""
    # channels-last: SSIM's 11x11 per-channel Gaussian convolution can run faster on CPU in that layout (the same
    # values); SSIM is most of a log step's cost. scripts/benchmark.py times both layouts (`cpu_choices`).
    clamped = image.detach().float().clamp(0, 1).contiguous(memory_format=torch.channels_last)
    return structural_similarity_index_measure(clamped, reference.float().contiguous(memory_format=torch.channels_last),
                                               data_range=1.0, reduction="none")


@torch.no_grad()
def input_l2(image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Input-space L2 distance of the unclamped image."""
    return (image.detach().float() - reference.float()).flatten(1).norm(dim=1)
