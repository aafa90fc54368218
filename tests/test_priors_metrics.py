"""Priors and metrics from config alone: a prior or metric defined here takes effect through overrides."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from conftest import TINY, compose_cfg, read_metrics
from repinv.engine.pipeline import run
from repinv.errors import RepinvError
from repinv.priors import Prior

SHORT = ["steps=6", "log_every=2", "logger=csv", "priors=none"]


def red_mean(image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """A toy metric: the mean of the red channel."""
    return image[:, 0].float().mean(dim=(1, 2))


class ZeroChannel(Prior):
    """A toy prior: one channel set to 0 after every step."""

    def __init__(self, channel: int = 0):
        self.channel = channel

    def update(self, img: torch.Tensor, step: int, total: int) -> None:
        img[:, self.channel] = 0


class Shift(Prior):
    """A toy prior that does not commute with ZeroChannel: every pixel raised by `amount` after every step."""

    def __init__(self, amount: float = 0.25):
        self.amount = amount

    def update(self, img: torch.Tensor, step: int, total: int) -> None:
        img.add_(self.amount)


class Darken(Prior):
    """A toy penalty: `weight` times each target's mean brightness."""

    def __init__(self, weight: float = 10.0):
        self.weight = weight

    def penalty(self, view: torch.Tensor, step: int) -> torch.Tensor:
        return self.weight * view.mean(dim=(1, 2, 3))


def prior(name: str, cls: str, **kw) -> list[str]:
    return [f"+priors.{name}._target_=test_priors_metrics.{cls}", *(f"+priors.{name}.{k}={v}" for k, v in kw.items())]


def test_a_prior_and_a_metric_from_this_file_take_effect_by_config_alone(run_repinv):
    _, out = run_repinv(*SHORT, *prior("zero", "ZeroChannel", channel=0),
                             "+metrics.red._target_=test_priors_metrics.red_mean", "+metrics.red._partial_=true",
                             "metrics.ssim=null")
    records = read_metrics(out)
    assert all(r["red"] == 0 and "psnr" in r and "ssim" not in r for r in records)
    with open(out / "csv" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get(f"red/{records[0]['image']}/{records[0]['layer']}")]
    key = f"red/{records[0]['image']}/{records[0]['layer']}"
    assert float(rows[0][key]) > 0.5 and float(rows[-1][key]) == 0  # noise at step 0, zeroed after
    assert "blur_sigma" not in rows[0]


def final_images(out: Path, *overrides: str) -> torch.Tensor:
    """The final reconstructions [targets, 3, H, W] of a short run on the tiny ViT."""
    return run(compose_cfg([*TINY, *SHORT, "logger=none", *overrides], out)).images


@pytest.mark.parametrize("order,red", [(("zero", "shift"), 0.25), (("shift", "zero"), 0.0)])
def test_priors_apply_in_config_order(order, red, tmp_path):
    entries = {"zero": prior("zero", "ZeroChannel"), "shift": prior("shift", "Shift", amount=0.25)}
    images = final_images(tmp_path, *entries[order[0]], *entries[order[1]])
    assert torch.allclose(images[:, 0], torch.full_like(images[:, 0], red))


def test_a_prior_penalty_is_optimised(tmp_path):
    plain = final_images(tmp_path / "plain")
    darker = final_images(tmp_path / "darker", *prior("dark", "Darken", weight=1000.0))
    assert (darker.mean(dim=(1, 2, 3)) < plain.mean(dim=(1, 2, 3)) - 0.1).all()


def test_a_config_entry_that_is_not_a_prior_says_what_an_entry_is(run_repinv):
    with pytest.raises(RepinvError, match="each entry of priors is a mapping with a _target_"):
        run_repinv(*SHORT, "+priors.sharpen=3")
