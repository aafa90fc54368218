"""Every numeric setting of the parametrisations, priors and objectives at its extremes: a run either refuses
it (one paragraph naming the setting) or ends with finite metrics; never exit 0 with NaN or null numbers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from repinv.cli import CONFIG_DIR
from repinv.engine.validation import flatten
from repinv.errors import RepinvError

GROUPS = ("param", "priors", "objective")
EXTRA = {"objective=class": ["classes=[1]"]}
VALUES = ["0", "-1", "1e9", "nan"]
FAST = ["model=vit_tiny", "layers=[0]", "steps=3", "log_every=1", "logger=none", "checkpoint_every=0",
        "+trainer.enable_progress_bar=false"]


def _numeric(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def numeric_settings() -> list[tuple[str, str, int]]:
    """(group option, dotted key, list length or 0) for every number, or list of numbers, in every option of the
    groups; each key once, under the first option that has it."""
    GlobalHydra.instance().clear()
    out: dict[str, tuple[str, str, int]] = {}
    with initialize_config_module(config_module="repinv.conf", version_base="1.3"):
        for group in GROUPS:
            for option in sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml")):
                cfg = OmegaConf.to_container(compose("config", overrides=[f"{group}={option}"])[group])
                for key, value in flatten(cfg, group):
                    if _numeric(value) or isinstance(value, list) and value and all(map(_numeric, value)):
                        out.setdefault(key, (f"{group}={option}", key, len(value) if isinstance(value, list) else 0))
    GlobalHydra.instance().clear()
    return list(out.values())


CASES = [(option, key, length, value) for option, key, length in numeric_settings() for value in VALUES]


@pytest.mark.slow
@pytest.mark.parametrize("option,key,length,value", CASES, ids=[f"{o}-{k}={v}" for o, k, _, v in CASES])
def test_no_run_ends_with_nonfinite_numbers(option, key, length, value, tmp_path):
    import repinv

    setting = f"{key}=[{','.join([value] * length)}]" if length else f"{key}={value}"
    overrides = [*FAST, option, *EXTRA.get(option, []), setting, f"hydra.run.dir={tmp_path / 'run'}"]
    try:
        result = repinv.run(overrides)
    except RepinvError as err:
        message = str(err)
        assert key.rsplit(".", 1)[-1] in message and "do not compose" not in message and "\n" not in message, message
        return
    numbers = {k: v for r in result.records for k, v in r.items() if k not in ("image", "layer", "module", "column",
                                                                                     "caption", "status", "class_name")}
    bad = {k: v for k, v in numbers.items() if v is None or isinstance(v, float) and not math.isfinite(v)}
    assert not bad, (setting, bad)
