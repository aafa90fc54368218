"""Model surgery by config: operations applied in order to a loaded model.

- `Transplant` keeps named parameters or submodules trained in an untrained model: from the
  model's own configured weights or from a donor (the same architecture built with timm's
  pretrained weights or a local checkpoint), e.g. the trained patch embedding in an untrained ViT.
- `Remove` replaces every module whose class name or path matches a pattern with identity,
  e.g. every LayerNorm of a Mixer.
- `Rebuild` builds the model again with other timm kwargs (patch size, depth, width, image
  size); trained weights are loaded again through timm, which resamples what it can.
- `Stem` puts another model's first layers in front of a ViT's encoder stack, e.g. ResNet50's
  conv1 (first three filters) feeding ViT-B/32 encoders.

Each operation checks its input and raises a RepinvError naming what exists. `apply_surgery`
records every operation's name in `LoadedModel.surgery` (run names, W&B tags).
"""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from repinv.errors import RepinvError, listing, suggest
from repinv.models.factory import UNTRAINED, LoadedModel, create_model, freeze
from repinv.models.stem import StemLayers, put_stem_first


class Operation:
    """One surgery step; `__call__` changes the model (in place or by returning a new one)."""

    def __call__(self, model: LoadedModel) -> LoadedModel:
        raise NotImplementedError


def _top_names(net: nn.Module) -> list[str]:
    """Parameter and module names a user would pick from: up to two levels deep."""
    names = [n for n, _ in net.named_modules() if n and n.count(".") <= 1]
    names += [n for n, _ in net.named_parameters(recurse=False)]
    return names


def _loads_weights(spec: Mapping[str, Any]) -> bool:
    """Whether create_model's arguments `spec` load trained weights (pretrained, weights or checkpoint)."""
    return bool(spec.get("pretrained") or spec.get("weights") or spec.get("checkpoint"))


def _name_list(names) -> list[str]:
    return [names] if isinstance(names, str) else [str(n) for n in names]


