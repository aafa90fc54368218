"""torchvision as a second model source: the study's own models (vit_b_32, vit_l_16, vit_h_14, resnet50).

Trained weights come through torchvision's weights enums (`weights=IMAGENET1K_V1`, cached by
torch.hub) or a local state-dict file. Hidden layers are the encoder blocks
(`encoder.layers.encoder_layer_i`) or, for ResNets, the stem and the four stages, reached
through the same module-path taps as any model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from repinv.errors import RepinvError, suggest

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def torchvision_hidden_layers(net: nn.Module) -> list[str]:
    """Module paths that layer indices refer to in a torchvision model (empty if unknown).

    A ViT with a `stem` (the Stem surgery) counts the stem's output as layer 0.
    """
    names = dict(net.named_modules())
    if "encoder.layers" in names:
        stem = ["stem"] if "stem" in names else []
        return stem + [f"encoder.layers.{n}" for n, _ in names["encoder.layers"].named_children()]
    if all(f"layer{i}" in names for i in range(1, 5)):
        return ["relu", "layer1", "layer2", "layer3", "layer4"]
    if "features" in names:
        return [f"features.{n}" for n, _ in names["features"].named_children()]
    return []


def load_state_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a safetensors or torch file (a dict holding 'state_dict' or 'model' is unwrapped)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state


def fit_state(net: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Resample a ViT's position embeddings when the weights were trained at another input size."""
    pos = state.get("encoder.pos_embedding")
    if pos is not None and pos.shape != net.encoder.pos_embedding.shape:
        from torchvision.models.vision_transformer import interpolate_embeddings

        state = interpolate_embeddings(net.image_size, net.patch_size, state)
    return state


def create_torchvision_model(
    name: str, weights: str | None, checkpoint: str | None, seed: int, kwargs: dict[str, Any]
) -> tuple[nn.Module, bool]:
    """Build torchvision model `name` (untrained and seeded, enum weights, or a local file)."""
    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        raise RepinvError(
            f"model.name={name} is not a torchvision classification model.{suggest(name, available)} "
            "The study's models are vit_b_32, vit_l_16, vit_h_14 and resnet50 (model=tv_vit_b_32, ...)."
        )
    if weights:
        try:
            torchvision.models.get_model_weights(name)[weights]
        except KeyError:
            options = [w.name for w in torchvision.models.get_model_weights(name)]
            raise RepinvError(f"model.weights={weights} is not a weights enum of {name}; it has {', '.join(options)}.") from None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            net = torchvision.models.get_model(name, **kwargs)
            if weights:
                # built at the weights' own size, then resampled to ours (the study's ViT-L/16 at 512)
                trained = torchvision.models.get_model(name, weights=weights)
                net.load_state_dict(fit_state(net, trained.state_dict()))
        except TypeError as err:
            raise RepinvError(f"model.kwargs={kwargs} do not fit torchvision's {name}: {err}.") from None
        except (OSError, RuntimeError) as err:  # download refused offline, or a broken cache
            url = torchvision.models.get_model_weights(name)[weights].url
            raise RepinvError(
                f"trained weights {weights} for torchvision's {name} could not be loaded ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''}). torchvision downloads {url} into "
                f"{torch.hub.get_dir()}/checkpoints; on a machine without internet download that file "
                "elsewhere and pass it with model.checkpoint=/path/to/file.pth, or set model.weights=null."
            ) from None
    if checkpoint:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise RepinvError(f"model.checkpoint={checkpoint} does not exist. Pass a safetensors or torch state-dict file for {name}.")
        try:
            net.load_state_dict(fit_state(net, load_state_file(path)))
        except RuntimeError as err:
            raise RepinvError(
                f"model.checkpoint={checkpoint} does not fit torchvision's {name} with kwargs {kwargs}: "
                f"{str(err).splitlines()[0]} ... Pass a state dict saved from the same architecture."
            ) from None
    return net, bool(weights or checkpoint)
