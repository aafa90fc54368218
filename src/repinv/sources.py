"""Model sources: which config a model has in each library, and the overrides that load trained weights.

The figure scripts and the claims ledger both ask here, so a trained run loads the same weights
(and names them the same way) whichever tool asked for it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from repinv.study import quote, value

# source -> timm model config -> that source's config (Mixers have no torchvision counterpart). Layer and
# surgery names need no rewriting: neutral names (patch_embed, blocks.0) resolve in every model source.
CONFIGS = {"torchvision": {"vit_b_32": "tv_vit_b_32", "vit_l_16": "tv_vit_l_16", "resnet50": "tv_resnet50",
                           "vit_tiny": "tv_vit_tiny"}}
TORCHVISION_DEFAULT = "IMAGENET1K_V1"


def model_config(override: str, source: str) -> str:
    """`override` with a `model=` choice mapped to `source`'s config; any other override unchanged."""
    key, _, choice = override.partition("=")
    return f"model={CONFIGS.get(source, {}).get(choice, choice)}" if key == "model" else override


@dataclass(frozen=True)
class Weights:
    """Where trained runs get their weights: checkpoint files, timm's pretrained weights, a torchvision enum.

    `checkpoints` maps a model config to its file; the key "" gives the file for every model.
    """

    checkpoints: Mapping[str, str] = field(default_factory=dict)
    pretrained: bool = False
    torchvision: str | None = None

    @classmethod
    def parse(cls, checkpoints: Sequence[str] = (), pretrained: bool = False, torchvision: str | None = None) -> Weights:
        """From command-line values: each checkpoint `FILE` (every model) or `MODEL=FILE` (one model config)."""
        files = dict(c.split("=", 1) if "=" in c else ("", c) for c in checkpoints)
        return cls(files, pretrained, torchvision)

    def choose(self, source: str, overrides: Sequence[str]) -> tuple[str, list[str]] | None:
        """What a trained run of `source` with `overrides` loads (a label) and the overrides that load it;
        None if nothing was given."""
        model = value(overrides, "model") or ""
        file = self.checkpoints.get(model, self.checkpoints.get(""))
        if file:
            return f"checkpoint {file}", [f"model.checkpoint={quote(file)}"]
        if source == "torchvision" and (self.torchvision or self.pretrained):
            enum = self.torchvision or TORCHVISION_DEFAULT
            return enum, [f"model.weights={enum}"]
        return ("pretrained", ["model.pretrained=true"]) if source == "timm" and self.pretrained else None

    def overrides(self, source: str, overrides: Sequence[str]) -> list[str] | None:
        """Only the loading overrides of `choose`."""
        chosen = self.choose(source, overrides)
        return None if chosen is None else chosen[1]
