"""Pixel metrics: one value per image, the values torchmetrics gives."""

from __future__ import annotations

import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from repinv.metrics import input_l2, psnr, ssim


def test_pixel_metrics_are_torchmetrics_values_per_image():
    torch.manual_seed(0)
    ref = torch.rand(3, 3, 40, 48)
    noise = torch.tensor([0.02, 0.1, 0.3]).view(3, 1, 1, 1)
    image = ref + noise * torch.randn_like(ref)  # leaves [0, 1]: PSNR and SSIM see it clamped
    m = {f.__name__: f(image, ref) for f in (input_l2, psnr, ssim)}
    clamped = image.clamp(0, 1)
    for i in range(3):
        assert torch.allclose(m["ssim"][i], structural_similarity_index_measure(clamped[i:i + 1], ref[i:i + 1], data_range=1.0),
                              atol=1e-6)
        assert torch.allclose(m["psnr"][i], peak_signal_noise_ratio(clamped[i:i + 1], ref[i:i + 1], data_range=1.0), atol=1e-5)
        assert torch.allclose(m["input_l2"][i], (image[i] - ref[i]).norm())
    assert m["ssim"][0] > m["ssim"][1] > m["ssim"][2] and m["psnr"][0] > m["psnr"][1] > m["psnr"][2]
