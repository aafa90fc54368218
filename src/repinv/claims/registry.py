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
    ("mixer_l16", "timm"): {"study": ["model=mixer_l16", "layers=[0,1,4,8]"], "cpu": ["model=mixer_l16", "layers=[0,2]"],
                            "quick": ["model=mixer_tiny", "layers=[0,1]"]},
    ("mixer_l8", "timm"): {"study": ["model=mixer_l8", "layers=[0,1,4,8]"], "cpu": ["model=mixer_l8", "layers=[0,2]"],
                           "quick": ["model=mixer_tiny", "model.kwargs.patch_size=8", "layers=[0,1]"]},
    ("vit_l_16", "timm"): {"study": ["model=vit_l_16", "layers=[0,3,7,11,15]", "objective.stack=false"],
                           "quick": ["model=vit_tiny", "layers=[0,1]"]},
    ("vit_l_16", "torchvision"): {"study": ["model=tv_vit_l_16", "layers=[0,3,7,11,15]", "objective.stack=false"],
                                  "quick": ["model=tv_vit_tiny", "layers=[0,11]"]},
    ("vit_l_16_input", "timm"): {"study": ["model=vit_l_16", "layers=[patch_embed]"],
                                 "cpu": ["model=vit_l_16", "layers=[patch_embed]"],
                                 "quick": ["model=vit_tiny", "layers=[patch_embed]"]},
    ("vit_l_16_input", "torchvision"): {"study": ["model=tv_vit_l_16", "layers=[conv_proj]"],
                                        "quick": ["model=tv_vit_tiny", "layers=[conv_proj]"]},
    # The 105,000-step panel: the last encoder only, far past a CPU's reach.
    ("vit_b_32_long", "timm"): {"study": ["model=vit_b_32", "layers=[11]", "steps=105000"],
                                "quick": ["model=vit_tiny", "layers=[1]", "steps=20"]},
    ("vit_b_32_long", "torchvision"): {"study": ["model=tv_vit_b_32", "layers=[11]", "steps=105000"],
                                       "quick": ["model=tv_vit_tiny", "layers=[1]", "steps=20"]},
    # ResNet50's conv1 restricted to its first three maps (3x112x112 = 37,632 outputs, the size of
    # ViT-B/32's patch embedding), read at the resnet_stem surgery's stem.maps, before their resize.
    ("resnet_conv1_3", "timm"): {"study": ["model=vit_b_32", "surgery=resnet_stem", "layers=[stem.maps]"],
                                 "cpu": ["model=vit_b_32", "surgery=resnet_stem", "layers=[stem.maps]"],
                                 "quick": ["model=vit_tiny", "surgery=resnet_stem", "layers=[stem.maps]"]},
    ("resnet_conv1_3", "torchvision"): {"study": ["model=tv_vit_b_32", "surgery=resnet_stem", "layers=[stem.maps]"],
                                        "quick": ["model=tv_vit_tiny", "surgery=resnet_stem", "layers=[stem.maps]"]},
    ("vit_b_32_head", "timm"): {"study": ["model=vit_b_32"], "cpu": ["model=vit_b_32"], "quick": ["model=vit_tiny"]},
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
    quote: str  # the study's own words that the claim checks
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
TRANSPLANT = Run("vit_b_32", ("surgery=trained_input_untrained_encoders",), True)
MIXER_L16 = Run("mixer_l16")


def _per_source(id: str, text: str, quote: str, figure: str, runs: Mapping[str, Run], rule, sources=SOURCES, **kw) -> list[Claim]:
    """The claim once per model source (torchvision ids end in -tv)."""
    return [Claim(id if s == "timm" else f"{id}-tv", text, quote, figure, s, runs, rule, **kw) for s in sources]


