"""Metrics of a reconstruction against its reference image.

A metric is a plain function `(image [N, 3, H, W] in [0, 1] unclamped, reference [N, 3, H, W]) -> [N]`;
the `metrics` config group names the ones a run computes (name -> `_target_` with `_partial_: true`).
"""

from repinv.metrics.pixel import input_l2, psnr, ssim

HEADLINE = "psnr"  # the metric an inversion's pictures are captioned with, when the run computes it
FORMATS = {"psnr": "{:.1f} dB", "ssim": "SSIM {:.3f}"}


def describe(name: str, value: float) -> str:
    """A record field as a caption: in its metric's own format, else `name value`."""
    return FORMATS[name].format(value) if name in FORMATS else f"{name} {value:.3g}"


__all__ = ["FORMATS", "HEADLINE", "describe", "input_l2", "psnr", "ssim"]
