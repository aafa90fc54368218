"""Feature visualisation: draw what drives chosen units of one hidden layer, from noise."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from repinv.errors import RepinvError, named_once
from repinv.models.taps import LayerTap, hidden_layer_names, resolve_layer, tap_outputs
from repinv.objectives.base import MORE, Objective, positive, samples_count

ACTIVATION = "activation"  # a record's mean activation of its unit


def positions(out: torch.Tensor) -> torch.Tensor:
    """A layer's output as [N, positions, channels]: feature maps [N, C, H, W] by pixel, tokens [N, T, C] as they are."""
    if out.dim() == 4:
        return out.flatten(2).transpose(1, 2)
    if out.dim() == 3:
        return out
    if out.dim() == 2:
        return out[:, None]
    raise RepinvError(
        f"objective=feature reads [N, C, H, W] feature maps or [N, T, C] tokens; this layer gives shape {tuple(out.shape)}."
    )


def _unit(spec) -> tuple[int | None, int]:
    """`3` (channel 3, averaged over positions) or `[t, 3]` (channel 3 at token or pixel t) as (t or None, 3)."""
    parts = list(spec) if isinstance(spec, Sequence) and not isinstance(spec, str) else [spec]
    if len(parts) in (1, 2) and all(str(p).lstrip("-").isdigit() for p in parts):
        return (None, int(parts[0])) if len(parts) == 1 else (int(parts[0]), int(parts[1]))
    raise RepinvError(
        f"objective.units entry {spec!r} is not a unit: give a channel index (units=[3]) or a "
        "[token, channel] pair (units=[[0,3]]), e.g. objective.units=[0,5,[0,3]]."
    )


class FeatureVisualization(Objective):
    """Maximise the mean activation of chosen units at one layer: one target per (unit, sample), unit-major.

    A unit is a channel, averaged over the layer's positions (H x W pixels of a feature map, or
    the tokens of a ViT or Mixer), or a [token, channel] pair. Loss per target: −scale × that
    activation; stat: `activation`. `layer=None` takes the middle hidden layer.
    """

    kind = "feature"
    stats = (ACTIVATION,)
    labels = ("layer",)  # the layer as spelled (5 or blocks.5); its seed comes from `module`, the path it resolves to

    def __init__(self, layer=None, units=(0,), samples: int = 1, scale: float = 1.0):
        super().__init__()
        specs = list(units) if isinstance(units, Sequence) and not isinstance(units, str) else [units]
        if not specs:
            raise RepinvError("objective.units is empty: give channel indices, e.g. objective.units=[0,3].")
        self.layer_spec, self.units = layer, [_unit(u) for u in specs]
        named_once("objective.units", list(specs), self.units, "unit", MORE)
        self.samples = samples_count(samples, "unit")
        self.scale = positive(
            "scale",
            scale,
            "the loss is -scale x the activation, so 0 optimises nothing and a negative "
            "scale minimises the activation; 1.0 is the default.",
        )
        self.tap: LayerTap | None = None

    @torch.no_grad()
    def setup(self, net, prep, images, seed):
        spec = len(hidden_layer_names(net)) // 2 if self.layer_spec is None else self.layer_spec
        self.tap = resolve_layer(net, spec, "objective.layer")
        dev = next(net.parameters()).device
        self.targets = [
            {"image": f"sample{k}", "layer": self.tap.label, "module": self.tap.path, "unit": c,
             **({} if t is None else {"token": t})}
            for t, c in self.units
            for k in range(self.samples)
        ]
        self.register_buffer("channel", torch.tensor([r["unit"] for r in self.targets], device=dev), persistent=False)
        self.register_buffer("token", torch.tensor([r.get("token", -1) for r in self.targets], device=dev), persistent=False)
        self.register_buffer("index", torch.arange(len(self.targets), device=dev), persistent=False)

    def shard(self, index):
        self.index = torch.as_tensor(index, device=self.index.device)

    @torch.no_grad()
    def check(self, net, input_size):
        """Every unit must exist in the layer's output, whose size depends on the input's."""
        dev = next(net.parameters()).device
        x = torch.zeros(1, 3, *input_size, device=dev)
        shape = positions(tap_outputs(net, [self.tap], x, "objective.layer")[self.tap.module]).shape
        for token, channel in self.units:
            if not (0 <= channel < shape[2] and (token is None or 0 <= token < shape[1])):
                raise RepinvError(
                    f"objective.units has unit {channel if token is None else [token, channel]}, but layer {self.tap.label} "
                    f"has channels 0..{shape[2] - 1} at positions 0..{shape[1] - 1}; give units within them."
                )

    def forward(self, net, x):
        out = positions(self.tap(net, x)).float()
        channel, token = self.channel[self.index], self.token[self.index]
        per_position = out[torch.arange(len(out), device=out.device), :, channel]  # [N, positions]
        at_token = per_position.gather(1, token.clamp(min=0)[:, None]).squeeze(1)
        activation = torch.where(token >= 0, at_token, per_position.mean(1))
        return -self.scale * activation, {ACTIVATION: activation.detach()}

    @staticmethod
    def _unit_text(record: dict) -> str:
        return f"{record['unit']}" + (f"@{record['token']}" if "token" in record else "")

    def column(self, record):
        return f"unit {self._unit_text(record)}"

    def caption(self, record, metrics=()):
        return f"act {record[ACTIVATION]:.3g}"

    def name(self):
        return f"{self.tap.label}-" + "+".join(dict.fromkeys(f"unit{self._unit_text(r)}" for r in self.targets))

    def tags(self):
        return [f"layer:{self.tap.label}", *dict.fromkeys(f"unit:{self._unit_text(r)}" for r in self.targets)]
