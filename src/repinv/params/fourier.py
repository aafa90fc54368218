"""A decorrelated Fourier basis: spectral coefficients scaled by 1/frequency, colours decorrelated."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from repinv.errors import RepinvError, is_number
from repinv.params.base import Parametrization, batch_shape

# Square root of ImageNet's RGB colour correlation (lucid/lucent): the image's colours are this
# matrix applied to three decorrelated channels, scaled so its largest column has norm 1.
COLOR_CORRELATION_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
# The largest ratio between the coarsest and the finest frequency's weight. Adam's second moment
# spans its square (1e24), which float32 (up to 3e38) holds with room for the gradients themselves;
# a steeper decay makes the finest weights underflow to 0 and the parameter (image / weight) infinite.
MAX_WEIGHT_RATIO = 1e12


def max_decay(height: int, width: int) -> float:
    """The steepest decay whose weights on an H x W grid span at most MAX_WEIGHT_RATIO."""
    finest, coarsest = math.hypot(0.5, 0.5), 1.0 / max(height, width)
    return math.log(MAX_WEIGHT_RATIO) / math.log(finest / coarsest)


def spectrum_scale(height: int, width: int, decay: float) -> torch.Tensor:
    """1 / max(f, 1/max(H, W))^decay on the rfft2 grid [H, W//2+1], normalised to unit mean square.

    f is the frequency in cycles per pixel; the floor keeps the DC term finite. Unit mean square
    makes Adam at a given lr change the image about as much per step as in pixel space (the
    transform is orthonormal), with the change's spectrum falling as 1/f^decay.
    """
    fy = torch.fft.fftfreq(height, dtype=torch.float64)[:, None]
    fx = torch.fft.rfftfreq(width, dtype=torch.float64)[None, :]
    freq = torch.sqrt(fx * fx + fy * fy).clamp_min(1.0 / max(height, width))
    scale = freq.pow(-decay)
    return (scale / scale.square().mean().sqrt()).float()


class Fourier(Parametrization):
    """The image as `colour @ irfft2(scale * coefficients)` (orthonormal FFT), as in lucent, without its sigmoid.

    The parameter [N, 3, H, W//2+1, 2] holds the real and imaginary parts of the rfft2
    coefficients of three decorrelated colour channels. Low frequencies carry larger weight
    (1/f^decay), so equal parameter steps move the image towards natural-image spectra.
    Lucent passes the result through a sigmoid to bound it to [0, 1]; here the map is linear, so
    `encode` inverts it exactly (start from the same noise as pixel runs, resume, write back the
    blur) and the pixel range is left to the priors, as for the pixel parametrisation.
    Pair it with Adam (optimizer=adam): plain SGD steps the coarsest frequencies scale² times
    further than the finest.
    """

    def __init__(self, shape: Sequence[int], decay: float = 1.0):
        _, c, h, w = batch_shape(shape)
        if c != 3:
            raise RepinvError(
                f"param=fourier decorrelates RGB colours and needs images [N, 3, H, W], got {list(shape)}; "
                "use param=pixel or param=pyramid for other channel counts."
            )
        if not is_number(decay) or decay < 0:
            raise RepinvError(
                f"param.decay={decay} must be a non-negative number: 1.0 weights frequency f by 1/f, 0 weights all equally."
            )
        if decay > max_decay(h, w):
            raise RepinvError(
                f"param.decay={decay} weights the finest frequencies of a {h}x{w} image by less than 1/{MAX_WEIGHT_RATIO:.0e} "
                f"of the coarsest, beyond what float32 steps can hold (the image goes non-finite); use at most "
                f"param.decay={max_decay(h, w):.2f} for this size (1.0 is lucent's)."
            )
        super().__init__(shape)
        self.decay = float(decay)
        self.register_buffer("scale", spectrum_scale(h, w, self.decay)[..., None], persistent=False)
        color = COLOR_CORRELATION_SQRT.double() / COLOR_CORRELATION_SQRT.double().norm(dim=0).max()
        self.register_buffer("color", color.float(), persistent=False)
        # the inverse, once: `encode` runs after every step that changes the image (the blur writes back)
        self.register_buffer("decorrelate", torch.linalg.inv(color).float(), persistent=False)

    def param_shape(self) -> tuple[int, ...]:
        n, c, h, w = self.shape
        return (n, c, h, w // 2 + 1, 2)

    def render(self) -> torch.Tensor:
        spectrum = torch.view_as_complex((self.param * self.scale).contiguous())
        channels = torch.fft.irfft2(spectrum, s=self.shape[-2:], norm="ortho")
        return torch.einsum("cd,ndhw->nchw", self.color.to(channels.dtype), channels)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """In the parameter's precision (float32): exact to float rounding, and fast on GPUs (no float64 FFT)."""
        channels = torch.einsum("cd,ndhw->nchw", self.decorrelate, image.to(self.param.dtype))
        spectrum = torch.view_as_real(torch.fft.rfft2(channels, norm="ortho"))
        return spectrum / self.scale
