"""Create a frozen model through its source (timm, torchvision, ...): untrained (seeded), trained, or from a file.

The model source and the CPU kernel choice are plug-ins: a config node whose `_target_` names the
class (a ModelSource) or the function of the net, built through `repinv.engine.plugins.build`, or the short
name of a built-in one (`model.source=timm`, `model.cpu_kernels=none`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from repinv.conf import group_options
from repinv.engine.plugins import Choice, build
from repinv.errors import RepinvError, is_number, listing
from repinv.models.packed import pack_linears
from repinv.models.patchify import patchify_convs
from repinv.models.sources import IMAGENET_MEAN, IMAGENET_STD, SOURCE_ATTR, ModelSource, for_net, model_source

DEFAULT_INPUT_SIZE = 224  # create_model's; the size the study's models are built at
UNTRAINED = {"pretrained": False, "weights": None, "checkpoint": None}  # the model settings that load trained weights, off


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
    trained_parts: bool = False  # whether any weights are trained (all are where `trained`; some after a transplant)
    spec: dict[str, Any] = field(default_factory=dict)  # create_model's arguments: surgery rebuilds and donors reuse them

    @property
    def source(self) -> ModelSource:
        """The model source that built the net (its layer names, stem class, neutral module names)."""
        return for_net(self.net)


def freeze(net: nn.Module) -> nn.Module:
    """No gradients for the weights and eval-mode layers (BatchNorm statistics, dropout)."""
    return net.requires_grad_(False).eval()


def packed_kernels(net: nn.Module) -> None:
    """Patch convolutions as matmuls and linear layers on packed weights (`repinv.models.packed`; same values)."""
    patchify_convs(net)
    pack_linears(net)


def torch_kernels(net: nn.Module) -> None:
    """torch's own nn.Linear and nn.Conv2d: the net as its source built it."""


CPU_KERNELS: dict[str, Callable[[nn.Module], None]] = {"packed": packed_kernels, "none": torch_kernels}  # the short names


cpu_kernels_choice = Choice(
    key="model.cpu_kernels", what="a kernel choice", builtins=CPU_KERNELS, accepts=callable, partial=True,
    how="Use packed (patch convolutions as matmuls and linear layers on packed weights: same values, faster CPU steps) "
        "or none (torch's own nn.Linear and nn.Conv2d), or name a function of the net of your own with "
        "{key}._target_=package.module.function.",
)


def builtin_name(node: Any) -> str | None:
    """The short name (timm, packed, ...) of a node that names a built-in model source or kernel choice by `_target_` alone."""
    return model_source.short_name(node) or cpu_kernels_choice.short_name(node)


def side_pair(key: str, value) -> tuple[int, int]:
    """An image size given as one side or (height, width) as (height, width); one paragraph if it is neither."""
    sides = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value]
    sides = sides * 2 if len(sides) == 1 else sides
    if len(sides) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in sides):
        raise RepinvError(f"{key}={value} must be an image size in pixels: one positive whole number (a square side) "
                          f"or two (height, width), e.g. {key}=224 or {key}=[224,224].")
    return sides[0], sides[1]


