"""Why a layer cannot be inverted: its Jacobian's spectrum, the non-uniqueness of its inversions,
and both again with normalisation layers removed (`repinv-diagnose`)."""

from repinv.diagnostics.ablation import NORM_ABLATIONS, Variant, variants
from repinv.diagnostics.nonunique import pairwise, seed_inversions
from repinv.diagnostics.spectrum import LayerJacobian, SpectrumSettings, layer_function, spectrum

__all__ = ["NORM_ABLATIONS", "LayerJacobian", "SpectrumSettings", "Variant", "layer_function", "pairwise",
           "seed_inversions", "spectrum", "variants"]