class Transplant(Operation):
    """Trained `names` (parameters, buffers or whole submodules) in an otherwise untrained model.

    Without `donor`, the model's own configured weights (model.pretrained, model.weights or
    model.checkpoint) are the trained ones: `names` keep them and everything else is reset to the
    seeded untrained weights, so `model.pretrained=true surgery=trained_norm1` is an untrained ViT
    with the trained first LayerNorm. On a model an earlier transplant already made untrained,
    `names` are copied from a build of the configured weights, so `surgery=[trained_patch_embed,
    trained_pos_embed]` keeps both trained; a model configured without trained weights is left
    as it is, with a warning. With `donor` (`pretrained`, `checkpoint` or, for torchvision, `weights`),
    `names` are copied from that build of the same architecture into the model as configured.
    `donor.name` may say which architecture the weights belong to; it must be the model's own.
    Names are source-neutral where the model source knows them (`patch_embed`, `pos_embed`,
    `blocks.0.norm1` name torchvision's conv_proj, encoder.pos_embedding, ...), so one preset serves
    every source; `names` may also be a mapping keyed by the model source's `name` (`{timm: [...], torchvision: [...]}`).
    """

    def __init__(self, names: list[str] | str | Mapping[str, list[str]], donor: Mapping[str, Any] | None = None):
        if isinstance(names, Mapping):  # per model source: {timm: [patch_embed], torchvision: [conv_proj]}
            self.by_source = {str(k): _name_list(v) for k, v in names.items()}
        else:
            self.by_source = {"*": _name_list(names)}
        self.donor = None if donor is None else dict(donor)
        if not all(self.by_source.values()):
            raise RepinvError("a transplant needs names: the parameters or modules to copy, "
                              "e.g. names: [patch_embed, pos_embed].")

    def _names(self, model: LoadedModel) -> list[str]:
        """The names for the model's source, each in its spelling (neutral names such as patch_embed resolve)."""
        source = model.source.name
        if "*" in self.by_source:
            names = self.by_source["*"]
        elif source in self.by_source:
            names = self.by_source[source]
        else:
            raise RepinvError(
                f"this transplant names parts for {listing(self.by_source)} models, not for {source} ones; add "
                f"names.{source}: [...] with {source}'s module names."
            )
        return [model.source.module_name(model.net, n) for n in names]

    def _donor(self, model: LoadedModel) -> nn.Module:
        unknown = set(self.donor) - {"name", "pretrained", "checkpoint", "weights"}
        if unknown:
            raise RepinvError(f"transplant donor settings {sorted(unknown)} are unknown; "
                              "a donor takes pretrained, checkpoint, weights and name.")
        name = self.donor.get("name") or model.arch
        if name != model.arch:
            raise RepinvError(
                f"transplant donor {name} is another architecture than the model ({model.arch}); parameters can only "
                f"be copied between two builds of {model.arch}. Leave donor.name unset or set it to {model.arch}."
            )
        if not _loads_weights(self.donor):
            raise RepinvError(
                "a transplant donor must be trained: set donor.pretrained=true (timm's weights), donor.checkpoint=FILE "
                "or, for torchvision, donor.weights; or leave donor unset to take the model's own configured weights."
            )
        # the donor's own loading settings only: the model's (a checkpoint next to donor.pretrained) would win
        spec = {**model.spec, **UNTRAINED, **{k: v for k, v in self.donor.items() if k != "name"}}
        try:
            donor = create_model(**spec)
        except RepinvError as err:
            raise RepinvError(f"the transplant donor ({model.arch}, {self.donor}) could not be built: {err}") from None
        if not donor.trained:
            raise RepinvError(
                f"the transplant donor ({model.arch}, {self.donor}) was built without trained weights: the model source "
                f"{model.source.name} loaded none from these settings. Give the donor the settings that load trained "
                "weights in that source (pretrained=true for timm, weights=ENUM for torchvision, or checkpoint=FILE)."
            )
        return donor.net

    def _keys(self, model: LoadedModel, own: dict[str, torch.Tensor], names: list[str]) -> list[str]:
        modules = dict(model.net.named_modules())
        keys = []
        for name in names:
            if name in own:
                keys.append(name)
            elif name in modules and name:
                inside = [k for k in own if k.startswith(name + ".")]
                if not inside:
                    raise RepinvError(
                        f"transplant name '{name}' is a module of {model.arch} ({_class_name(modules[name])}) that holds no "
                        "parameters or buffers, so there is nothing to copy; an earlier operation may have removed it "
                        "(no_layernorm makes every LayerNorm an Identity). Put the transplant first in surgery."
                    )
                keys += inside
            else:
                raise RepinvError(
                    f"transplant name '{name}' is neither a parameter nor a module of {model.arch}."
                    f"{suggest(name, list(own) + list(modules))} "
                    f"It has {listing(_top_names(model.net), 30)} (any name from named_modules() or named_parameters())."
                )
        return keys

    def __call__(self, model: LoadedModel) -> LoadedModel:
        names = self._names(model)
        own = {**dict(model.net.named_parameters()), **dict(model.net.named_buffers())}
        keys = self._keys(model, own, names)
        if self.donor is None and has_stem(model):
            raise RepinvError(
                f"transplant of {names} without a donor comes after a stem in surgery ({', '.join(model.surgery)}), "
                "which makes the model count as untrained whatever its ViT holds, so the transplant cannot tell which "
                "weights to keep. Put the transplant before the stem (surgery=[trained_patch_embed,resnet_stem]), or "
                "give it a donor (donor={checkpoint: FILE})."
            )
        if self.donor is not None:
            source = self._donor(model)
        elif model.trained:
            untrained = {**model.spec, "pretrained": False, "checkpoint": None, "weights": None}
            source, keys = create_model(**untrained).net, [k for k in own if k not in keys]
            model = replace(model, trained=False)
        elif _loads_weights(model.spec):  # an earlier operation made it untrained: its configured weights are the donor
            source = create_model(**model.spec).net
        else:
            warnings.warn(f"transplant of {names} into a model configured without trained weights and without a donor "
                          "changes nothing; set model.pretrained=true, model.weights=ENUM or model.checkpoint=FILE for the "
                          "trained weights, or give the transplant a donor")
            return model
        theirs = {**dict(source.named_parameters()), **dict(source.named_buffers())}
        with torch.no_grad():
            for key in keys:
                if key not in theirs or theirs[key].shape != own[key].shape:
                    shape = tuple(theirs[key].shape) if key in theirs else "nothing"
                    raise RepinvError(
                        f"transplant of {key}: the source holds {shape} where the model has {tuple(own[key].shape)}. "
                        "Donor and model must be built with the same timm kwargs (patch size, width, image size)."
                    )
                own[key].copy_(theirs[key])
        return replace(model, trained_parts=True)


