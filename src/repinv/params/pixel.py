"""The identity parametrisation: the parameter is the image, as in the study."""

from __future__ import annotations

import torch

from repinv.params.base import Parametrization


class Pixel(Parametrization):
    """Each pixel is a free parameter; a gradient step is a step in pixel space."""

    def param_shape(self) -> tuple[int, ...]:
        return self.shape

    def render(self) -> torch.Tensor:
        return self.param

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        return image.to(self.param.dtype)
