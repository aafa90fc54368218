"""Checks on the whole resolved config that need no knowledge of what each setting means."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from repinv.errors import RepinvError, SettingsError, is_whole, listing


def flatten(node, prefix: str = "") -> Iterator[tuple[str, object]]:
    """(dotted key, value) for every leaf of a plain nested dict; lists and empty dicts are leaves."""
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from flatten(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, node


def _numbers(value) -> Iterator[float]:
    if isinstance(value, float):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _numbers(item)


def resolved(cfg: DictConfig) -> dict:
    """The config as plain containers, every `${...}` resolved; one that does not resolve (an unknown key, an unset
    environment variable) is a SettingsError naming the setting."""
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except InterpolationResolutionError as err:
        raise SettingsError(
            f"{err.full_key}: its value does not resolve ({err.msg.splitlines()[0]}). Give it a value, or refer to a "
            "key that exists (e.g. steps=${{...}} needs that key) or an environment variable that is set "
            "(${{oc.env:NAME}}).",
            [err.full_key],
        ) from None


def check_finite(cfg: DictConfig) -> None:
    """Refuse NaN and infinity anywhere in the resolved config: no setting means anything with them,
    and a NaN sigma or rate silently turns the image into NaN (a run that ends with loss 0)."""
    bad = [(key, value) for key, value in flatten(resolved(cfg)) if any(not math.isfinite(x) for x in _numbers(value))]
    if bad:
        raise SettingsError(
            f"{listing(f'{key}={value}' for key, value in bad)}: settings must be finite numbers, not nan or inf. "
            "Give each a real value (e.g. priors.blur.sigma_start=2.4, optimizer.lr=0.05), or leave it at its "
            "default by dropping the override.",
            [key for key, _ in bad],
        )


def check_switches(cfg: DictConfig, names: Iterable[str]) -> None:
    """Refuse a switch (`names`: `compile`, `debug`) set to anything but true or false: `compile=abc` would count as
    true, and compile."""
    bad = [(name, cfg[name]) for name in names if name in cfg and not isinstance(cfg[name], bool)]
    if bad:
        raise SettingsError(
            f"{listing(f'{key}={value}' for key, value in bad)}: a switch is true or false, e.g. compile=true or "
            "debug=false.",
            [key for key, _ in bad],
        )


def check_loop_owned(trainer: DictConfig, owned: Iterable[str]) -> None:
    """Refuse a Trainer argument of `owned`: it would stop the run early (exit 0, results marked interrupted) or fail
    inside Lightning's optimisation after the run folder is written."""
    given = [k for k in owned if trainer.get(k) is not None]
    if given:
        raise SettingsError(
            f"trainer.{given[0]}={trainer[given[0]]}: the run takes `steps` steps, one optimiser step on the image each, "
            f"and Lightning's {given[0]} would stop it early or change its steps. Leave it out: set the length with "
            "steps=N, and the step with optimizer.* and priors.*.", [f"trainer.{given[0]}"])


def check_mirrors(cfg: DictConfig, mirrors: dict[str, str]) -> None:
    """Refuse a setting of `mirrors` (key -> the setting it is taken from) set apart from the one it mirrors."""
    for key, source in mirrors.items():
        value, meant = OmegaConf.select(cfg, key), OmegaConf.select(cfg, source)
        if value is not None and value != meant:
            raise SettingsError(
                f"{key}={value} differs from {source}={meant}, which it is taken from and which the run follows: "
                f"set {source}={value} instead, and leave {key} as it is.",
                [key],
            )


def check_steps(name: str, value, hint: str, zero: str | None = None) -> None:
    """A count of steps is a whole number, positive, or 0 where `zero` says what 0 means: a fraction would be cut
    by one part of the run and not by another (the Trainer would take one step more than the schedules)."""
    if not is_whole(value) or value < (0 if zero else 1):
        what = f"a whole number of steps, or 0 for {zero}" if zero else "a positive whole number of steps"
        raise RepinvError(f"{name}={value} must be {what}; {hint}")
