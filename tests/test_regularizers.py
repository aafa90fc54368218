"""The separable blur equals the 2-D Gaussian convolution it replaces."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from repinv.priors import GaussianBlur


@pytest.mark.parametrize("kernel_size", [3, 5])
def test_separable_blur_equals_depthwise_gaussian_conv(kernel_size):
    blur = GaussianBlur(kernel_size=kernel_size, sigma_start=2.4, sigma_end=0.4)
    img = torch.rand(2, 3, 20, 17, generator=torch.Generator().manual_seed(0))
    w = torch.tensor(blur.weights(blur.sigma(3, 10)))
    k2 = (w[:, None] * w[None, :]).expand(3, 1, kernel_size, kernel_size)
    r = kernel_size // 2
    expected = F.conv2d(F.pad(img, (r, r, r, r), mode="reflect"), k2, groups=3)
    out = img.clone()
    blur.update(out, 3, 10)
    assert torch.allclose(out, expected, atol=1e-6)
    assert (out - img).abs().max() > 1e-3  # it did blur


def test_blur_skips_steps_between_every():
    img = torch.rand(1, 3, 8, 8)
    out = img.clone()
    GaussianBlur(every=2).update(out, 1, 10)
    assert torch.equal(out, img)