def _set_module(net: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, child, new)


def _class_name(m: nn.Module) -> str:
    """The class name a user knows: repinv's faster drop-ins (PatchConv2d, PackedLinear) answer to their base's."""
    return next(c.__name__ for c in type(m).__mro__ if not c.__module__.startswith("repinv."))


class Remove(Operation):
    """Replace every module whose class name or path matches `pattern` (shell-style, e.g. LayerNorm,
    blocks.*.norm1) with identity.

    A path pattern that matches nothing as written is read as a neutral name (blocks.*.norm1) in
    the model source's spelling (torchvision's encoder.layers.encoder_layer_*.ln_1).
    """

    def __init__(self, pattern: str):
        self.pattern = str(pattern)

    def _matches(self, net: nn.Module, pattern: str) -> list[str]:
        return [
            path for path, m in net.named_modules()
            if path and (fnmatch.fnmatchcase(_class_name(m), pattern) or fnmatch.fnmatchcase(path, pattern))
        ]

    def __call__(self, model: LoadedModel) -> LoadedModel:
        hits = self._matches(model.net, self.pattern) or self._matches(model.net, model.source.translate(self.pattern))
        # a match inside a module that is itself removed needs no replacing of its own
        hits = [p for p in hits if not any(p.startswith(q + ".") for q in hits)]
        if not hits:
            classes = sorted({_class_name(m) for m in model.net.modules()})
            raise RepinvError(
                f"remove pattern '{self.pattern}' matches no module of {model.arch}.{suggest(self.pattern, classes)} "
                f"Match a class name ({listing(classes, 30)}) or a module path such as {listing(_top_names(model.net), 12)}; "
                "* and ? work as in shell patterns."
            )
        for path in hits:
            _set_module(model.net, path, nn.Identity())
        return model


class Rebuild(Operation):
    """Build the model again with `kwargs` merged into its source's kwargs; must come before other operations. The
    source's input-size argument (timm's img_size, torchvision's image_size) sets the model's input size too."""

    def __init__(self, **kwargs: Any):
        if not kwargs:
            raise RepinvError("a rebuild needs the model source's kwargs, e.g. patch_size: 8 or depth: 4.")
        self.kwargs = kwargs

    def __call__(self, model: LoadedModel) -> LoadedModel:
        if model.surgery:
            raise RepinvError(f"a rebuild (kwargs {self.kwargs}) builds a new model and would undo {model.surgery}; "
                              "list it first in surgery.")
        spec = {**model.spec, "kwargs": {**model.spec.get("kwargs", {}), **self.kwargs}}
        size = model.source.size_kwarg
        if size in self.kwargs:
            spec["input_size"] = self.kwargs[size]
        return create_model(**spec)


