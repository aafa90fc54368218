"""Normalisation ablations: the model as configured, and variants with norm layers replaced by identity.

Each ablation kind maps a built network to named variants, each a `Remove` surgery operation
(as config, so the same variant is rebuilt for the inversions). `all`: every LayerNorm at once
(the study's Mixer without LayerNorm); `each`: one variant per normalisation module, one at a
time: a module whose own name (the last part of its path) contains "norm" or whose class is a
norm (LayerNorm, BatchNorm2d, GroupNorm, ...; torchvision names its LayerNorms ln_1, ln_2). Kinds that find
nothing in a model (a ResNet has no LayerNorm) give no variant.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from repinv.errors import RepinvError, suggest

REMOVE = "repinv.models.surgery.Remove"


@dataclass(frozen=True)
class Variant:
    """A named version of the model: `surgery` is one more surgery entry (None: as configured)."""

    name: str
    surgery: dict | None = None


AS_CONFIGURED = Variant("as_configured")


def _remove(name: str, pattern: str) -> Variant:
    return Variant(name, {"ablate_norm": {"_target_": REMOVE, "pattern": pattern}})


def _all_layernorms(net: nn.Module) -> list[Variant]:
    has = any(c.__name__ == "LayerNorm" for m in net.modules() for c in type(m).__mro__)
    return [_remove("no_layernorm", "LayerNorm")] if has else []


def _is_norm(path: str, module: nn.Module) -> bool:
    named = "norm" in path.rsplit(".", 1)[-1].lower()
    return (
        bool(path) and not isinstance(module, nn.Identity) and (named or any("Norm" in c.__name__ for c in type(module).__mro__))
    )


def _each_norm(net: nn.Module) -> list[Variant]:
    return [_remove(f"no_{path}", path) for path, m in net.named_modules() if _is_norm(path, m)]


NORM_ABLATIONS: dict[str, Callable[[nn.Module], list[Variant]]] = {"all": _all_layernorms, "each": _each_norm}


def check_ablations(kinds) -> list[str]:
    """The ablation kinds asked for, or a RepinvError naming the valid ones."""
    scalar = isinstance(kinds, (str, bool, int, float))  # one kind, or a value that names none (true, 1): refused below
    kinds = [] if kinds is None else [str(kinds)] if scalar else [str(k) for k in kinds]
    for kind in kinds:
        if kind not in NORM_ABLATIONS:
            raise RepinvError(
                f"diagnostics.norm_ablation={kind} is not a normalisation ablation.{suggest(kind, NORM_ABLATIONS)} "
                "Use a list of: all (every LayerNorm replaced by identity at once), each (every module whose name "
                "contains 'norm', one at a time), e.g. diagnostics.norm_ablation=[all,each], or [] for none."
            )
    return kinds


def variants(net: nn.Module, kinds: list[str]) -> list[Variant]:
    """The model as configured, then each ablation kind's variants (duplicates once)."""
    out = [AS_CONFIGURED]
    for kind in kinds:
        out += [v for v in NORM_ABLATIONS[kind](net) if v not in out]
    return out
