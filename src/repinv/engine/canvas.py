"""The image side of a run: the parametrisation, the priors' margin, the crop the network sees, the writes after a step."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from repinv.engine.divergence import Divergence
from repinv.params import Parametrization
from repinv.priors import Prior


class Canvas:
    """The canvas [targets, 3, H + margin, W + margin] a parametrisation renders, and the crop of it the network sees.

    The priors' margins make the canvas larger than the input; their offsets place each step's
    crop, their transforms change what the network sees, their penalties add to the losses and
    their updates change the canvas after the step. `image` is the rendered canvas, rendered
    again only when the parameter changed. The parametrisation itself is owned (and saved) by
    the module; the canvas only reads and writes it.
    """

    def __init__(self, param: Parametrization, input_size: tuple[int, int], priors: Sequence[Prior] = ()):
        self.param, self.input_size, self.priors = param, tuple(input_size), list(priors)
        self.margin = sum(p.margin for p in self.priors)
        self._rendered: tuple[tuple, torch.Tensor] | None = None

    def _key(self) -> tuple:
        """Changes whenever the parameter does: in-place steps, a device move, a new (sharded) tensor."""
        p = self.param.param
        return p._version, p.data_ptr(), p.device

    @property
    def image(self) -> torch.Tensor:
        """The rendered canvas (without gradient); rendered again only when the parameter changed."""
        if self._rendered is None or self._rendered[0] != self._key():
            with torch.no_grad():
                self._rendered = (self._key(), self.param.render())
        return self._rendered[1]

    def render(self) -> torch.Tensor:
        """Render the canvas differentiably (once per loss evaluation); `image` is it until the parameter changes."""
        image = self.param.render()
        self._rendered = (self._key(), image)
        return image

    @torch.no_grad()
    def commit(self, canvas: torch.Tensor) -> None:
        """Write a changed canvas back to the parameter; for pixels `canvas` already is its storage, and
        the full-batch copy onto itself that every step would make is skipped."""
        if canvas.data_ptr() != self.param.param.data_ptr():
            self.param.set_image(canvas)
        self._rendered = (self._key(), canvas)

    def offset(self, step: int, generator: torch.Generator) -> tuple[int, int]:
        """Where this step's crop lies in the canvas: the sum of the priors' offsets, drawn in their order."""
        dy = dx = 0
        for prior in self.priors:
            y, x = prior.offset(step, generator)
            dy, dx = dy + y, dx + x
        return dy, dx

    def centre(self) -> tuple[int, int]:
        """The offset of the centre crop."""
        centre = sum(p.margin // 2 for p in self.priors)
        return centre, centre

    def view(self, offset: tuple[int, int] | None = None, canvas: torch.Tensor | None = None) -> torch.Tensor:
        """The part of the canvas (`image` unless given) the network sees: the centre crop unless an offset is given."""
        dy, dx = offset or self.centre()
        h, w = self.input_size
        return (self.image if canvas is None else canvas)[:, :, dy : dy + h, dx : dx + w]

    def take_rows(self, start: int, stop: int, total: int) -> None:
        """This process's targets [start, stop) of `total`, for the priors that draw per target (the parameter's
        rows are cut with the module's other per-target parts, `repinv.engine.sharding.take_shard`)."""
        for prior in self.priors:
            prior.take_rows(start, stop, total)

    def seen(self, view: torch.Tensor, step: int, generator: torch.Generator) -> torch.Tensor:
        """The crop as the network sees it this step: through the priors' transforms, in their order."""
        for prior in self.priors:
            view = prior.transform(view, step, generator)
        return view

    def penalised(self, losses: torch.Tensor, view: torch.Tensor, step: int) -> torch.Tensor:
        """The per-target losses plus the priors' penalties on the crop."""
        for prior in self.priors:
            penalty = prior.penalty(view, step)
            if penalty is not None:
                losses = losses + penalty
        return losses

    @torch.no_grad()
    def update(self, step: int, steps: int, offset: tuple[int, int], before: torch.Tensor | None,
               divergence: Divergence) -> None:
        """After the optimiser step, on the rendered canvas: the priors' updates in order; then, on a
        canvas larger than the input, everything outside the crop goes back to `before`; the stopped
        targets stay as they were. The result is written back to the parameter."""
        canvas = self.image.detach()
        for prior in self.priors:
            prior.update(canvas, step, steps)
        if before is not None:
            crop = self.view(offset, canvas).clone()
            canvas.copy_(before)
            self.view(offset, canvas).copy_(crop)
        divergence.rollback(canvas)
        self.commit(canvas)
