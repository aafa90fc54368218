"""Penalty priors: a weighted value per image added to its loss (Mahendran & Vedaldi, 2015).

Each takes the crop the network saw [N, C, H, W], in pixel space whatever the parametrisation,
and returns one weighted value per image [N], so each image's loss carries its own prior.
Mahendran & Vedaldi use total variation and an alpha-norm; the L2 decay is the alpha-norm at
alpha 2. Calling a penalty on an image gives the same values as its `penalty` hook.

Default weights: each penalty's input gradient is about a tenth of the study's data term's (0.15·L1 on the
normalised image) from the starting noise at an untrained ViT-B/32's block 5 (gradient norms 172 for TV, 2.0 for the
alpha-norm and 160 for the L2 decay at weight 1, against 231 for the data term), so a preset's prior shapes the image
without replacing the objective.
"""

from __future__ import annotations

import torch

from repinv.errors import RepinvError
from repinv.priors.base import Prior


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


class Penalty(Prior):
    """A prior that only adds a term to each image's loss: subclasses define `__call__(image) -> [N]`."""

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def penalty(self, view: torch.Tensor, step: int) -> torch.Tensor:
        return self(view)


class TotalVariation(Penalty):
    """`weight` times the per-image total variation of exponent `beta` (1: edges kept sharp; 2: smooth)."""

    def __init__(self, weight: float = 0.1, beta: float = 2.0):
        if weight < 0 or beta <= 0:
            raise RepinvError(f"tv weight={weight} must be non-negative and beta={beta} positive (1 or 2 are usual).")
        self.weight, self.beta = float(weight), float(beta)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return self.weight * total_variation(image, self.beta)


class AlphaNorm(Penalty):
    """`weight` times the per-image alpha-norm |x - center|^alpha summed over pixels and channels."""

    def __init__(self, weight: float = 10.0, alpha: float = 6.0, center: float = 0.5):
        if weight < 0 or alpha < 1:
            raise RepinvError(f"alpha_norm weight={weight} must be non-negative and alpha={alpha} at least 1 (6 is usual).")
        self.weight, self.alpha, self.center = float(weight), float(alpha), float(center)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return self.weight * alpha_norm(image, self.alpha, self.center)


class L2Decay(AlphaNorm):
    """`weight` times the per-image sum of (x - center)²: pulls every pixel towards mid-grey."""

    def __init__(self, weight: float = 0.1, center: float = 0.5):
        super().__init__(weight, alpha=2.0, center=center)
