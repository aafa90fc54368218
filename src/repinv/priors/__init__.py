"""Image priors: each a `Prior`, applied by the step in the order given (see `Prior` for the hooks)."""

from repinv.priors.base import Prior
from repinv.priors.blur import GaussianBlur
from repinv.priors.jitter import Jitter
from repinv.priors.octaves import Octaves

__all__ = ["GaussianBlur", "Jitter", "Octaves", "Prior"]
