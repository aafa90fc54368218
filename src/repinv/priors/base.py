"""The interface every image prior implements: hooks the step calls, each a no-op by default."""

from __future__ import annotations

import torch


class Prior:
    """One image prior. The step calls every prior's hooks in the order the priors were given.

    `margin`: extra canvas pixels (height and width) the prior needs around the network's input.
    The hooks, in the order a step calls them: `offset` (where the network's crop lies),
    `transform` (what the network sees of that crop), `penalty` (added to each target's loss),
    `update` (the image after the optimiser step), `scalars` (logged at log steps); before the run, `check`
    and, with several processes, `take_rows`.
    """

    margin: int = 0

    def check(self, size: tuple[int, int]) -> None:
        """Before the run, with the network's input (height, width): raise RepinvError for settings that
        cannot work at that size. Default: nothing to check."""

    def take_rows(self, start: int, stop: int, total: int) -> None:
        """With several processes: this one optimises targets [start, stop) of `total`, the rows of each crop it
        sees. A prior that draws per target draws for all `total` and keeps these rows, so every process sees the
        draws one process would. Default: nothing per target."""

    def offset(self, step: int, generator: torch.Generator) -> tuple[int, int]:
        """This prior's share of the crop offset, within [0, margin]; random draws use `generator`
        (the module's, saved in checkpoints) so a resumed run repeats them. Default: the centre."""
        return self.margin // 2, self.margin // 2

    def transform(self, view: torch.Tensor, step: int, generator: torch.Generator) -> torch.Tensor:
        """A differentiable change of the crop [N, 3, H, W] before the network; default: none."""
        return view

    def penalty(self, view: torch.Tensor, step: int) -> torch.Tensor | None:
        """A per-target [N] term added to the loss, from the crop the network saw; default: none."""
        return None

    def update(self, img: torch.Tensor, step: int, total: int) -> None:
        """Change the whole canvas [N, 3, H, W] in place after the optimiser step; default: nothing."""

    def scalars(self, step: int, total: int) -> dict[str, float]:
        """Numbers to log at log steps; default: none."""
        return {}
