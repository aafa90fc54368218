"""Create a frozen model through its source (timm, torchvision, ...): untrained (seeded), trained, or from a file."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from repinv.errors import RepinvError, suggest
from repinv.models.packed import pack_linears
from repinv.models.patchify import patchify_convs
from repinv.models.sources import SOURCE_ATTR, ModelSource, for_net, get_source


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
    def source(self) -> ModelSource:
        """The model source that built the net (its layer names, stem class, neutral module names)."""
        return for_net(self.net)


def freeze(net: nn.Module) -> nn.Module:
    """No gradients for the weights and eval-mode layers (BatchNorm statistics, dropout)."""
    return net.requires_grad_(False).eval()


def _packed(net: nn.Module) -> None:
    """Patch convolutions as matmuls and linear layers on packed weights (`repinv.models.packed`; same values)."""
    patchify_convs(net)
    pack_linears(net)


# model.cpu_kernels: how the step's frozen layers run on CPU
CPU_KERNELS: dict[str, Callable[[nn.Module], None]] = {"packed": _packed, "none": lambda net: None}


def _cpu_kernels(choice: str) -> Callable[[nn.Module], None]:
    if choice not in CPU_KERNELS:
        raise RepinvError(
            f"model.cpu_kernels={choice} is not a kernel choice.{suggest(choice, CPU_KERNELS)} Use packed (patch "
            "convolutions as matmuls and linear layers on packed weights: same values, faster CPU steps) or none "
            "(torch's own nn.Linear and nn.Conv2d)."
        )
    return CPU_KERNELS[choice]


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
    cpu_kernels: str = "packed",
) -> LoadedModel:
    """Build `name` through model source `source` and freeze it.

    Untrained weights depend only on `seed`. `pretrained=True` (timm), `weights=ENUM`
    (torchvision) or `checkpoint=PATH` load trained weights the source's way. The net is
    marked with its source's name (`repinv.models.sources.for_net`); `cpu_kernels` says how its
    frozen layers run on CPU (`CPU_KERNELS`).
    """
    spec = dict(name=name, label=label, input_size=input_size, pretrained=pretrained, checkpoint=checkpoint, mean=mean,
                std=std, seed=seed, kwargs=dict(kwargs or {}), source=source, weights=weights, cpu_kernels=cpu_kernels)
    lib, prepare = get_source(source), _cpu_kernels(cpu_kernels)
    size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net, trained = lib.create(name, dict(kwargs or {}), pretrained=pretrained, weights=weights, checkpoint=checkpoint)
    setattr(net, SOURCE_ATTR, lib.name)
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
        spec=spec,
    )
