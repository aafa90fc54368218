"""Octaves: generate small, upscale, continue."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from repinv.errors import RepinvError
from repinv.priors.base import Prior


class Octaves(Prior):
    """Generate small, upscale, continue: the run's steps split evenly over `scales` (ascending, last 1.0).

    During an octave at scale s < 1 the image is kept at s times its size: after each step it is
    projected onto the bilinear upscalings of an image s times its size (the least-squares fit of
    one, upscaled), so what grows is a smooth upscaled small image; the projection leaves such an
    image as it is, however many steps the octave has. At the next octave the finer detail is free
    to form. The canvas keeps its size, so the optimiser state, checkpoints and logging are the
    same as without octaves.
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
        rows, cols = (upscalings(n, max(1, round(n * s)), img.device, img.dtype) for n in (h, w))
        img.copy_(rows @ img @ cols)


@functools.lru_cache(maxsize=8)
def upscalings(size: int, small: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """[size, size]: the orthogonal projection onto the linear upscalings (align_corners=False) of length-`small`
    signals to length `size`, one axis of a bilinear upscaling; symmetric, so it applies from either side. Kept on
    `device`: a step copies nothing to it."""
    eye = torch.eye(small, dtype=torch.float64).unsqueeze(0)  # `small` unit signals as channels
    up = F.interpolate(eye, size=size, mode="linear", align_corners=False)[0].T  # [size, small]
    return (up @ torch.linalg.pinv(up)).to(device, dtype)
