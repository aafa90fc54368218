"""Random view transforms: what the network sees of the crop changes every step (class and feature generation)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from repinv.errors import RepinvError
from repinv.priors.base import Prior


def to_device(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device`; to a GPU through pinned memory, so the copy queues behind the step's
    kernels instead of waiting for them (a copy from pageable memory synchronises the stream)."""
    if device.type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)


class ScaleRotate(Prior):
    """A random zoom in [scale[0], scale[1]] and rotation in [-degrees, degrees] per image and step, differentiable.

    The view is resampled bilinearly on an affine grid (reflection at the border), rotating in
    pixel units so non-square images are not sheared. Draws come from the caller's generator,
    so a seeded (or resumed) run sees the same views. As a prior it is the
    `transform` of every step's crop.
    """

    def __init__(self, scale: tuple[float, float] = (0.9, 1.1), degrees: float = 5.0):
        lo, hi = (float(s) for s in scale)
        if not 0 < lo <= hi or degrees < 0:
            raise RepinvError(
                f"scale_rotate scale={list(scale)} must be [low, high] with 0 < low <= high, and degrees={degrees} "
                "non-negative; e.g. scale=[0.9, 1.1], degrees=5 (scale=[1, 1], degrees=0 is no transform)."
            )
        self.scale, self.degrees = (lo, hi), float(degrees)
        self.rows: tuple[int, int, int] | None = None  # (start, stop, total) of this process's targets; None: all

    def take_rows(self, start: int, stop: int, total: int) -> None:
        self.rows = (start, stop, total)

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """`n` scales and angles (degrees), drawn uniformly on the CPU from `generator`."""
        u = torch.rand((2, n), generator=generator, dtype=torch.float64)
        lo, hi = self.scale
        return lo + (hi - lo) * u[0], self.degrees * (2 * u[1] - 1)

    def apply(self, image: torch.Tensor, scales: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
        """`image` [N, C, H, W] zoomed by `scales` and rotated by `degrees` (one each per image).

        A draw of no zoom and no rotation returns `image` itself: resampling on the identity grid
        would only add float32 rounding (a few 1e-6).
        """
        if bool((scales == 1).all() and (degrees == 0).all()):
            return image
        h, w = image.shape[-2:]
        angle = degrees * (math.pi / 180)
        cos, sin = torch.cos(angle) / scales, torch.sin(angle) / scales
        zero = torch.zeros_like(cos)
        theta = torch.stack([torch.stack([cos, -sin * h / w, zero], -1), torch.stack([sin * w / h, cos, zero], -1)], 1)
        grid = F.affine_grid(to_device(theta.to(image.dtype), image.device), list(image.shape), align_corners=False)
        return F.grid_sample(image, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    def __call__(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """`image` transformed; the draws are those of every target, this process's rows kept (`take_rows`)."""
        if self.rows is None:
            return self.apply(image, *self.sample(image.shape[0], generator))
        start, stop, total = self.rows
        scales, degrees = self.sample(total, generator)
        return self.apply(image, scales[start:stop], degrees[start:stop])

    def transform(self, view: torch.Tensor, step: int, generator: torch.Generator) -> torch.Tensor:
        return self(view, generator)
