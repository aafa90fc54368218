"""Which model source a model comes from: a config node whose `_target_` is a ModelSource subclass, or
the short name of a built-in source (`model.source=timm`, `torchvision`); and which source built a net."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from repinv.engine.plugins import build
from repinv.errors import RepinvError, suggest
from repinv.models.sources.base import GENERIC, SOURCE_ATTR, ModelSource
from repinv.models.sources.timm import TimmSource
from repinv.models.sources.torchvision import TorchvisionSource

SOURCES: dict[str, type[ModelSource]] = {"timm": TimmSource, "torchvision": TorchvisionSource}  # the short names
HOW = ("a source of your own is a repinv.models.sources.ModelSource subclass named with "
       "model.source._target_=package.module.Class (its other settings are its constructor's arguments)")


def model_source(choice: Any, key: str = "model.source") -> ModelSource:
    """The source `choice` names: a ModelSource, a short name of SOURCES, or a config node with `_target_` (built
    through `repinv.engine.plugins.build`, so a failure is one paragraph naming `key`)."""
    if isinstance(choice, ModelSource):
        return choice
    if isinstance(choice, Mapping) and "_target_" in choice:
        built = build(choice, key)
        if not isinstance(built, ModelSource):
            raise RepinvError(f"{key}._target_={choice['_target_']} is not a model source (it built a {type(built).__name__}); "
                              f"{HOW}, or {key} is the short name of a built-in one ({', '.join(SOURCES)}).")
        return built
    if isinstance(choice, str) and choice in SOURCES:
        return SOURCES[choice]()
    raise RepinvError(f"{key}={choice} is not a model source.{suggest(str(choice), SOURCES)} The built-in sources are "
                      f"{', '.join(sorted(SOURCES))}; {HOW}.")


def for_net(net: nn.Module) -> ModelSource:
    """The source `net` was built by: its mark from create_model, else the built-in library its class comes from, else GENERIC."""
    marked = getattr(net, SOURCE_ATTR, None)
    if isinstance(marked, ModelSource):
        return marked
    return next((s for s in (cls() for cls in SOURCES.values()) if s.owns(net)), GENERIC)
