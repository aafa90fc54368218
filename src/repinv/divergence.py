"""Per-target divergence: a target whose loss or image goes non-finite returns to its last finite image and stops."""

from __future__ import annotations

import torch
from torch import nn


class Divergence(nn.Module):
    """Which targets diverged (`mask`, one flag per target) and the last image checked finite.

    Checked at log steps, so the steps themselves never synchronise with the device; `any` is
    the host copy of `mask.any()` from the last check. The mask and the last finite image are
    part of the module's state dict, so a resumed run keeps them.
    """

    def __init__(self, targets: int):
        super().__init__()
        self.register_buffer("mask", torch.zeros(targets, dtype=torch.bool))
        self.last_good: torch.Tensor | None = None
        self.any = False

    @torch.no_grad()
    def check(self, img: torch.Tensor, losses: torch.Tensor, remember: bool = True) -> bool:
        """Stop the targets whose loss or image [N, ...] went non-finite, putting back their last finite image.

        Returns whether a target was stopped now. `remember`: the current image becomes the last
        finite one (at log steps; a check at the end leaves the state as the steps left it).
        """
        finite = torch.isfinite(losses.detach()) & torch.isfinite(img.detach()).flatten(1).all(1)
        bad = ~finite & ~self.mask
        stopped = bool(bad.any())
        if stopped:
            if self.last_good is not None:
                img.data[bad] = self.last_good[bad]
            self.mask |= bad
        self.any = bool(self.mask.any())
        if remember:
            self.last_good = img.detach().clone()
        return stopped

    def masked(self, losses: torch.Tensor) -> torch.Tensor:
        """The losses with the stopped targets' set to zero, so they take no more steps."""
        return torch.where(self.mask, torch.zeros_like(losses), losses)

    @torch.no_grad()
    def rollback(self, img: torch.Tensor) -> None:
        """Hold the stopped targets' images at their last finite one (after each update)."""
        if self.last_good is not None and self.any:
            img[self.mask] = self.last_good[self.mask]

    def shard(self, start: int, stop: int) -> None:
        """Keep the targets [start, stop) of this process."""
        self.mask = self.mask[start:stop].clone()

    def get_extra_state(self) -> dict:
        return {"last_good": self.last_good}

    def set_extra_state(self, state: dict) -> None:
        """Called by load_state_dict after `mask` is loaded."""
        self.last_good = state["last_good"]
        self.any = bool(self.mask.any())
