"""Metrics of a reconstruction against its reference image.

A metric is a plain function `(image [N, 3, H, W] in [0, 1] unclamped, reference [N, 3, H, W]) -> [N]`;
the `metrics` config group names the ones a run computes (name -> `_target_` with `_partial_: true`),
and each name is the record field that holds its value. Code outside this package reads a metric's
field through the names below, never by spelling it: renaming one here renames it for every reader.
"""

from repinv.errors import RepinvError
from repinv.metrics.pixel import input_l2, psnr, ssim

# the record fields of the default metrics (their keys in conf/metrics/default.yaml)
INPUT_L2, PSNR, SSIM = "input_l2", "psnr", "ssim"
HEADLINE = PSNR  # the study's measure of a reconstruction: pictures are captioned with it, when the run computes it
COMPARED = (HEADLINE, SSIM)  # the metrics sweep summaries and the recipe study plot and tabulate
FORMATS = {PSNR: "{:.1f} dB", SSIM: "SSIM {:.3f}"}
UNITS = {PSNR: "dB"}


def describe(name: str, value: float) -> str:
    """A record field as a caption: in its metric's own format, else `name value`."""
    return FORMATS[name].format(value) if name in FORMATS else f"{name} {value:.3g}"


def axis_label(name: str) -> str:
    """A metric as a plot axis names it: `PSNR (dB)`, `SSIM`."""
    return name.upper() + (f" ({UNITS[name]})" if name in UNITS else "")


def require(cfg, who: str, *names: str) -> None:
    """Refuse, before anything runs, a config that leaves out a metric (metrics.NAME=null) that `who` reads from
    every run's records: it would fail only once every run had been made."""
    dropped = [name for name in names if (cfg.get("metrics") or {}).get(name) is None]
    if dropped:
        off = " ".join(f"metrics.{name}=null" for name in dropped)
        raise RepinvError(f"{off}: every run's records must hold {', '.join(dropped)} for {who}. Keep it (leave another "
                          "metric out with metrics.NAME=null, or add one with +metrics.NAME._target_=...).")


__all__ = ["COMPARED", "FORMATS", "HEADLINE", "INPUT_L2", "PSNR", "SSIM", "UNITS", "axis_label", "describe", "input_l2", "psnr",
           "require", "ssim"]
