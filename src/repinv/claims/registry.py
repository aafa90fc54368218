"""The study's claims: what each says, its figure, the runs it needs (repinv overrides) and its rule.

A claim names its runs as conditions ("vit", "no_layernorm", ...), each an architecture from
ARCHS plus extra overrides; the architecture gives the overrides per budget (the study's model
and layers, or a tiny stand-in for the quick budget). Claims that differ between model
libraries are registered once per source (ids of the torchvision ones end in `-tv`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial

from repinv.claims import rules
from repinv.claims.rules import Measurements, Verdict

SOURCES = ("timm", "torchvision")

# (architecture, source) -> budget -> overrides: the model and the layers a run inverts.
ARCHS: dict[tuple[str, str], dict[str, list[str]]] = {
    ("vit_b_32", "timm"): {"study": ["model=vit_b_32", f"layers=[patch_embed,{','.join(map(str, range(12)))}]"],
                           "cpu": ["model=vit_b_32", "layers=[patch_embed,0,2,5,8,11]"],
                           "quick": ["model=vit_tiny", "layers=[patch_embed,0,1]"]},
    ("vit_b_32", "torchvision"): {"study": ["model=tv_vit_b_32", f"layers=[conv_proj,{','.join(map(str, range(12)))}]"],
                                  "quick": ["model=tv_vit_tiny", "layers=[conv_proj,0,1]"]},
    ("resnet50", "timm"): {"study": ["model=resnet50", "layers=[0,1,2,3,4]"], "cpu": ["model=resnet50", "layers=[0,1,2,3,4]"],
                           "quick": ["model=resnet_tiny", "layers=[0,1,2,3,4]"]},
    ("resnet50", "torchvision"): {"study": ["model=tv_resnet50", "layers=[0,1,2,3,4]"],
                                  "quick": ["model=tv_resnet50", "model.input_size=64", "layers=[0,1,2,3,4]"]},
    ("mixer_l16", "timm"): {"study": ["model=mixer_l16", "layers=[0,1,4,8]"], "cpu": ["model=mixer_l16", "layers=[0,1,4]"],
                            "quick": ["model=mixer_tiny", "layers=[0,1]"]},
    ("mixer_b8", "timm"): {"study": ["model=mixer_b8", "layers=[0,1,4,8]"],
                           "quick": ["model=mixer_tiny", "model.kwargs.patch_size=8", "layers=[0,1]"]},
    ("vit_l_16", "timm"): {"study": ["model=vit_l_16", "layers=[0,4,8,16,23]", "objective.stack=false"],
                           "quick": ["model=vit_tiny", "layers=[0,1]"]},
    ("vit_l_16", "torchvision"): {"study": ["model=tv_vit_l_16", "layers=[0,4,8,16,23]", "objective.stack=false"],
                                  "quick": ["model=tv_vit_tiny", "layers=[0,11]"]},
    ("vit_l_16_input", "timm"): {"study": ["model=vit_l_16", "layers=[patch_embed]"], "cpu": ["model=vit_l_16", "layers=[patch_embed]"],
                                 "quick": ["model=vit_tiny", "layers=[patch_embed]"]},
    ("vit_l_16_input", "torchvision"): {"study": ["model=tv_vit_l_16", "layers=[conv_proj]"],
                                        "quick": ["model=tv_vit_tiny", "layers=[conv_proj]"]},
    # A ResNet50 conv1 stem in front: index 0 is the stem's output, index k the k-th encoder.
    ("vit_b_32_stem", "timm"): {"study": ["model=vit_b_32", "surgery=resnet_stem", f"layers=[{','.join(map(str, range(13)))}]"],
                                "quick": ["model=vit_tiny", "surgery=resnet_stem", "layers=[0,1,2]"]},
    ("vit_b_32_stem", "torchvision"): {"study": ["model=tv_vit_b_32", "surgery=resnet_stem", f"layers=[{','.join(map(str, range(13)))}]"],
                                       "quick": ["model=tv_vit_tiny", "surgery=resnet_stem", "layers=[0,12]"]},
    ("vit_b_32_head", "timm"): {"study": ["model=vit_b_32"], "quick": ["model=vit_tiny"]},
    ("vit_b_32_head", "torchvision"): {"study": ["model=tv_vit_b_32"], "quick": ["model=tv_vit_tiny"]},
}
CLASSES = "classes=[tabby,golden_retriever,goldfish,great_white_shark,alp,volcano,lakeside,seashore]"


@dataclass(frozen=True)
class Run:
    """One condition of a claim: an architecture, extra overrides, and whether it needs trained weights."""

    arch: str
    extra: tuple[str, ...] = ()
    trained: bool = False


@dataclass(frozen=True)
class Claim:
    """A checkable statement of the study and how it is checked."""

    id: str
    text: str
    figure: str
    source: str
    runs: Mapping[str, Run]
    rule: Callable[[Measurements], Verdict]
    sensitivity: bool = False  # also judged under the constant-lr and no-normalisation recipes
    plot: bool = False  # a claim about depth: PSNR against depth is drawn next to the ledger

    @property
    def trained(self) -> bool:
        return any(run.trained for run in self.runs.values())

    def fits(self, budget: str) -> bool:
        """Whether every condition's architecture has runs at `budget` (the CPU budget leaves the largest out)."""
        return all(budget in ARCHS[(run.arch, self.source)] for run in self.runs.values())

    def overrides(self, name: str, budget: str) -> list[str]:
        """The repinv overrides of condition `name` at `budget` (without seed, images or recipe)."""
        run = self.runs[name]
        return [*ARCHS[(run.arch, self.source)][budget], *run.extra]


