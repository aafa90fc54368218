"""Model sources (timm, torchvision, or one registered with `register`): see `base.ModelSource`."""

from repinv.models.sources import timm, torchvision  # noqa: F401  (registers both)
from repinv.models.sources.base import (
    GENERIC,
    IMAGENET_MEAN,
    IMAGENET_STD,
    SOURCE_ATTR,
    ModelSource,
    for_net,
    get_source,
    known_sources,
    register,
)

__all__ = [
    "GENERIC",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SOURCE_ATTR",
    "ModelSource",
    "for_net",
    "get_source",
    "known_sources",
    "register",
]
