"""The measuring side of a run: per-target rows of losses, statistics and metrics from one fp32 forward."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from repinv.engine.precision import autocast_off
from repinv.objectives import Objective


class Measuring:
    """What a log step and the end of a run report for each target.

    `metrics` (name -> `(image, reference) -> [N]`) compare the image the network saw with the
    objective's reference (none when the objective has none). A report is of the centre crop in
    fp32: `fp32` is that forward (autocast off), for when the step's own forward saw another crop
    or ran in lower precision.
    """

    def __init__(self, objective: Objective, normalize: Callable, metrics: Mapping[str, Callable] | None = None):
        self.objective, self.normalize, self.metrics = objective, normalize, dict(metrics or {})

    @property
    def names(self) -> tuple[str, ...]:
        """The metrics' names, in order: the record fields they fill."""
        return tuple(self.metrics)

    @property
    def fields(self) -> tuple[str, ...]:
        """The numbers `rows` gives each target: the loss, the objective's stats, then the metrics when it has a reference."""
        return ("loss", *self.objective.stats, *(self.names if self.objective.reference is not None else ()))

    @torch.no_grad()
    def fp32(self, net: nn.Module, view: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """The objective's losses and stats of `view` through `net` in fp32, autocast off."""
        with autocast_off(view.device):
            return self.objective(net, self.normalize(view.float()))

    @torch.no_grad()
    def rows(self, losses: torch.Tensor, stats: dict, view: torch.Tensor, shard: list[int]) -> list[dict[str, float]]:
        """Per-target metric dicts: the forward pass's losses and stats, then `metrics` of the image it saw
        against the reference rows of the targets `shard`."""
        values = {"loss": losses.detach().float(), **{k: v.float() for k, v in stats.items()}}
        reference = self.objective.reference
        if reference is not None:
            reference = reference[shard]
            values.update({name: metric(view, reference).float() for name, metric in self.metrics.items()})
        table = {k: v.cpu().tolist() for k, v in values.items()}
        return [{k: table[k][i] for k in table} for i in range(len(losses))]
