"""A Laplacian pyramid: the image is the sum of its levels, each upsampled from half the resolution of the one above."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from repinv.errors import RepinvError, is_number, is_whole
from repinv.params.base import Parametrization, batch_shape

# The smallest weight gain^(levels-1) of the coarsest level: its parameter is the image / that weight,
# which float32 holds with room for a step (as Fourier's MAX_WEIGHT_RATIO).
MIN_WEIGHT = 1e-12


class Pyramid(Parametrization):
    """`levels` Laplacian levels, level k at 1/2^k of the image's height and width.

    The image is L0 + g·up(L1 + g·up(L2 + ...)) with bilinear 2x upsampling (to the exact size
    of the level above, so any H and W work) and g = `gain`. `encode` builds the Laplacian
    pyramid with area downsampling, so the round trip is exact. The parameter
    [N, C, sum of level sizes] holds the levels flattened, finest first, in one tensor.

    With gain 0.5 a plain SGD step changes each level's band about as much as a pixel-space
    step would (an upsampled coarse value gathers 4^k pixels' gradients); gain 1.0 is the plain
    Laplacian sum, whose coarse levels then take up to 4^k times larger steps.
    """

    def __init__(self, shape: Sequence[int], levels: int = 4, gain: float = 0.5):
        if not is_whole(levels) or levels < 1:
            raise RepinvError(f"param.levels={levels} must be a whole number, at least 1 (1 is the pixel parametrisation).")
        h, w = batch_shape(shape)[2:]
        if levels > min(h, w).bit_length():
            raise RepinvError(
                f"param.levels={levels} halves a {h}x{w} image below one pixel; "
                f"use at most {max(1, min(h, w).bit_length())} levels for this size."
            )
        if not (is_number(gain) and MIN_WEIGHT ** (1 / max(levels - 1, 1)) <= gain <= 1):
            raise RepinvError(
                f"param.gain={gain} must lie in [{MIN_WEIGHT ** (1 / max(levels - 1, 1)):.3g}, 1] for {levels} levels: the "
                "coarsest level's weight gain^(levels-1) must stay within float32 steps (at least 1e-12), and a gain above "
                "1 lets level k take (4·gain²)^k times a pixel step, so the image runs away. Use 0.5 (default: every "
                "level's band moves about as far as in pixel space) or 1.0 (the plain Laplacian sum)."
            )
        self.sizes = [(-(-h // 2**k), -(-w // 2**k)) for k in range(levels)]
        self.gain = float(gain)
        super().__init__(shape)

    def param_shape(self) -> tuple[int, ...]:
        n, c = self.shape[:2]
        return (n, c, sum(h * w for h, w in self.sizes))

    def levels(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """The levels [N, C, h_k, w_k], finest first, as views of a flat parameter."""
        parts = flat.split([h * w for h, w in self.sizes], dim=-1)
        return [p.unflatten(-1, size) for p, size in zip(parts, self.sizes)]

    def render(self) -> torch.Tensor:
        levels = self.levels(self.param)
        image = levels[-1]
        for level in reversed(levels[:-1]):
            up = F.interpolate(image, size=level.shape[-2:], mode="bilinear", align_corners=False)
            image = level + self.gain * up
        return image

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        gaussian = [image.double()]
        for size in self.sizes[1:]:
            gaussian.append(F.interpolate(gaussian[-1], size=size, mode="area"))
        levels = [gaussian[-1]]
        for fine, coarse in zip(reversed(gaussian[:-1]), reversed(gaussian[1:])):
            up = F.interpolate(coarse, size=fine.shape[-2:], mode="bilinear", align_corners=False)
            levels.insert(0, fine - up)
        scaled = [level / self.gain**k for k, level in enumerate(levels)]
        return torch.cat([s.flatten(-2) for s in scaled], dim=-1).to(self.param.dtype)
