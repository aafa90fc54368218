"""Image parametrisations: what the optimiser steps (pixels, Fourier coefficients, pyramid levels).

Configs pick one by `_target_` (conf/param/), a class of this package or a Parametrization subclass of
your own; from Python, call the class with the image batch's shape (`Fourier((1, 3, 64, 64), decay=1.0)`).
"""

from repinv.params.base import Parametrization
from repinv.params.fourier import Fourier
from repinv.params.pixel import Pixel
from repinv.params.pyramid import Pyramid

__all__ = ["Fourier", "Parametrization", "Pixel", "Pyramid"]