class Stem(Operation):
    """A donor's first `layers` in front of a ViT: their first `channels` maps replace the image.

    `donor` holds create_model's arguments (name, source, pretrained, checkpoint, weights,
    kwargs); it is built at the model's input size and seed. The donor's `layers` (module paths,
    run in order) become the frozen module `stem`, whose `stem.maps` are their first `channels`
    maps; these are resized bilinearly to the ViT's input size, so the ViT runs as configured
    (ResNet50's 112x112 conv1 maps feed ViT-B/32's 7x7 patch grid, each 32x32 patch covering
    16x16 of the map). The image is normalised the
    donor's way, since the donor sees it first. Layer index 0 becomes the stem's output and
    index k the k-th encoder; module paths keep their names (stem.conv1, patch_embed, blocks.0).
    """

    DONOR_KEYS = {"name", "source", "pretrained", "checkpoint", "weights", "kwargs", "mean", "std"}

    def __init__(self, donor: Mapping[str, Any], layers: list[str] | str = "conv1", channels: int = 3):
        self.donor = dict(donor or {})
        self.layers = [layers] if isinstance(layers, str) else [str(n) for n in layers]
        self.channels = int(channels)
        unknown = set(self.donor) - self.DONOR_KEYS
        if unknown or not self.donor.get("name"):
            raise RepinvError(
                f"stem donor {self.donor} needs a model name and takes only {sorted(self.DONOR_KEYS)}"
                f"{f'; {sorted(unknown)} are unknown' if unknown else ''}, e.g. donor: {{name: resnet50, pretrained: true}}."
            )
        if not self.layers or self.channels < 1:
            raise RepinvError(f"a stem needs donor layers and at least one channel (layers={self.layers}, "
                              f"channels={self.channels}), e.g. layers: [conv1], channels: 3.")

    def _build_donor(self, model: LoadedModel) -> LoadedModel:
        spec = {"input_size": model.input_size, "seed": model.spec.get("seed", 0),
                "cpu_kernels": model.spec.get("cpu_kernels", "packed"), **self.donor}
        try:
            return create_model(**spec)
        except RepinvError as err:
            raise RepinvError(f"the stem donor {self.donor} could not be built: {err}") from None

    def _stem(self, model: LoadedModel, donor: LoadedModel) -> StemLayers:
        modules = dict(donor.net.named_modules())
        for path in self.layers:
            if not path or path not in modules:
                raise RepinvError(
                    f"stem layer '{path}' is not a module of the donor {donor.arch}.{suggest(path, [m for m in modules if m])} "
                    f"It has {listing(_top_names(donor.net), 30)}; the study's stem is layers: [conv1]."
                )
        try:
            with torch.no_grad():
                out = torch.zeros(1, 3, *model.input_size)
                for path in self.layers:
                    out = modules[path](out)
        except RuntimeError as err:
            raise RepinvError(f"stem layers {self.layers} of {donor.arch} do not run in that order on an image: "
                              f"{str(err).splitlines()[0]}") from None
        if out.ndim != 4 or out.shape[1] < self.channels:
            have = f"{out.shape[1]} channels" if out.ndim == 4 else f"a {out.ndim}-D output"
            raise RepinvError(
                f"stem channels={self.channels} but {donor.arch}'s {self.layers[-1]} gives {have}; "
                f"pick channels from 1 to {out.shape[1] if out.ndim == 4 else 'its channel count'} (the study keeps 3)."
            )
        return StemLayers({p: modules[p] for p in self.layers}, self.channels, model.input_size)

    def __call__(self, model: LoadedModel) -> LoadedModel:
        stemmed = model.source.stem_classes.get(type(model.net))
        if stemmed is None:
            already = " already has a stem" if has_stem(model) else f" is a {type(model.net).__name__}"
            raise RepinvError(
                f"a stem goes in front of a ViT's encoder stack, but {model.arch}{already}. Use it on a timm or "
                "torchvision VisionTransformer (model=vit_b_32, tv_vit_b_32, vit_tiny), once."
            )
        donor = self._build_donor(model)
        net = put_stem_first(model.net, self._stem(model, donor), stemmed)
        return replace(model, net=net, mean=donor.mean, std=donor.std, trained=model.trained and donor.trained,
                       trained_parts=model.trained_parts or donor.trained)


def has_stem(model: LoadedModel) -> bool:
    """Whether a `Stem` runs in front of the model's network."""
    return type(model.net) in model.source.stem_classes.values()


def apply_surgery(model: LoadedModel, operations: Mapping[str, Operation]) -> LoadedModel:
    """Apply `operations` (name -> Operation) in order; every name is recorded in `model.surgery`."""
    for name, op in operations.items():
        if not isinstance(op, Operation):
            raise RepinvError(
                f"surgery.{name} is not a surgery operation ({type(op).__name__}); give a preset (surgery=no_layernorm) "
                "or an operation with _target_ repinv.models.surgery.Transplant, Remove, Rebuild or Stem."
            )
        result = op(model)
        model = replace(result, net=freeze(result.net), surgery=[*model.surgery, str(name)])
    return model