def study_claims() -> list[Claim]:
    """Every claim of the study that repinv can check, in the study's order, each with the words it checks."""
    return [
        *_per_source("class-generation",
                     "A trained ViT-B/32 generates images it classifies as the asked class (animals, landscapes)",
                     "recognizable images may be formed using only the information present in the vision transformer",
                     "vit_animals, vit_landscapes", {"gen": Run("vit_b_32_head", ("objective=class", CLASSES), True)},
                     partial(rules.generates_classes, cond="gen")),
        *_per_source("vit-untrained-constant-depth",
                     "Untrained ViT-B/32: the last encoder represents the input about as well as the first "
                     "(quality constant with depth)",
                     "even at the twelth and final encoder, the representation quality is approximately the same "
                     "as that in the first layer",
                     "vit_vs_resnet_untrained_representations", {"vit": UNTRAINED_VIT},
                     partial(rules.same, a="vit", b="vit", layer_a="last", layer_b="L0"), sensitivity=True, plot=True),
        *_per_source("resnet-untrained-loses-input",
                     "Untrained ResNet50: representation clarity decreases with depth (stem to last stage)",
                     "Compare the decreasing representation clarity with increased depth",
                     "vit_vs_resnet_untrained_representations", {"resnet": Run("resnet50")},
                     partial(rules.loses_input, cond="resnet"), sensitivity=True, plot=True),
        *_per_source("vit-first-below-resnet",
                     "Untrained: ViT-B/32's first encoder represents the input less accurately than ResNet50's first layer",
                     "the representation of the first layer of the vision transformer compared to the first layer "
                     "in ResNet50 [...] the former has a less accurate representation",
                     "vit_vs_resnet_untrained_representations",
                     {"resnet": Run("resnet50"), "vit": UNTRAINED_VIT},
                     partial(rules.better, a="resnet", b="vit", layer_a="first", layer_b="L0"), sensitivity=True),
        *_per_source("vit-entry-untrained",
                     "Untrained ViT-B/32: the first encoder keeps what the patch embedding keeps "
                     "(the input processing is what loses)",
                     "it is clear that the input processing itself is responsible for the decreased representation clarity",
                     "vit_entry_representations", {"vit": UNTRAINED_VIT},
                     partial(rules.as_good, a="vit", b="vit", layer_a="L0", layer_b="first")),
        *_per_source("vit-entry-trained",
                     "Trained ViT-B/32: the first encoder shows no significant decrease against the patch embedding",
                     "The trained encoder has no significant decrease in representation accuracy "
                     "compared to the input processing",
                     "vit_entry_representations", {"vit": TRAINED_VIT},
                     partial(rules.as_good, a="vit", b="vit", layer_a="L0", layer_b="first")),
        *_per_source("patch-embed-training",
                     "Training greatly enhances the patch embedding's representation (trained better than untrained)",
                     "training greatly enhances the processing convolutional layer's representation resolution",
                     "vit_entry_representations", {"trained": TRAINED_VIT, "untrained": UNTRAINED_VIT},
                     partial(rules.better, a="trained", b="untrained", layer_a="first", layer_b="first")),
        *_per_source("filters-untrained-unstructured",
                     "Untrained ViT-B/32 patch-embedding filters show no pattern: the wavelets come with training "
                     "(the figure's untrained panel; the text names only the effect of training)",
                     "It may be wondered if the same effect of training is observed for these strided convolutions",
                     "vit_b_32_conv_representations",
                     {"vit": UNTRAINED_VIT}, partial(rules.unstructured_filters, cond="vit")),
        *_per_source("filters-trained-half",
                     "Trained ViT-B/32 patch-embedding filters: wavelets in some, no pattern in about half",
                     "In some convolutions we do indeed see wavelets (of various frequencies too) but in other we see "
                     "something curious: no discernable pattern at all is visible in the weights of around half of the "
                     "input convolutional filters",
                     "vit_b_32_conv_representations", {"vit": TRAINED_VIT}, partial(rules.about_half_structured, cond="vit")),
        *_per_source("resnet-conv1-3-as-vit",
                     "Untrained ResNet50 conv1 restricted to its first three filters (37,632 outputs) represents the "
                     "input about as well as untrained ViT-B/32's patch embedding (the study's trained half is not "
                     "checked)",
                     "For trained and untrained ResNet models, this yields an input representation of approximately "
                     "the same resolution that is found using the first convolutional layer of ViT", "resnet_conv1_vit (text)",
                     {"conv1_3": Run("resnet_conv1_3"), "vit": UNTRAINED_VIT},
                     partial(rules.same, a="conv1_3", b="vit", layer_a="first", layer_b="first"), sensitivity=True),
        *_per_source("trained-input-falls-with-depth",
                     "Trained input convolution + untrained encoders: accuracy falls with depth at 1,500 steps",
                     "there is a decrease in representation accuracy as depth increases in the encoder stack "
                     "with fixed ($n=1,500$) iterations",
                     "vit_trainedinput_untrained", {"transplant": TRANSPLANT},
                     partial(rules.better, a="transplant", b="transplant", layer_a="L0", layer_b="last"), plot=True),
        *_per_source("trained-input-105k",
                     "Trained input convolution + untrained encoders: the last encoder at 105,000 steps beats the first at 1,500",
                     "increasing the number of iterations of the generation process to $n=105,000$ yields a representation "
                     "from the last encoder layer that is more accurate than that obtained with fewer iterations from the first",
                     "vit_trainedinput_untrained",
                     {"long": Run("vit_b_32_long", ("surgery=trained_input_untrained_encoders",), True),
                      "transplant": TRANSPLANT},
                     partial(rules.better, a="long", b="transplant", layer_a="last", layer_b="L0")),
        *_per_source("trained-pos-embed",
                     "The trained positional embedding in the transplanted ViT-B/32 makes no noticeable difference at "
                     "the first encoder",
                     "there is no noticeable difference in the representation quality", "vitb32_encoder1_ln",
                     {"transplant": TRANSPLANT,
                      "pos_embed": Run("vit_b_32", ("surgery=[trained_input_untrained_encoders,trained_pos_embed]",), True)},
                     partial(rules.same, a="pos_embed", b="transplant", layer_a="L0", layer_b="L0")),
        *_per_source("trained-norm1",
                     "The trained first LayerNorm in the transplanted ViT-B/32 increases the first encoder's "
                     "representation quality substantially",
                     "substituting the first layer norm (...) of the first encoder for a trained version is capable of "
                     "increasing the representational quality substantially", "vitb32_encoder1_ln",
                     {"transplant": TRANSPLANT,
                      "norm1": Run("vit_b_32", ("surgery=[trained_input_untrained_encoders,trained_norm1]",), True)},
                     partial(rules.better, a="norm1", b="transplant", layer_a="L0", layer_b="L0"), plot=True),
        *_per_source("vit-l16-first16", "A trained ViT-L/16 at 512x512 represents the input accurately in its first 16 encoders",
                     "we see that the first 16 encoder layers are capable of", "vitl16_encoder_representations",
                     {"vit": Run("vit_l_16", trained=True)}, partial(rules.keeps_input, cond="vit"), plot=True),
        *_per_source("vit-l16-untrained-input-conv",
                     "The untrained ViT-L/16 input convolution at 512x512 represents its input accurately",
                     "training is not necessary for accurate input representation for the procesing convolution of ViT L 16, "
                     "and indeed this is found to be the case", "vitl16_input_conv",
                     {"vit": Run("vit_l_16_input")}, partial(rules.keeps_input, cond="vit")),
        *_per_source("mixer-l16-untrained-poor",
                     "An untrained Mixer (patch 16, width 1024) is not accurate at its first block and declines with depth",
                     "the first encoder layer for the above model is not particularly accurate at autoencoding its input, "
                     "and the autencoding's accuracy declines the deeper the layer in question", "mlp_mixer_representations",
                     {"layernorm": MIXER_L16}, partial(rules.poor_and_declining, cond="layernorm"), sources=("timm",),
                     sensitivity=True, plot=True),
        *_per_source("mixer-patch8", "An untrained Mixer with patch 8 (L/8) reconstructs better than with patch 16 (L/16)",
                     "Specifying a smaller patch size of 8 (such that each layer contains >800k elements) "
                     "does reduce the representation error",
                     "mlp_mixer_representations", {"patch8": Run("mixer_l8"), "patch16": MIXER_L16},
                     partial(rules.better, a="patch8", b="patch16"), sources=("timm",), plot=True),
        *_per_source("mixer-layernorm", "An untrained Mixer (L/16) represents the input far better without LayerNorm",
                     "removing this transformation (from every MLP) [...] visually provides a large increase "
                     "in representation clarity",
                     "mlp_mixer_representations",
                     {"layernorm": MIXER_L16, "no_layernorm": Run("mixer_l16", ("surgery=no_layernorm",))},
                     partial(rules.better, a="no_layernorm", b="layernorm"), sources=("timm",), sensitivity=True, plot=True),
    ]


CLAIMS = study_claims()
