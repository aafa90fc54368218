"""The `repinv` command: a thin Hydra entry point over `repinv.pipeline.run`."""

from __future__ import annotations

import logging
import sys
import textwrap
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from repinv.errors import RepinvError
from repinv.pipeline import run

log = logging.getLogger("repinv")

# conf/ sits at the repository root (the project is installed editable, `pip install -e .`).
CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "conf")


def report(err: RepinvError, out_dir: str | None) -> None:
    """Print the user's error as one paragraph and keep it beside the run's other files."""
    text = textwrap.fill(f"repinv: error: {err}", width=100)
    print(text, file=sys.stderr)
    if out_dir:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "error.txt").write_text(str(err) + "\n")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig):
    """Run one job; bad input ends it with a one-paragraph error and exit code 2."""
    try:
        return run(cfg)
    except RepinvError as err:
        if cfg.get("debug"):
            raise
        report(err, HydraConfig.get().runtime.output_dir)
        sys.exit(2)


if __name__ == "__main__":
    main()
