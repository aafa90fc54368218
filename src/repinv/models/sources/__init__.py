"""Model sources (timm, torchvision, or a ModelSource subclass of your own named by `_target_`): see `base.ModelSource`."""

from repinv.models.sources.base import GENERIC, IMAGENET_MEAN, IMAGENET_STD, SOURCE_ATTR, ModelSource
from repinv.models.sources.choice import SOURCES, for_net, model_source
from repinv.models.sources.timm import TimmSource
from repinv.models.sources.torchvision import TorchvisionSource

__all__ = ["GENERIC", "IMAGENET_MEAN", "IMAGENET_STD", "SOURCES", "SOURCE_ATTR", "ModelSource", "TimmSource", "TorchvisionSource",
           "for_net", "model_source"]
