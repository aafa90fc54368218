"""Image parametrisations: what the optimiser steps (pixels, Fourier coefficients, pyramid levels).

Configs pick one by `_target_` (conf/param/); `build` does the same by name from Python.
"""

from __future__ import annotations

from collections.abc import Sequence

from repinv.errors import RepinvError, listing, suggest
from repinv.params.base import Parametrization
from repinv.params.fourier import Fourier
from repinv.params.pixel import Pixel
from repinv.params.pyramid import Pyramid

PARAMETRIZATIONS: dict[str, type[Parametrization]] = {"pixel": Pixel, "fourier": Fourier, "pyramid": Pyramid}


def build(name: str, shape: Sequence[int], **kwargs) -> Parametrization:
    """The parametrisation registered as `name` for an image batch of `shape`."""
    if name not in PARAMETRIZATIONS:
        raise RepinvError(
            f"Unknown image parametrisation {name!r}; choose one of {listing(PARAMETRIZATIONS)}."
            + suggest(name, PARAMETRIZATIONS)
        )
    return PARAMETRIZATIONS[name](shape, **kwargs)


__all__ = ["PARAMETRIZATIONS", "Fourier", "Parametrization", "Pixel", "Pyramid", "build"]
