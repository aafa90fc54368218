"""Positional jitter: the network sees a random crop of a larger canvas."""

from __future__ import annotations

import torch

from repinv.errors import RepinvError, is_whole
from repinv.priors.base import Prior


class Jitter(Prior):
    """Positional jitter: each step the model sees a random crop of a canvas `pixels` larger than its input.

    Its margin makes the canvas larger than the input, so only the crop takes the step's update
    (the module restores the rest). Before `start` (and with pixels=0) the model sees the centre
    crop. Offsets come from the module's generator so a resumed run repeats them.
    """

    def __init__(self, pixels: int = 0, start: int = 0):
        if not (is_whole(pixels) and is_whole(start) and pixels >= 0 and start >= 0):
            raise RepinvError(f"priors.jitter.pixels={pixels} and priors.jitter.start={start} must be non-negative whole "
                              "numbers, of pixels and of steps (pixels=0 switches jitter off); the study jitters from about "
                              "step 200, by 16 in priors=blur_jitter.")
        self.pixels, self.start = pixels, start

    def check(self, size: tuple[int, int]) -> None:
        if self.pixels > min(size):
            raise RepinvError(f"priors.jitter.pixels={self.pixels} shifts the crop by more than the {size[0]}x{size[1]} "
                              f"input itself; use at most {min(size)} (priors=blur_jitter uses 16 at 224x224).")

    @property
    def margin(self) -> int:
        return self.pixels

    def offset(self, step: int, generator: torch.Generator) -> tuple[int, int]:
        if self.pixels == 0 or step < self.start:
            return super().offset(step, generator)
        dy, dx = torch.randint(0, self.pixels + 1, (2,), generator=generator).tolist()
        return dy, dx
