"""Per-target divergence: a target whose loss or image goes non-finite returns to its last finite image and stops."""

from __future__ import annotations

import torch
from torch import nn


class Divergence(nn.Module):
    """Which targets diverged (`mask`, one flag per target) and the last image checked finite.

    Checked at log steps, so the steps themselves never synchronise with the device; `any` is
    the host copy of `mask.any()` from the last check. The mask and the last finite image are
    buffers: part of the module's state dict, so a resumed run keeps them, and moved with the
    module, so a resumed run's state follows it to its device.
    """

    def __init__(self, targets: int):
        super().__init__()
        self.register_buffer("mask", torch.zeros(targets, dtype=torch.bool))
        self.register_buffer("last_good", None)  # set at the first check
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
        if self.last_good is not None and self.any:  # a select, not boolean indexing (which reads the mask back)
            img.copy_(torch.where(self.mask.view(-1, *[1] * (img.dim() - 1)), self.last_good, img))

    def take_rows(self, start: int, stop: int) -> None:
        """Keep the targets [start, stop) of this process."""
        self.mask = self.mask[start:stop].clone()
        if self.last_good is not None:
            self.last_good = self.last_good[start:stop].clone()

    def _load_from_state_dict(self, state_dict, prefix, *args) -> None:
        """Take a saved `last_good` whatever this module holds (None before its first check), then the rest."""
        saved = state_dict.get(prefix + "last_good")
        if saved is not None:
            self.last_good = saved.to(self.mask.device).clone()
        super()._load_from_state_dict(state_dict, prefix, *args)
        self.any = bool(self.mask.any())
