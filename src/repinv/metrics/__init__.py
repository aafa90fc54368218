"""Metrics of a reconstruction against its reference image.

A metric is a plain function `(image [N, 3, H, W] in [0, 1] unclamped, reference [N, 3, H, W]) -> [N]`;
the `metrics` config group names the ones a run computes (name -> `_target_` with `_partial_: true`).
"""

from repinv.metrics.pixel import input_l2, psnr, ssim

__all__ = ["input_l2", "psnr", "ssim"]
