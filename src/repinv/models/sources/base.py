"""What a model library gives repinv, behind one interface.

A `ModelSource` builds a model by name (untrained and seeded, trained, or from a weights file)
and answers what the rest of repinv asks of a built net: the module paths that integer layer
indices mean, the input normalisation its weights expect, its input convolution, the class a
ViT of its own becomes under the Stem surgery, and how source-neutral module names (`patch_embed`,
`blocks.0.norm1`, ...: timm's names) are spelled in its models. `create_model` marks each net
with its source, so taps and surgery find the source from the net alone (`choice.for_net`).
A new library is one subclass, named in config: `model.source._target_=package.module.Class`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from repinv.errors import RepinvError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SOURCE_ATTR = "repinv_source"  # set on every net create_model builds: the ModelSource that built it


class ModelSource:
    """A model library. Subclasses implement `create` and override what differs from these defaults."""

    name = "generic"  # how messages and per-source settings (a transplant's names) call it; a subclass's dotted path by default
    package: str | None = None  # nets whose class (or a base class) comes from this package belong here
    neutral_names: dict[str, str] = {}  # regex on a neutral name (full match) -> this source's spelling
    stem_classes: dict[type, type] = {}  # a ViT class -> its subclass that runs a stem first
    size_kwarg: str | None = None  # the constructor argument that sets the input size (timm's img_size), if any

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = f"{cls.__module__}.{cls.__qualname__}"

    def create(self, name: str, kwargs: dict[str, Any], pretrained: bool = False, weights: str | None = None,
               checkpoint: str | None = None) -> tuple[nn.Module, bool]:
        """Build model `name` with `kwargs` (seeded by the caller); returns the net and whether it holds trained weights.

        A loading argument the library does not take (timm has no `weights`, torchvision no `pretrained`) is
        refused with a RepinvError, never ignored: ignored, it would give untrained weights where trained ones
        were asked for.
        """
        raise NotImplementedError

    def hidden_layers(self, net: nn.Module) -> list[str]:
        """Module paths that integer layer indices refer to, in order (empty: module paths only)."""
        return []

    def normalisation(self, net: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Mean and std per channel the model's inputs are normalised with."""
        return IMAGENET_MEAN, IMAGENET_STD

    def input_conv(self, net: nn.Module) -> tuple[str, nn.Conv2d] | None:
        """The first convolution that takes the 3-channel image, in module order, with its path; None if there is none.

        ViTs' patch embedding (patch_embed.proj, conv_proj), a ResNet's conv1, a Mixer's stem.proj,
        and a stem surgery's stem.conv1, which is listed first because it runs first.
        """
        for path, module in net.named_modules():
            if isinstance(module, nn.Conv2d) and module.in_channels == 3 and module.groups == 1:
                return path, module
        return None

    def min_input_size(self, net: nn.Module) -> tuple[int, int]:
        """The smallest image (height, width) the net's input layer gives an output for: `input_conv`'s reach (its
        kernel, dilated) less its padding, a ViT's or Mixer's patch; (1, 1) where it pads enough or has no such layer.
        A smaller image leaves a patch embedding no patch, so the layers after it do not depend on the image."""
        found = self.input_conv(net)
        if found is None or found[1].padding == "same":
            return 1, 1
        conv = found[1]
        pads = (0, 0) if conv.padding == "valid" else conv.padding
        need = [max(1, d * (k - 1) + 1 - 2 * p) for k, d, p in zip(conv.kernel_size, conv.dilation, pads)]
        return need[0], need[1]

    def owns(self, net: nn.Module) -> bool:
        """Whether `net` is one of this library's models (for nets built outside `create_model`)."""
        return self.package is not None and any(c.__module__.startswith(self.package) for c in type(net).__mro__)

    def translate(self, name: str) -> str:
        """A neutral module name (or shell pattern) in this source's spelling; unchanged where no rule matches."""
        for pattern, spelled in self.neutral_names.items():
            match = re.fullmatch(pattern, name)
            if match:
                return match.expand(spelled)
        return name

    def module_name(self, net: nn.Module, name: str) -> str:
        """`name` as a path in `net`: itself if `net` has it, else its spelling in this source if `net` has that."""
        known = {n for n, _ in net.named_modules()} | {n for n, _ in net.named_parameters()} | {n for n, _ in net.named_buffers()}
        spelled = self.translate(name)
        return spelled if name not in known and spelled in known else name


GENERIC = ModelSource()


def load_state_file(path: Path, read: Callable[[Path], Any] | None = None) -> dict[str, torch.Tensor]:
    """The state dict in the weights file `path`, read by `read` (a library's own reader) or `read_state`.

    Any failure to read it (junk bytes, a broken safetensors header, a pickle torch.load refuses,
    something other than a dict) is a RepinvError naming the file, wherever the file was given.
    """
    try:
        state = (read or read_state)(path)
        if not isinstance(state, dict):
            raise TypeError(f"it holds a {type(state).__name__}, not a dict of tensors")
    except Exception as err:  # each reader fails its own way: UnpicklingError, SafetensorError, EOFError, ...
        line = str(err).strip().splitlines()[0] if str(err).strip() else ""
        first = re.split(r"(?<=\.)\s", line, maxsplit=1)[0].rstrip(".")  # torch's first line goes on to advice
        raise RepinvError(
            f"model.checkpoint={path} could not be read as a state dict (safetensors or torch file): "
            f"{type(err).__name__}: {first}. Pass a file written by safetensors' save_file or by torch.save(model.state_dict())."
        ) from None
    return state


def state_misfits(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> list[str]:
    """Each tensor the model has that `state` lacks or holds in another shape, and each it holds that the model lacks."""
    problems = [f"{k} is missing there" if k not in state else f"{k} is {tuple(state[k].shape)} there and {tuple(v.shape)} here"
                for k, v in own.items() if k not in state or state[k].shape != v.shape]
    return problems + [f"{k} is there but not in the model" for k in state if k not in own]


def read_state(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a safetensors or torch file (a dict holding 'state_dict' or 'model' is unwrapped)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state
