"""Which model source a model comes from: a config node whose `_target_` is a ModelSource subclass, or
the short name of a built-in source (`model.source=timm`, `torchvision`); and which source built a net."""

from __future__ import annotations

from torch import nn

from repinv.engine.plugins import Choice
from repinv.models.sources.base import GENERIC, SOURCE_ATTR, ModelSource
from repinv.models.sources.timm import TimmSource
from repinv.models.sources.torchvision import TorchvisionSource

SOURCES: dict[str, type[ModelSource]] = {"timm": TimmSource, "torchvision": TorchvisionSource}  # the short names

model_source = Choice(
    key="model.source", what="a model source", builtins=SOURCES, accepts=lambda obj: isinstance(obj, ModelSource),
    how=f"The built-in sources are {', '.join(SOURCES)}; a source of your own is a repinv.models.sources.ModelSource "
        "subclass named with {key}._target_=package.module.Class (its other settings are its constructor's arguments).",
)


def for_net(net: nn.Module) -> ModelSource:
    """The source `net` was built by: its mark from create_model, else the built-in library its class comes from, else GENERIC."""
    marked = getattr(net, SOURCE_ATTR, None)
    if isinstance(marked, ModelSource):
        return marked
    return next((s for s in (cls() for cls in SOURCES.values()) if s.owns(net)), GENERIC)
