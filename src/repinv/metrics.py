"""Pixel-space metrics per target image (torchmetrics where it has them)."""

from __future__ import annotations

import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure


@torch.no_grad()
def pixel_metrics(image: torch.Tensor, reference: torch.Tensor) -> dict[str, torch.Tensor]:
    """PSNR and SSIM (data range 1, image clamped to [0, 1]) and input-space L2 of [N, 3, H, W] images, one value per image."""
    x = image.detach().float()
    ref = reference.float()
    clamped = x.clamp(0, 1)
    psnr = peak_signal_noise_ratio(clamped, ref, data_range=1.0, reduction="none", dim=(1, 2, 3))
    # channels-last: SSIM's 11x11 per-channel Gaussian convolution runs ~4x faster on CPU in that
    # layout (the same values); SSIM is most of a log step's cost (~0.4 s for 12 images at 224)
    ssim = structural_similarity_index_measure(clamped.contiguous(memory_format=torch.channels_last),
                                               ref.contiguous(memory_format=torch.channels_last), data_range=1.0, reduction="none")
    return {"input_l2": (x - ref).flatten(1).norm(dim=1), "psnr": psnr, "ssim": ssim}
