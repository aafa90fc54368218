"""repinv's configs (the Hydra config module `repinv.conf`) and the former spellings of their names.

The image priors' group was called `regularizer`; it is `priors`. Overrides and dotted keys that spell a
former name are spelled anew by `respell` and `respell_key` wherever overrides enter repinv (the commands,
`repinv.run`, the claims ledger) and wherever a saved run is compared (a checkpoint's identity on resume),
so `regularizer.blur.sigma_start=1` is `priors.blur.sigma_start=1`, and runs saved before keep resuming.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from importlib.resources import files

import yaml

ALIASES = {"regularizer": "priors"}  # former name -> name
# an override's prefix (+, ++ or ~) and its first key part, up to `.`, `=`, `@` or the end
_FIRST_KEY = re.compile(r"^(\+{0,2}|~)([A-Za-z_][A-Za-z0-9_]*)(?=[.=@]|$)")


def respell(override: str) -> str:
    """A Hydra override with a former group or key name spelled anew: `regularizer=none` -> `priors=none`,
    `+regularizer.tv._target_=...` -> `+priors.tv._target_=...`; any other override as it is."""
    found = _FIRST_KEY.match(override)
    if found is None or found.group(2) not in ALIASES:
        return override
    return found.group(1) + ALIASES[found.group(2)] + override[found.end():]


def respell_all(overrides: Iterable[str]) -> list[str]:
    """`respell` of each override, in order."""
    return [respell(str(o)) for o in overrides]


def override_key(override: str) -> str:
    """The config key an override sets, without Hydra's `+`, `++` or `~` prefix: `+priors.tv.weight=1` -> `priors.tv.weight`."""
    return str(override).partition("=")[0].lstrip("+~")


def respell_key(key: str) -> str:
    """A dotted config key with a former first part spelled anew: `regularizer.blur.sigma_start` -> `priors.blur.sigma_start`."""
    first, dot, rest = key.partition(".")
    return ALIASES.get(first, first) + dot + rest


# Groups without a `none` option whose option changes nothing of the run: what `group=null` most likely meant.
NEUTRAL = {"scheduler": ("constant", "a constant learning rate")}

# Settings the configs take from a top-level one (`trainer.max_steps: ${steps}`) that the run reads from the top-level
# one alone: set apart, the run and its config.yaml would disagree.
MIRRORS = {"trainer.max_steps": "steps", "objective.layers": "layers", "trainer.precision": "precision"}

# Trainer arguments that would end the run before `steps` or change what a step does with the image's gradient: the
# run's own loop decides both (one optimiser step per batch, `steps` batches).
LOOP_OWNED = ("max_epochs", "min_epochs", "min_steps", "max_time", "limit_train_batches", "overfit_batches",
              "accumulate_grad_batches", "gradient_clip_val", "gradient_clip_algorithm")


def group_options(group: str) -> list[str]:
    """The options of a config group of repinv's configs (`scheduler`, `hydra/launcher`); [] for a name that is none."""
    folder = files(__name__).joinpath(group)
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml")) \
        if folder.is_dir() else []


@functools.cache
def switches() -> tuple[str, ...]:
    """The top-level settings config.yaml sets to true or false (`compile`, `debug`): they take nothing else."""
    main = yaml.safe_load(files(__name__).joinpath("config.yaml").read_text())
    return tuple(key for key, value in main.items() if isinstance(value, bool))