def check_fits(name: str, input_size, size: tuple[int, int], need: tuple[int, int]) -> None:
    """An image at least as large as the net's input layer needs (`ModelSource.min_input_size`): a smaller one leaves a
    patch embedding no patch, and the run would end with every number 0 (the layers no longer see the image) or fail
    inside a kernel."""
    if size[0] >= need[0] and size[1] >= need[1]:
        return
    works = [-(-DEFAULT_INPUT_SIZE // n) * n for n in need]
    raise RepinvError(
        f"model.input_size={input_size} is smaller than the {need[0]}x{need[1]} patch of {name}'s input layer (its "
        "kernel less its padding): no patch fits the image, so the layers after it would not depend on the image. Give "
        f"at least {need[0]} pixels high and {need[1]} wide, e.g. model.input_size={works[0] if works[0] == works[1] else works}."
    )


def per_channel(key: str, values: Any, example: tuple[float, ...], positive: bool = False) -> tuple[float, ...] | None:
    """`model.mean` or `model.std` as three finite numbers, one per RGB channel (each above 0 with `positive`: the
    input is divided by std); None leaves the model's own. Anything else would fail to broadcast at the first step, or
    divide by 0 and turn the image into NaN."""
    if values is None:
        return None
    numbers = list(values) if isinstance(values, Sequence) and not isinstance(values, str) else [values]
    if len(numbers) != 3 or not all(is_number(v) and math.isfinite(v) and (v > 0 or not positive) for v in numbers):
        raise RepinvError(
            f"{key}={values} must be three finite numbers, one per RGB channel"
            f"{', each above 0 (the input is divided by it)' if positive else ''}: e.g. {key}=[{','.join(map(str, example))}] "
            f"(ImageNet's), or {key}=null for the model's own."
        )
    return tuple(float(v) for v in numbers)


def check_loading(pretrained, checkpoint, weights) -> None:
    """The settings that choose trained weights say which: `pretrained` true or false, a file or enum not empty (an
    empty one, or pretrained=abc, would run untrained, or load the library's weights, without a word)."""
    if not isinstance(pretrained, bool):
        raise RepinvError(f"model.pretrained={pretrained} must be true (the model library's trained weights) or false "
                          "(untrained).")
    for setting, value in (("checkpoint", checkpoint), ("weights", weights)):
        if isinstance(value, str) and not value.strip():
            raise RepinvError(f"model.{setting} is empty ('{value}'), which would run the model untrained: give a "
                              f"{'weights file' if setting == 'checkpoint' else 'torchvision weights enum'} or leave "
                              f"model.{setting}=null for untrained weights.")
    path = Path(str(checkpoint)).expanduser() if checkpoint else None
    if path is not None and not path.is_file():
        raise RepinvError(f"model.checkpoint={checkpoint} {'is a folder' if path.is_dir() else 'does not exist'}. Pass "
                          "the path of a safetensors or torch state-dict file holding the model's weights, or leave "
                          "model.checkpoint=null.")


def create_model(
    name: str | None = None,
    label: str | None = None,
    input_size: int | tuple[int, int] = DEFAULT_INPUT_SIZE,
    pretrained: bool = False,
    checkpoint: str | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    seed: int = 0,
    kwargs: dict[str, Any] | None = None,
    source: str | Mapping | ModelSource = "timm",
    weights: str | None = None,
    cpu_kernels: str | Mapping | Callable[[nn.Module], None] = "packed",
) -> LoadedModel:
    """Build `name` through model source `source` and freeze it.

    Untrained weights depend only on `seed`. `pretrained=True` (timm), `weights=ENUM`
    (torchvision) or `checkpoint=PATH` load trained weights the source's way. `source` and
    `cpu_kernels` are a short name, a config node with `_target_` or the object itself
    (`model_source`, `cpu_kernels_choice`); config nodes inside `kwargs` are built too (the model config
    is not built recursively). The net is marked with its source (`for_net`).
    """
    if not name:
        models = [m for m in group_options("model") if m != "base"]
        raise RepinvError(
            "model names no network (model.name is empty): model=base holds the settings every model config shares "
            f"and is not a model itself. Choose a model config ({listing(models)}) or set model.name to a model of "
            "the model's library, e.g. model.name=vit_base_patch32_224."
        )
    check_loading(pretrained, checkpoint, weights)
    mean, std = per_channel("model.mean", mean, IMAGENET_MEAN), per_channel("model.std", std, IMAGENET_STD, positive=True)
    kwargs = dict(build(kwargs, "model.kwargs")) if kwargs else {}  # a node with _target_ inside (act_layer) is built here
    spec = dict(name=name, label=label, input_size=input_size, pretrained=pretrained, checkpoint=checkpoint, mean=mean,
                std=std, seed=seed, kwargs=kwargs, source=source, weights=weights, cpu_kernels=cpu_kernels)
    lib, prepare = model_source(source), cpu_kernels_choice(cpu_kernels)
    size = side_pair("model.input_size", input_size)
    if lib.size_kwarg in kwargs and side_pair(f"model.kwargs.{lib.size_kwarg}", kwargs[lib.size_kwarg]) != size:
        raise RepinvError(
            f"model.kwargs.{lib.size_kwarg}={kwargs[lib.size_kwarg]} builds the network for another input size than "
            f"model.input_size={input_size}, the size the images are fed at: set them alike (the presets write "
            f"{lib.size_kwarg}: ${{model.input_size}}), or leave {lib.size_kwarg} out of model.kwargs."
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net, trained = lib.create(name, dict(kwargs), pretrained=pretrained, weights=weights, checkpoint=checkpoint)
    check_fits(name, input_size, size, lib.min_input_size(net))
    setattr(net, SOURCE_ATTR, lib)
    prepare(net)
    default_mean, default_std = lib.normalisation(net)
    return LoadedModel(
        net=freeze(net),
        label=label or name,
        arch=name,
        input_size=size,
        mean=tuple(mean or default_mean),
        std=tuple(std or default_std),
        trained=trained,
        trained_parts=trained,
        spec=spec,
    )
