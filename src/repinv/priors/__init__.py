"""Image priors: each a `Prior`, applied by the step in the order given (see `Prior` for the hooks)."""

from repinv.priors.base import Prior
from repinv.priors.blur import GaussianBlur
from repinv.priors.jitter import Jitter
from repinv.priors.octaves import Octaves
from repinv.priors.penalties import AlphaNorm, L2Decay, Penalty, TotalVariation, alpha_norm, total_variation
from repinv.priors.transforms import ScaleRotate

__all__ = [
    "AlphaNorm", "GaussianBlur", "Jitter", "L2Decay", "Octaves", "Penalty", "Prior", "ScaleRotate", "TotalVariation",
    "alpha_norm", "total_variation",
]
