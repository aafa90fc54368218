"""Hidden layers: where a model is read, and a forward pass that stops there.

A layer is an int (an index into the model's hidden layers as timm's
`forward_intermediates` numbers them; negative counts from the end) or a module path
(`patch_embed`, `blocks.0.norm1`, `stem.conv`, ...). Index taps use
`forward_intermediates(..., stop_early=True)`; module taps hook the named module and
stop the forward pass as soon as it has run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from repinv.errors import RepinvError, listing, suggest
from repinv.models.torchvision_source import torchvision_hidden_layers


class _Reached(Exception):
    """Raised by a forward hook to end the forward pass at the tapped module."""

    def __init__(self, output: torch.Tensor):
        super().__init__()
        self.output = output


def _first_tensor(out):
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"module output of type {type(out).__name__} is not a tensor")


def hidden_layer_names(net: nn.Module) -> list[str]:
    """Module names of the layers that integer indices refer to.

    timm models: their feature_info order (what forward_intermediates numbers). Models without
    forward_intermediates (torchvision): encoder blocks or ResNet stages, reached by module path.
    """
    info = getattr(net, "feature_info", None)
    if isinstance(info, list) and info and hasattr(net, "forward_intermediates"):
        return [str(f.get("module", f"#{i}")) for i, f in enumerate(info)]
    blocks = getattr(net, "blocks", None) or getattr(net, "layers", None)
    if isinstance(blocks, nn.Sequential) and hasattr(net, "forward_intermediates"):
        return [f"blocks.{i}" for i in range(len(blocks))]
    return torchvision_hidden_layers(net)


@dataclass(frozen=True)
class LayerTap:
    """One resolved layer: `label` for files and logs, `index` or `module` to reach it."""

    label: str
    index: int | None = None
    module: str | None = None

    @property
    def title(self) -> str:
        return self.label if self.module is None or self.index is None else f"{self.label} ({self.module})"

    def __call__(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Run `net` on `x` up to this layer and return that layer's output."""
        if self.index is not None and hasattr(net, "forward_intermediates"):
            out = net.forward_intermediates(x, indices=[self.index], stop_early=True, intermediates_only=True)
            return out[0]
        target = net.get_submodule(self.module)

        def hook(_mod, _inp, output):
            raise _Reached(_first_tensor(output))

        handle = target.register_forward_hook(hook)
        try:
            net(x)
        except _Reached as reached:
            return reached.output
        finally:
            handle.remove()
        raise RuntimeError(f"module {self.module} did not run in the forward pass")


def _invalid(spec, net: nn.Module) -> RepinvError:
    names = hidden_layer_names(net)
    modules = [n for n, _ in net.named_modules() if n and n.count(".") <= 1]
    idx = f"indices 0..{len(names) - 1} (or -1 for the last) meaning {listing(names, 6)}" if names else "no indices (this model has no forward_intermediates)"
    return RepinvError(
        f"layers={spec} is not a layer of this model.{suggest(str(spec), [n for n, _ in net.named_modules() if n])} "
        f"Valid layers are {idx}, or a module path such as {listing(modules, 16)} "
        "(any name from model.named_modules())."
    )


def resolve_layer(net: nn.Module, spec: int | str) -> LayerTap:
    """Turn one `layers=` entry into a LayerTap, with a clear error listing the valid ones."""
    if isinstance(spec, bool):
        raise _invalid(spec, net)
    if isinstance(spec, str) and spec.lstrip("-").isdigit():
        spec = int(spec)
    names = hidden_layer_names(net)
    if isinstance(spec, int):
        if not names or not -len(names) <= spec < len(names):
            raise _invalid(spec, net)
        index = spec % len(names)
        return LayerTap(label=f"L{index}", index=index, module=names[index])
    modules = dict(net.named_modules())
    if not isinstance(spec, str) or not spec or spec not in modules:
        raise _invalid(spec, net)
    return LayerTap(label=spec, module=spec)


def resolve_layers(net: nn.Module, specs) -> list[LayerTap]:
    """Resolve `layers=` (one entry or a list) to distinct taps, in the order given."""
    if specs is None:
        raise RepinvError("layers= is empty. Give an index such as layers=5, a module path such as layers=patch_embed, or a list such as layers=[0,5,11].")
    entries = list(specs) if isinstance(specs, (list, tuple)) or hasattr(specs, "__iter__") and not isinstance(specs, str) else [specs]
    taps: list[LayerTap] = []
    for spec in entries:
        tap = resolve_layer(net, spec)
        if tap not in taps:
            taps.append(tap)
    if not taps:
        raise RepinvError("layers= is empty. Give at least one layer, e.g. layers=[patch_embed,5].")
    return taps
