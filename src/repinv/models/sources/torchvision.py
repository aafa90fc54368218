"""torchvision as a model source: the study's own models (vit_b_32, vit_l_16, vit_h_14, resnet50).

Trained weights come through torchvision's weights enums (`weights=IMAGENET1K_V1`, cached by
torch.hub) or a local state-dict file. Hidden layers are the encoder blocks
(`encoder.layers.encoder_layer_i`) or, for ResNets, the stem and the four stages, reached
through module-path taps. Neutral names (timm's: patch_embed, blocks.0.norm1, pos_embed, ...)
resolve to torchvision's spelling, so one config serves both sources.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn

from repinv.errors import RepinvError, listing, suggest
from repinv.models.sources.base import ModelSource, load_state_file, state_misfits

BLOCK = r"blocks\.(\d+|\*)"  # a block index, or * in a shell pattern
LAYER = r"encoder.layers.encoder_layer_\1"


class TorchvisionStemViT(torchvision.models.VisionTransformer):
    """torchvision's ViT with `stem` first (its hidden layers list `stem` before the encoder layers)."""

    def _process_input(self, x: torch.Tensor) -> torch.Tensor:
        return super()._process_input(self.stem(x))


def fit_state(net: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Resample a ViT's position embeddings when the weights were trained at another input size."""
    pos = state.get("encoder.pos_embedding")
    if pos is not None and pos.shape != net.encoder.pos_embedding.shape:
        from torchvision.models.vision_transformer import interpolate_embeddings

        state = interpolate_embeddings(net.image_size, net.patch_size, state)
    return state


def _check_name_and_weights(name: str, weights: str | None) -> None:
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


def _load_checkpoint(net: nn.Module, name: str, checkpoint: str, kwargs) -> None:
    state = fit_state(net, load_state_file(Path(checkpoint).expanduser()))  # a file: create_model checks
    problems = state_misfits(net.state_dict(), state)
    if problems:
        raise RepinvError(
            f"model.checkpoint={checkpoint} does not fit torchvision's {name} with kwargs {kwargs}: "
            f"{listing(problems, 3)}. Pass a state dict saved from the same architecture."
        )
    net.load_state_dict(state)


class TorchvisionSource(ModelSource):
    """Models from torchvision.models; ImageNet normalisation, as torchvision's weights expect."""

    name = "torchvision"
    package = "torchvision."
    size_kwarg = "image_size"  # its ViTs
    neutral_names = {
        r"patch_embed(?:\.proj)?": "conv_proj",
        r"cls_token": "class_token",
        r"pos_embed": "encoder.pos_embedding",
        r"norm": "encoder.ln",
        BLOCK: LAYER,
        BLOCK + r"\.norm1": LAYER + ".ln_1",
        BLOCK + r"\.attn": LAYER + ".self_attention",
        BLOCK + r"\.norm2": LAYER + ".ln_2",
        BLOCK + r"\.mlp": LAYER + ".mlp",
    }
    stem_classes = {torchvision.models.VisionTransformer: TorchvisionStemViT}

    def create(self, name, kwargs, pretrained=False, weights=None, checkpoint=None):
        """Build `name` (untrained, enum weights, or a local file)."""
        _check_name_and_weights(name, weights)
        if pretrained:
            options = ", ".join(w.name for w in torchvision.models.get_model_weights(name))
            raise RepinvError(
                f"model.pretrained=true is timm's switch, which torchvision's {name} does not take. Load its trained "
                f"weights with model.weights=ENUM ({options}), or a file with model.checkpoint=FILE."
            )
        try:
            net = torchvision.models.get_model(name, **kwargs)
            if weights:
                # built at the weights' own size, then resampled to ours (the study's ViT-L/16 at 512)
                trained = torchvision.models.get_model(name, weights=weights)
                net.load_state_dict(fit_state(net, trained.state_dict()))
        except TypeError as err:
            raise RepinvError(f"model.kwargs={kwargs} do not fit torchvision's {name}: {err}.") from None
        except (OSError, RuntimeError) as err:  # download refused offline, or a broken cache; or kwargs the build refuses
            if not weights:
                raise RepinvError(f"model.kwargs={kwargs} do not fit torchvision's {name}: {type(err).__name__}: "
                                  f"{str(err).splitlines()[0] if str(err) else ''}.") from None
            url = torchvision.models.get_model_weights(name)[weights].url
            raise RepinvError(
                f"trained weights {weights} for torchvision's {name} could not be loaded ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''}). torchvision downloads {url} into "
                f"{torch.hub.get_dir()}/checkpoints; on a machine without internet download that file "
                "elsewhere and pass it with model.checkpoint=/path/to/file.pth, or set model.weights=null."
            ) from None
        if checkpoint:
            _load_checkpoint(net, name, checkpoint, kwargs)
        return net, bool(weights or checkpoint)

    def hidden_layers(self, net):
        """Encoder blocks (after a stem surgery's `stem`), a ResNet's stem and stages, or `features`' children."""
        names = dict(net.named_modules())
        if "encoder.layers" in names:
            stem = ["stem"] if "stem" in names else []
            return stem + [f"encoder.layers.{n}" for n, _ in names["encoder.layers"].named_children()]
        if all(f"layer{i}" in names for i in range(1, 5)):
            return ["relu", "layer1", "layer2", "layer3", "layer4"]
        if "features" in names:
            return [f"features.{n}" for n, _ in names["features"].named_children()]
        return []
