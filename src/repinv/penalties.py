"""Image priors as per-image penalties, and a random scale/rotation view for class generation.

Penalties take an image batch [N, C, H, W] in pixel space and return one weighted value per
image [N], so each image's loss carries its own prior. Mahendran & Vedaldi (2015) use total
variation and an alpha-norm; the L2 decay is the alpha-norm at alpha 2.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from repinv.errors import RepinvError


def total_variation(image: torch.Tensor, beta: float = 2.0) -> torch.Tensor:
    """Per-image sum over pixels and channels of (dx² + dy²)^(beta/2), forward differences.

    The squared norm is floored at the dtype's smallest normal number so beta < 2 keeps a
    finite gradient where the image is flat.
    """
    dx = image[..., :-1, 1:] - image[..., :-1, :-1]
    dy = image[..., 1:, :-1] - image[..., :-1, :-1]
    squared = (dx * dx + dy * dy).clamp_min(torch.finfo(image.dtype).tiny)
    return squared.pow(beta / 2).flatten(1).sum(1)


def alpha_norm(image: torch.Tensor, alpha: float = 6.0, center: float = 0.5) -> torch.Tensor:
    """Per-image sum of |x - center|^alpha: a large alpha keeps pixels near [center ± 0.5] without clamping.

    Centred on mid-grey rather than on the image's own mean (Mahendran & Vedaldi subtract the
    data mean), so an image drifting bright or dark as a whole is penalised too.
    """
    return (image - center).abs().pow(alpha).flatten(1).sum(1)


class TotalVariation:
    """`weight` times the per-image total variation of exponent `beta` (1: edges kept sharp; 2: smooth)."""

    def __init__(self, weight: float = 1e-4, beta: float = 2.0):
        if weight < 0 or beta <= 0:
            raise RepinvError(f"tv weight={weight} must be non-negative and beta={beta} positive (1 or 2 are usual).")
        self.weight, self.beta = float(weight), float(beta)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return self.weight * total_variation(image, self.beta)


class AlphaNorm:
    """`weight` times the per-image alpha-norm |x - center|^alpha summed over pixels and channels."""

    def __init__(self, weight: float = 1e-4, alpha: float = 6.0, center: float = 0.5):
        if weight < 0 or alpha < 1:
            raise RepinvError(f"alpha_norm weight={weight} must be non-negative and alpha={alpha} at least 1 (6 is usual).")
        self.weight, self.alpha, self.center = float(weight), float(alpha), float(center)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return self.weight * alpha_norm(image, self.alpha, self.center)


class L2Decay(AlphaNorm):
    """`weight` times the per-image sum of (x - center)²: pulls every pixel towards mid-grey."""

    def __init__(self, weight: float = 1e-4, center: float = 0.5):
        super().__init__(weight, alpha=2.0, center=center)


class ScaleRotate:
    """A random zoom in [scale[0], scale[1]] and rotation in [-degrees, degrees] per image, differentiable.

    The view is resampled bilinearly on an affine grid (reflection at the border), rotating in
    pixel units so non-square images are not sheared. Draws come from the caller's generator,
    so a seeded (or resumed) run sees the same views.
    """

    def __init__(self, scale: tuple[float, float] = (0.9, 1.1), degrees: float = 5.0):
        lo, hi = (float(s) for s in scale)
        if not 0 < lo <= hi or degrees < 0:
            raise RepinvError(
                f"scale={list(scale)} must be [low, high] with 0 < low <= high and degrees={degrees} non-negative; "
                "e.g. scale=[0.9, 1.1], degrees=5 (scale=[1, 1], degrees=0 is no transform)."
            )
        self.scale, self.degrees = (lo, hi), float(degrees)

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
        grid = F.affine_grid(theta.to(image), list(image.shape), align_corners=False)
        return F.grid_sample(image, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    def __call__(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.apply(image, *self.sample(image.shape[0], generator))
