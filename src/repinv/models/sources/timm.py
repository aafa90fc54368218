"""timm as a model source: any name from timm.list_models(), untrained, hub-trained or from a file.

Trained weights go through timm's own pretrained machinery (hub or local cache). A checkpoint
file is read and filtered as timm reads and filters trained weights (EMA weights, DDP prefixes,
renamed keys, resampled position embeddings), then must supply every tensor of the model as
configured. timm's module names are the source-neutral ones; a Mixer's `stem`
answers to `patch_embed` too.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models._features import feature_take_indices
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from repinv.errors import RepinvError, listing, suggest
from repinv.models.sources.base import IMAGENET_MEAN, IMAGENET_STD, ModelSource, load_state_file, state_misfits

# The TypeErrors that mean kwargs do not fit a model: an entry point's own size next to the same one in
# kwargs (mixer_b16_224's patch_size), and a constructor without that setting. Any other TypeError is a fault.
DUPLICATE, UNEXPECTED = "got multiple values for keyword argument", "got an unexpected keyword argument"


class TimmStemViT(VisionTransformer):
    """timm's ViT with `stem` first; forward_intermediates index 0 is the stem's output."""

    def forward_features(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        return super().forward_features(self.stem(x), **kwargs)

    def forward_intermediates(self, x, indices=None, *, intermediates_only: bool = False, **kwargs):
        take, _ = feature_take_indices(len(self.blocks) + 1, indices)
        x = self.stem(x)
        blocks = [i - 1 for i in take if i > 0]
        if not blocks and intermediates_only:
            return [x]
        out = super().forward_intermediates(
            x, indices=blocks or [len(self.blocks) - 1], intermediates_only=intermediates_only, **kwargs
        )
        final, inner = (None, out) if intermediates_only else out
        inner = ([x] if 0 in take else []) + (inner if blocks else [])
        return inner if intermediates_only else (final, inner)


def _unknown_model(name: str) -> RepinvError:
    return RepinvError(
        f"model.name={name} is not a timm architecture.{suggest(name, timm.list_models())} "
        "Pick one of the model configs (model=vit_b_32, resnet50, mixer_b16, ...) or any name "
        "from timm.list_models()."
    )


def _weights_missing(name: str, err: Exception) -> RepinvError:
    cfg = timm.models.get_pretrained_cfg(name)
    where = ""
    if cfg is not None and cfg.hf_hub_id:
        where = f" timm looks for hub repo '{cfg.hf_hub_id}' (file model.safetensors or pytorch_model.bin)."
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
    return RepinvError(
        f"trained weights for model.name={name} could not be loaded"
        f"{' (HF_HUB_OFFLINE is set and nothing is cached)' if offline else ''}: "
        f"{type(err).__name__}: {str(err).splitlines()[0].rstrip('.') if str(err) else ''}.{where} "
        "Download the weights file on a machine with internet and pass it with "
        "model.checkpoint=/path/to/model.safetensors, or run with model.pretrained=false "
        "for an untrained model."
    )


LOAD_ERROR = "Error(s) in loading state_dict"  # torch's load_state_dict on a model of another shape


def _weights_misfit(name: str, kwargs: dict, err: Exception) -> RepinvError:
    found = " ".join(" ".join(str(err).splitlines()[1:]).split())
    return RepinvError(
        f"timm's trained weights for model.name={name} do not fit the model model.kwargs={kwargs} builds: "
        f"{found[:300]}{'...' if len(found) > 300 else ''}. Trained weights fit the architecture they were trained "
        "as: leave out the kwargs that change its shape (depth, width, heads), or run untrained with "
        "model.pretrained=false."
    )


def _check_head(name: str, kwargs: dict) -> None:
    """timm drops trained weights' classifier where num_classes differs and keeps the rest: the head would be
    untrained in a model counted as trained."""
    cfg = timm.models.get_pretrained_cfg(name)
    classes, trained = kwargs.get("num_classes"), getattr(cfg, "num_classes", None)
    if classes is not None and trained and classes not in (0, trained):
        raise RepinvError(
            f"model.kwargs.num_classes={classes} with model.pretrained=true: timm's trained weights for {name} have a "
            f"{trained}-class head, which timm would drop, leaving this model's head untrained while the run counts "
            f"the model as trained. Use num_classes={trained} (the weights' own), num_classes=0 (no head), or a file "
            "holding a head of that size with model.checkpoint=FILE."
        )


def _filter_fn(cls: type) -> Callable | None:
    """The checkpoint filter of a timm model class's module (renamed keys, resampled position and patch embeddings)."""
    return getattr(sys.modules[cls.__module__], "checkpoint_filter_fn", None)