UNTRAINED_VIT = Run("vit_b_32")
TRAINED_VIT = Run("vit_b_32", trained=True)


def _per_source(id: str, text: str, figure: str, runs: Mapping[str, Run], rule, sources=SOURCES, **kw) -> list[Claim]:
    """The claim once per model source (torchvision ids end in -tv)."""
    return [Claim(id if s == "timm" else f"{id}-tv", text, figure, s, runs, rule, **kw) for s in sources]


def build() -> list[Claim]:
    """Every claim of the study that repinv can check, in the study's order."""
    return [
        *_per_source("vit-untrained-keeps-input", "An untrained ViT-B/32 keeps its input at every depth (patch embedding, encoders 1-12)",
                     "vit_vs_resnet_untrained_representations", {"vit": UNTRAINED_VIT}, partial(rules.keeps_input, cond="vit"),
                     sensitivity=True, plot=True),
        *_per_source("resnet-untrained-loses-input", "An untrained ResNet50 loses its input with depth (stem to last stage)",
                     "vit_vs_resnet_untrained_representations", {"resnet": Run("resnet50")}, partial(rules.loses_input, cond="resnet"),
                     sensitivity=True, plot=True),
        *_per_source("vit-entry-untrained", "Untrained ViT-B/32: the first encoder keeps what the patch embedding keeps",
                     "vit_entry_representations", {"vit": UNTRAINED_VIT}, partial(rules.as_good, a="vit", b="vit", layer_a="L0", layer_b="first")),
        *_per_source("vit-entry-trained", "Trained ViT-B/32: the first encoder loses input that the patch embedding keeps",
                     "vit_entry_representations", {"vit": TRAINED_VIT}, partial(rules.better, a="vit", b="vit", layer_a="first", layer_b="L0")),
        *_per_source("mixer-layernorm", "An untrained Mixer (L/16) reconstructs far better without LayerNorm",
                     "mlp_mixer_representations", {"layernorm": Run("mixer_l16"), "no_layernorm": Run("mixer_l16", ("surgery=no_layernorm",))},
                     partial(rules.better, a="no_layernorm", b="layernorm"), sources=("timm",), sensitivity=True, plot=True),
        *_per_source("mixer-patch8", "An untrained Mixer with patch 8 (B/8) reconstructs better than with patch 16 (L/16)",
                     "mlp_mixer_representations", {"patch8": Run("mixer_b8"), "patch16": Run("mixer_l16")},
                     partial(rules.better, a="patch8", b="patch16"), sources=("timm",), plot=True),
        *_per_source("filters-untrained-unstructured", "Untrained ViT-B/32 patch-embedding filters are unstructured",
                     "vit_b_32_conv_representations", {"vit": UNTRAINED_VIT}, partial(rules.unstructured_filters, cond="vit")),
        *_per_source("filters-trained-structured", "Trained ViT-B/32 patch-embedding filters are structured",
                     "vit_b_32_conv_representations", {"vit": TRAINED_VIT}, partial(rules.structured_filters, cond="vit")),
        *_per_source("vit-trained-loses-input", "A trained ViT-B/32 loses its input with depth",
                     "vit_representations", {"vit": TRAINED_VIT}, partial(rules.loses_input, cond="vit"), plot=True),
        *_per_source("trained-input-needs-more-steps",
                     "Trained input processing with untrained encoders reconstructs far worse than an untrained ViT at the study's steps (it needs far more)",
                     "vit_trainedinput_untrained",
                     {"untrained": UNTRAINED_VIT, "transplant": Run("vit_b_32", ("surgery=trained_input_untrained_encoders",), True)},
                     partial(rules.better, a="untrained", b="transplant"), plot=True),
        *_per_source("trained-norm1", "The trained first LayerNorm in an untrained ViT-B/32 makes it lose its input",
                     "vitb32_encoder1_ln", {"untrained": UNTRAINED_VIT, "norm1": Run("vit_b_32", ("surgery=trained_norm1",), True)},
                     partial(rules.better, a="untrained", b="norm1"), plot=True),
        *_per_source("trained-pos-embed", "The trained positional embedding alone leaves an untrained ViT-B/32's reconstructions as good",
                     "vitb32_encoder1_ln", {"untrained": UNTRAINED_VIT, "pos_embed": Run("vit_b_32", ("surgery=trained_pos_embed",), True)},
                     partial(rules.as_good, a="pos_embed", b="untrained")),
        *_per_source("resnet-stem-vit", "Trained ViT-B/32 encoders fed by ResNet50 conv1 keep the input better than the trained ViT-B/32 (last encoder)",
                     "resnet_conv1_vit", {"stem": Run("vit_b_32_stem", trained=True), "vit": TRAINED_VIT},
                     partial(rules.better, a="stem", b="vit", layer_a="last", layer_b="last")),
        *_per_source("vit-l16-trained-loses-input", "A trained ViT-L/16 at 512x512 loses its input with depth",
                     "vitl16_encoder_representations", {"vit": Run("vit_l_16", trained=True)}, partial(rules.loses_input, cond="vit"), plot=True),
        *_per_source("vit-l16-untrained-input-conv", "The untrained ViT-L/16 input convolution at 512x512 keeps its input",
                     "vitl16_encoder_representations", {"vit": Run("vit_l_16_input")}, partial(rules.keeps_input, cond="vit")),
        *_per_source("class-generation", "A trained ViT-B/32 generates images it classifies as the asked class (animals, landscapes)",
                     "vit_animals, vit_landscapes", {"gen": Run("vit_b_32_head", ("objective=class", CLASSES), True)},
                     partial(rules.generates_classes, cond="gen")),
    ]


CLAIMS = build()
