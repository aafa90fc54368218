"""The image batch as a function of a trainable tensor: the one thing an inversion optimises."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from repinv.errors import RepinvError


def batch_shape(shape: Sequence[int]) -> tuple[int, int, int, int]:
    """`shape` as a tuple [N, C, H, W] of positive sizes, or a RepinvError saying what is expected."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != 4 or min(shape) < 1:
        raise RepinvError(
            f"An image parametrisation needs a batch shape [N, C, H, W] of positive sizes, got {list(shape)}; "
            "e.g. [2, 3, 224, 224] for two RGB images at 224x224."
        )
    return shape


class Parametrization(nn.Module):
    """An image batch [N, C, H, W] rendered from one trainable tensor `self.param` (batch first).

    Subclasses define `param_shape`, `render` and `encode`, both linear and exact inverses of
    each other, so that a run can start from pixel-space noise, resume from a saved image, and
    let pixel-space priors (the blur) write their result back with `set_image`. The batch
    dimension of `param` is the image's, so rows can be sliced or restored image by image.
    """

    def __init__(self, shape: Sequence[int]):
        super().__init__()
        self.shape = batch_shape(shape)
        self.param = nn.Parameter(torch.zeros(self.param_shape()))

    def param_shape(self) -> tuple[int, ...]:
        """Shape of the trainable tensor for `self.shape`."""
        raise NotImplementedError

    def render(self) -> torch.Tensor:
        """The image batch [N, C, H, W] in pixel space, differentiable in `self.param`."""
        raise NotImplementedError

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """The parameter value (not set) for which `render()` returns `image`."""
        raise NotImplementedError

    def take_rows(self, start: int, stop: int) -> None:
        """Keep only the images [start, stop) of the batch (one process's shard): the parameter's batch rows."""
        self.shape = (stop - start, *self.shape[1:])
        self.param = nn.Parameter(self.param.data[start:stop].clone())

    def forward(self) -> torch.Tensor:
        return self.render()

    @torch.no_grad()
    def set_image(self, image: torch.Tensor) -> None:
        """Set the parameter in place (the optimiser keeps the same tensor) so that `render()` is `image`."""
        if tuple(image.shape) != self.shape:
            raise RepinvError(
                f"{type(self).__name__} holds images of shape {list(self.shape)}; "
                f"set_image got {list(image.shape)}. Resize or crop the image to that shape first."
            )
        self.param.copy_(self.encode(image.to(self.param.device)))

    @classmethod
    def from_image(cls, image: torch.Tensor, **kwargs) -> Parametrization:
        """A parametrisation of `image.shape` that renders `image`."""
        p = cls(image.shape, **kwargs)
        p.set_image(image)
        return p
