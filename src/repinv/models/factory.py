"""Create a frozen timm model, untrained (seeded) or with trained weights from the hub or a file."""

from __future__ import annotations

import os
import sys
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import timm
import torch
from torch import nn

from repinv.errors import RepinvError, suggest
from repinv.models.packed import pack_linears
from repinv.models.patchify import patchify_convs
from repinv.models.torchvision_source import IMAGENET_MEAN, IMAGENET_STD, create_torchvision_model


@dataclass
class LoadedModel:
    """A frozen network plus what the rest of repinv needs to know to feed it."""

    net: nn.Module
    label: str
    arch: str
    input_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    trained: bool
    surgery: list[str] = field(default_factory=list)
    spec: dict[str, Any] = field(default_factory=dict)  # create_model's arguments: surgery rebuilds and donors reuse them

    @property
    def tag(self) -> str:
        """Short description for run names: label, trained state and surgery."""
        state = "trained" if self.trained else "untrained"
        return "-".join([self.label, state, *self.surgery])


def freeze(net: nn.Module) -> nn.Module:
    """No gradients for the weights and eval-mode layers (BatchNorm statistics, dropout)."""
    return net.requires_grad_(False).eval()


def _prepare(net: nn.Module) -> nn.Module:
    """Frozen, with the step's faster equivalents: patch convolutions as matmuls, packed linear weights."""
    patchify_convs(net)
    pack_linears(net)
    return freeze(net)


def _unknown_model(name: str) -> RepinvError:
    return RepinvError(
        f"model.name={name} is not a timm architecture.{suggest(name, timm.list_models())} "
        "Pick one of the model configs (model=vit_b_32, resnet50, mixer_b16, ...) or any name "
        "from timm.list_models()."
    )


def _weights_missing(name: str, checkpoint: str | None, err: Exception) -> RepinvError:
    cfg = timm.models.get_pretrained_cfg(name)
    where = ""
    if cfg is not None and cfg.hf_hub_id:
        where = f" timm looks for hub repo '{cfg.hf_hub_id}' (file model.safetensors or pytorch_model.bin)."
    if checkpoint and "size mismatch" in str(err):
        return RepinvError(
            f"model.checkpoint={checkpoint} does not fit model.name={name} as configured: "
            f"{str(err).splitlines()[0]} {' '.join(l.strip() for l in str(err).splitlines()[1:3])} "
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


def _timm_create(name: str, pretrained: bool, kwargs: dict[str, Any]) -> nn.Module:
    """timm.create_model, where `kwargs` may also override what an architecture fixes itself.

    Some timm entry points pass their own patch size, depth or width next to the caller's
    kwargs (mixer_b16_224, convmixer_768_32), which Python refuses as a duplicate keyword. Then
    the module's `_create_*` builder is wrapped so the caller's kwargs win, e.g. a patch-8 Mixer.
    """
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except TypeError as err:
        if "multiple values for keyword argument" not in str(err):
            raise
    module = sys.modules[timm.models.model_entrypoint(name).__module__]
    arch = {k: v for k, v in kwargs.items() if k != "pretrained_cfg_overlay"}
    with ExitStack() as stack:
        for attr in [a for a in vars(module) if a.startswith("_create_")]:
            real = getattr(module, attr)
            wrapped = lambda variant, pretrained=False, _real=real, **a: _real(variant, pretrained, **{**a, **arch})  # noqa: E731
            stack.enter_context(mock.patch.object(module, attr, wrapped))
        return timm.create_model(name, pretrained=pretrained, **{k: v for k, v in kwargs.items() if k not in arch})


def create_model(
    name: str,
    label: str | None = None,
    input_size: int | tuple[int, int] = 224,
    pretrained: bool = False,
    checkpoint: str | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    seed: int = 0,
    kwargs: dict[str, Any] | None = None,
    source: str = "timm",
    weights: str | None = None,
) -> LoadedModel:
    """Build `name` through timm and freeze it.

    Untrained weights depend only on `seed`. `pretrained=True` goes through timm's own
    pretrained machinery (hub or local cache); `checkpoint=PATH` feeds a local safetensors or
    torch file through the same machinery (`pretrained_cfg_overlay`), so timm's filtering and
    head resizing apply as usual. Patch convolutions are switched to their faster matmul form
    and linear layers to packed weights for the step (`repinv.models.packed`; same values).
    """
    spec = dict(name=name, label=label, input_size=input_size, pretrained=pretrained, checkpoint=checkpoint, mean=mean,
                std=std, seed=seed, kwargs=dict(kwargs or {}), source=source, weights=weights)
    kwargs = dict(kwargs or {})
    size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    if source == "torchvision":
        net, trained = create_torchvision_model(name, weights, checkpoint, seed, kwargs)
        return LoadedModel(_prepare(net), label or name, name, size, tuple(mean or IMAGENET_MEAN), tuple(std or IMAGENET_STD), trained, spec=spec)
    if source != "timm":
        raise RepinvError(f"model.source={source} is not a model source; use timm or torchvision.")
    if name not in timm.list_models() and not timm.is_model(name):
        raise _unknown_model(name)
    if checkpoint:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise RepinvError(
                f"model.checkpoint={checkpoint} does not exist. Pass the path of a safetensors "
                "or torch state-dict file holding weights for "
                f"{name}, or leave model.checkpoint=null."
            )
        kwargs["pretrained_cfg_overlay"] = {"file": str(path.resolve())}
    use_weights = bool(pretrained or checkpoint)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            net = _timm_create(name, use_weights, kwargs)
        except TypeError as err:
            raise RepinvError(
                f"model.kwargs={kwargs} do not fit {name}: {err}. Use keyword arguments that "
                f"timm's {name} constructor takes (depth, embed_dim, num_heads, img_size, patch_size, ...)."
            ) from None
        except RuntimeError as err:
            if "Unknown model" in str(err):
                raise _unknown_model(name) from None
            if use_weights:
                raise _weights_missing(name, checkpoint, err) from None
            raise
        except (OSError, ValueError, ImportError) as err:
            if use_weights:
                raise _weights_missing(name, checkpoint, err) from None
            raise
    cfg = getattr(net, "pretrained_cfg", {}) or {}
    return LoadedModel(
        net=_prepare(net),
        label=label or name,
        arch=name,
        input_size=size,
        mean=tuple(mean or cfg.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(std or cfg.get("std", (0.229, 0.224, 0.225))),
        trained=use_weights,
        spec=spec,
    )
