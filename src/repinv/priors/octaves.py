"""Octaves: generate small, upscale, continue."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from repinv.errors import RepinvError
from repinv.priors.base import Prior


class Octaves(Prior):
    """Generate small, upscale, continue: the run's steps split evenly over `scales` (ascending, last 1.0).

    During an octave at scale s < 1 the image is kept at s times its size: after each step it
    is resized down (area) and back up (bilinear), so what grows is a smooth upscaled small
    image. At the next octave the finer detail is free to form. The canvas keeps its size, so
    the optimiser state, checkpoints and logging are the same as without octaves.
    """

    def __init__(self, scales=(0.5, 1.0)):
        self.scales = [float(s) for s in scales]
        if not self.scales or any(not 0 < s <= 1 for s in self.scales) or self.scales != sorted(self.scales) \
                or self.scales[-1] != 1:
            raise RepinvError(
                f"priors.octaves.scales={scales} must be ascending scales in (0, 1] ending at 1.0, e.g. [0.25, 0.5, "
                "1.0]: the image is generated at each fraction of the model's input size in turn, the last octave at "
                "full size (without it the run ends on an upscaled small image)."
            )

    def scale(self, step: int, total: int) -> float:
        return self.scales[min(step * len(self.scales) // max(total, 1), len(self.scales) - 1)]

    @torch.no_grad()
    def update(self, img: torch.Tensor, step: int, total: int) -> None:
        """Project `img` [N, C, H, W] in place onto this octave's resolution."""
        s = self.scale(step, total)
        if s >= 1:
            return
        h, w = img.shape[-2:]
        small = F.interpolate(img, size=(max(1, round(h * s)), max(1, round(w * s))), mode="area")
        img.copy_(F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False))
