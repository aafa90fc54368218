"""timm as a model source: any name from timm.list_models(), untrained, hub-trained or from a file.

Trained weights go through timm's own pretrained machinery (hub or local cache); a checkpoint
file goes through the same machinery (`pretrained_cfg_overlay`), so timm's filtering and head
resizing apply as usual. timm's module names are the source-neutral ones; a Mixer's `stem`
answers to `patch_embed` too.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models._features import feature_take_indices
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from repinv.errors import RepinvError, listing, suggest
from repinv.models.sources.base import IMAGENET_MEAN, IMAGENET_STD, ModelSource, load_state_file

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


def _mismatched(name: str, kwargs: dict[str, Any], checkpoint: str) -> list[str]:
    """The tensors of a checkpoint file whose shapes differ from the model built with `kwargs` (on the meta device)."""
    state = load_state_file(Path(checkpoint).expanduser())
    with torch.device("meta"):
        own = build(name, False, {k: v for k, v in kwargs.items() if k != "pretrained_cfg_overlay"}).state_dict()
    return [
        f"{k} is {tuple(v.shape)} there and {tuple(own[k].shape)} here"
        for k, v in state.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]


def _weights_missing(name: str, kwargs: dict[str, Any], checkpoint: str | None, err: Exception) -> RepinvError:
    cfg = timm.models.get_pretrained_cfg(name)
    where = ""
    if cfg is not None and cfg.hf_hub_id:
        where = f" timm looks for hub repo '{cfg.hf_hub_id}' (file model.safetensors or pytorch_model.bin)."
    mismatched = _mismatched(name, kwargs, checkpoint) if checkpoint else []
    if mismatched:
        return RepinvError(
            f"model.checkpoint={checkpoint} does not fit model.name={name} as configured: {listing(mismatched, 3)}. "
            "Pass weights saved from the same architecture with the same timm kwargs (patch size, width, depth)."
        )
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
    return RepinvError(
        f"trained weights for model.name={name} could not be loaded"
        f"{' (HF_HUB_OFFLINE is set and nothing is cached)' if offline else ''}: "
        f"{type(err).__name__}: {str(err).splitlines()[0].rstrip('.') if str(err) else ''}.{where} "
        "Download the weights file on a machine with internet and pass it with "
        "model.checkpoint=/path/to/model.safetensors, or run with model.pretrained=false "
        "for an untrained model."
    )


def build(name: str, pretrained: bool, kwargs: dict[str, Any]) -> nn.Module:
    """timm.create_model; where the entry point fixes a size that `kwargs` sets, timm's builder on its class.

    Some entry points pass their own sizes next to the caller's kwargs (mixer_b16_224's patch size,
    depth and width), which Python refuses as a duplicate keyword. Then the model is built by
    `timm.models.build_model_with_cfg` from the entry point's model class and pretrained config
    with `kwargs` as the whole architecture (the class's defaults fill the rest): a patch-8 Mixer
    B gives patch_size, num_blocks and embed_dim.
    """
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except TypeError as err:
        if DUPLICATE not in str(err):
            raise
        with torch.device("meta"):
            cls = type(timm.create_model(name))
    return timm.models.build_model_with_cfg(
        cls, name, pretrained, pretrained_filter_fn=getattr(sys.modules[cls.__module__], "checkpoint_filter_fn", None), **kwargs
    )


class TimmSource(ModelSource):
    """Models from timm: layer indices follow `forward_intermediates` (the model's feature_info)."""

    name = "timm"
    package = "timm."
    neutral_names = {r"patch_embed": "stem", r"patch_embed\.proj": "stem.proj"}  # a Mixer's patch embedding
    stem_classes = {VisionTransformer: TimmStemViT}

    def create(self, name, kwargs, pretrained=False, weights=None, checkpoint=None):
        if name not in timm.list_models() and not timm.is_model(name):
            raise _unknown_model(name)
        if weights:
            raise RepinvError(
                f"model.weights={weights} names a torchvision weights enum, which timm's {name} does not take. Load "
                "timm's trained weights with model.pretrained=true, or a file with model.checkpoint=FILE."
            )
        kwargs = dict(kwargs)
        if checkpoint:
            path = Path(checkpoint).expanduser()
            if not path.is_file():
                raise RepinvError(
                    f"model.checkpoint={checkpoint} does not exist. Pass the path of a safetensors "
                    f"or torch state-dict file holding weights for {name}, or leave model.checkpoint=null."
                )
            kwargs["pretrained_cfg_overlay"] = {"file": str(path.resolve())}
        use_weights = bool(pretrained or checkpoint)
        try:
            return build(name, use_weights, kwargs), use_weights
        except TypeError as err:
            if not any(phrase in str(err) for phrase in (DUPLICATE, UNEXPECTED)):
                raise
            raise RepinvError(
                f"model.kwargs={kwargs} do not fit {name}: {err}. Use keyword arguments that "
                f"timm's {name} constructor takes (depth, embed_dim, num_heads, img_size, patch_size, ...)."
            ) from None
        except (RuntimeError, OSError, ValueError, ImportError) as err:
            if use_weights:
                raise _weights_missing(name, kwargs, checkpoint, err) from None
            raise

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