def _load_file(net: nn.Module, name: str, checkpoint: str, path: Path) -> None:
    """Every tensor of `net` from the weights file `path`, read and filtered the way timm loads trained weights.

    timm's own loading of a file drops the file's classifier where the model's num_classes differs
    from its pretrained config's and then loads whatever keys match; here the file must supply the
    whole model as configured (a fine-tuned head of its own size included) and nothing else.
    """
    state = load_state_file(path, lambda file: timm.models.load_state_dict(str(file)))
    filter_fn = _filter_fn(type(net))
    if filter_fn is not None:
        state = filter_fn(state, net)
    problems = state_misfits(net.state_dict(), state)
    if problems:
        raise RepinvError(
            f"model.checkpoint={checkpoint} does not fit model.name={name} as configured: {listing(problems, 3)}. "
            "The file must hold weights for the whole model as configured, under its own names: saved from the same "
            "architecture with the same timm kwargs (width, depth, num_classes; timm's filter resamples a ViT's "
            "position and patch embeddings to the model's size and patch size)."
        )
    net.load_state_dict(state)


class _Captured(Exception):
    """Stops an entry point at timm's builder, holding the builder's arguments."""

    def __init__(self, cls: type, kwargs: dict[str, Any]):
        super().__init__(cls.__name__)
        self.cls, self.kwargs = cls, kwargs


def entry_arguments(name: str) -> tuple[type, dict[str, Any]]:
    """The model class and keyword arguments timm's entry point `name` hands `build_model_with_cfg` (its own sizes,
    filter and feature settings), read by stopping the entry point at that call: nothing is built."""
    module = sys.modules[timm.models.model_entrypoint(name).__module__]
    builder = module.build_model_with_cfg

    def capture(cls, variant, pretrained=False, **kwargs):
        raise _Captured(cls, kwargs)

    module.build_model_with_cfg = capture
    try:
        timm.create_model(name)
    except _Captured as found:
        return found.cls, found.kwargs
    finally:
        module.build_model_with_cfg = builder
    raise RuntimeError(f"timm's entry point {name} did not call build_model_with_cfg")


def build(name: str, pretrained: bool, kwargs: dict[str, Any]) -> nn.Module:
    """timm.create_model; where the entry point fixes a size that `kwargs` sets, timm's builder on its class.

    Some entry points pass their own sizes next to the caller's kwargs (mixer_b16_224's patch size,
    depth and width), which Python refuses as a duplicate keyword. Then the model is built by
    `timm.models.build_model_with_cfg` with the entry point's own arguments and `kwargs` over them:
    patch_size=8 on mixer_b16_224 is a Mixer-B (12 blocks, width 768) with patch 8.
    """
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except TypeError as err:
        if DUPLICATE not in str(err):
            raise
    cls, own = entry_arguments(name)
    return timm.models.build_model_with_cfg(cls, name, pretrained, **{**own, **kwargs})


class TimmSource(ModelSource):
    """Models from timm: layer indices follow `forward_intermediates` (the model's feature_info)."""

    name = "timm"
    package = "timm."
    neutral_names = {r"patch_embed": "stem", r"patch_embed\.proj": "stem.proj"}  # a Mixer's patch embedding
    stem_classes = {VisionTransformer: TimmStemViT}
    size_kwarg = "img_size"

    def create(self, name, kwargs, pretrained=False, weights=None, checkpoint=None):
        if name not in timm.list_models() and not timm.is_model(name):
            raise _unknown_model(name)
        if weights:
            raise RepinvError(
                f"model.weights={weights} names a torchvision weights enum, which timm's {name} does not take. Load "
                "timm's trained weights with model.pretrained=true, or a file with model.checkpoint=FILE."
            )
        kwargs = dict(kwargs)
        path = Path(checkpoint).expanduser() if checkpoint else None  # a file: create_model checks
        hub = bool(pretrained) and path is None  # a checkpoint file replaces every tensor timm's weights would give
        if hub:
            _check_head(name, kwargs)
        try:
            net = build(name, hub, kwargs)
        except TypeError as err:
            if not any(phrase in str(err) for phrase in (DUPLICATE, UNEXPECTED)):
                raise
            raise RepinvError(
                f"model.kwargs={kwargs} do not fit {name}: {err}. Use keyword arguments that "
                f"timm's {name} constructor takes (depth, embed_dim, num_heads, img_size, patch_size, ...)."
            ) from None
        except (RuntimeError, OSError, ValueError, ImportError) as err:
            if hub and LOAD_ERROR in str(err):
                raise _weights_misfit(name, kwargs, err) from None
            if hub:
                raise _weights_missing(name, err) from None
            raise
        if path is not None:
            _load_file(net, name, checkpoint, path)
        return net, bool(pretrained or path)

    def hidden_layers(self, net):
        """The feature_info order (what forward_intermediates numbers), else the blocks."""
        info = getattr(net, "feature_info", None)
        if isinstance(info, list) and info and hasattr(net, "forward_intermediates"):
            return [str(f.get("module", f"#{i}")) for i, f in enumerate(info)]
        blocks = getattr(net, "blocks", None) or getattr(net, "layers", None)
        if isinstance(blocks, nn.Sequential) and hasattr(net, "forward_intermediates"):
            return [f"blocks.{i}" for i in range(len(blocks))]
        return []

    def normalisation(self, net):
        cfg = getattr(net, "pretrained_cfg", {}) or {}
        return tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))
