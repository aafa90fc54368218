"""Verdict rules: pure functions from measurements to a verdict, each threshold stated here.

`measurements` maps a condition name (a run of the claim: "vit", "no_layernorm", ...) to that
condition's records from every seed and image (metrics.json rows with `seed` added; filter runs
carry filters.json's `structured`). A rule averages over seeds and images (mean ± sd), and over
layers when it pairs two conditions layer by layer, and decides on the mean; it never looks at
how the numbers were produced.

Thresholds (the same for every budget and model, fixed before any run):
- KEEP_DB = 20 dB PSNR: a reconstruction at 20 dB is recognisably the photograph; the N(0.7, 1/20)
  noise the descent starts from scores about 10 dB against a photograph.
- GAP_DB = 3 dB: a factor of 2 in mean squared error, the smallest difference called "better",
  "worse" or "loses" (and the largest called "as good").
- Filters: untrained filters are "unstructured" when at most 10 % pass filters.json's
  structured test; "about half" structured is 50 % ± 20 %.
- Class generation works when the model ranks the asked class first in at least 50 % of images.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from repinv.metrics import PSNR
from repinv.objectives import PROB, RANK

KEEP_DB = 20.0
GAP_DB = 3.0
UNSTRUCTURED_MAX = 0.10
HALF, HALF_TOLERANCE = 0.50, 0.20
TOP1_MIN = 0.50

Measurements = Mapping[str, Sequence[Mapping]]


class Unmeasured(LookupError):
    """The runs finished but lack what the rule decides on (a run folder kept without its filters.json,
    two conditions with no seed and image in common)."""


@dataclass(frozen=True)
class Verdict:
    """What a rule decided, the numbers it decided on (mean ± sd) and the rule in words."""

    holds: bool
    measured: str
    rule: str


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    values = [float(v) for v in values]
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def fmt(values: Sequence[float], unit: str = " dB", *thresholds: float) -> str:
    """Mean ± sd to one decimal; to two where the mean rounds to a threshold its rule compares it with, so a verdict
    that holds by 0.01 does not read like one that fails by 0.01."""
    m, s = mean_sd(values)
    places = 2 if any(f"{m:.1f}" == f"{t:.1f}" for t in thresholds) else 1
    return f"{m:.{places}f} ± {s:.{places}f}{unit}"


def _sample(r: Mapping) -> tuple:
    return r.get("seed"), r.get("image")


def by_layer(records: Sequence[Mapping], field: str = PSNR) -> dict[str, list[float]]:
    """Values of `field` (PSNR by default) per layer, layers in the order the runs list them (their depth order)."""
    out: dict[str, list[float]] = {}
    for r in records:
        out.setdefault(str(r["layer"]), []).append(float(r[field]))
    return out


def _paired(a: Sequence[Mapping], b: Sequence[Mapping], key) -> list[float]:
    """a − b PSNR for every sample (key of a record) present in both."""
    right = {key(r): float(r[PSNR]) for r in b}
    return [float(r[PSNR]) - right[key(r)] for r in a if key(r) in right]


def _first_last(records: Sequence[Mapping]) -> tuple[str, str, list[float]]:
    """First and last layer and last − first PSNR for each (seed, image)."""
    layers = list(by_layer(records))
    first, last = layers[0], layers[-1]
    at = lambda name: [r for r in records if str(r["layer"]) == name]  # noqa: E731
    return first, last, _paired(at(last), at(first), _sample)


def keeps_input(m: Measurements, cond: str) -> Verdict:
    """Holds when the mean PSNR is ≥ KEEP_DB at every layer (each layer represents the input accurately)."""
    layers = by_layer(m[cond])
    worst = min(layers, key=lambda k: statistics.fmean(layers[k]))
    measured = f"lowest {worst} {fmt(layers[worst], ' dB', KEEP_DB)}"
    return Verdict(statistics.fmean(layers[worst]) >= KEEP_DB, measured, f"PSNR ≥ {KEEP_DB:g} dB at every layer")


def loses_input(m: Measurements, cond: str) -> Verdict:
    """Holds when the mean PSNR falls by ≥ GAP_DB from the first layer to the last."""
    first, last, change = _first_last(m[cond])
    layers = by_layer(m[cond])
    measured = f"{first} {fmt(layers[first])}, {last} {fmt(layers[last])}; {last} − {first} {fmt(change, ' dB', -GAP_DB)}"
    return Verdict(statistics.fmean(change) <= -GAP_DB, measured, f"{last} − {first} ≤ −{GAP_DB:g} dB")


def poor_and_declining(m: Measurements, cond: str) -> Verdict:
    """Holds when the first layer's mean PSNR is below KEEP_DB and the last is ≥ GAP_DB below the first."""
    first, last, change = _first_last(m[cond])
    at_first = by_layer(m[cond])[first]
    holds = statistics.fmean(at_first) < KEEP_DB and statistics.fmean(change) <= -GAP_DB
    return Verdict(holds, f"{first} {fmt(at_first, ' dB', KEEP_DB)}; {last} − {first} {fmt(change, ' dB', -GAP_DB)}",
                   f"{first} < {KEEP_DB:g} dB and {last} − {first} ≤ −{GAP_DB:g} dB")


def _select(m: Measurements, cond: str, layer: str | None) -> list[Mapping]:
    """The condition's records at `layer` (a name, or `first`/`last` in depth order; None: all)."""
    order = list(by_layer(m[cond]))
    layer = {"first": order[0], "last": order[-1]}.get(layer, layer)
    return [r for r in m[cond] if layer is None or str(r["layer"]) == layer]


def _difference(m: Measurements, a: str, b: str, layer_a: str | None, layer_b: str | None) -> tuple[str, list[float]]:
    """Paired PSNR differences a − b: per (seed, image) between two layers, else per (seed, image, layer)."""
    key = _sample if layer_a or layer_b else (lambda r: (*_sample(r), str(r["layer"])))
    diff = _paired(_select(m, a, layer_a), _select(m, b, layer_b), key)
    name = lambda c, layer: f"{c}{'@' + layer if layer else ''}"  # noqa: E731
    if not diff:
        raise Unmeasured(f"{name(a, layer_a)} and {name(b, layer_b)} have no seed and image measured in both")
    return f"{name(a, layer_a)} − {name(b, layer_b)}", diff


def better(m: Measurements, a: str, b: str, layer_a: str | None = None, layer_b: str | None = None) -> Verdict:
    """Holds when condition (or layer) `a` reconstructs ≥ GAP_DB better than `b` (mean paired PSNR difference)."""
    name, diff = _difference(m, a, b, layer_a, layer_b)
    return Verdict(statistics.fmean(diff) >= GAP_DB, f"{name} {fmt(diff, ' dB', GAP_DB)}", f"{name} ≥ {GAP_DB:g} dB")


def as_good(m: Measurements, a: str, b: str, layer_a: str | None = None, layer_b: str | None = None) -> Verdict:
    """Holds when `a` is within GAP_DB of `b` or better (mean paired PSNR difference ≥ −GAP_DB)."""
    name, diff = _difference(m, a, b, layer_a, layer_b)
    return Verdict(statistics.fmean(diff) >= -GAP_DB, f"{name} {fmt(diff, ' dB', -GAP_DB)}", f"{name} ≥ −{GAP_DB:g} dB")


def same(m: Measurements, a: str, b: str, layer_a: str | None = None, layer_b: str | None = None) -> Verdict:
    """Holds when `a` and `b` differ by less than GAP_DB either way (mean paired PSNR difference)."""
    name, diff = _difference(m, a, b, layer_a, layer_b)
    return Verdict(abs(statistics.fmean(diff)) < GAP_DB, f"{name} {fmt(diff, ' dB', GAP_DB, -GAP_DB)}",
                   f"|{name}| < {GAP_DB:g} dB")


def _structured(m: Measurements, cond: str) -> list[float]:
    """The structured fraction of the input filters of every record of `cond`: each seed's run must hold filters.json,
    or the verdict would rest on fewer seeds than the ledger says."""
    seeds = {str(r.get("seed")) for r in m[cond]}
    missing = sorted({str(r.get("seed")) for r in m[cond] if r.get("structured") is None})
    if len(missing) == len(seeds):
        raise Unmeasured(f"no run of {cond} holds filters.json (its input filters' structure)")
    if missing:
        raise Unmeasured(f"the run of {cond} for seed {', '.join(missing)} holds no filters.json (its input filters' "
                         "structure)")
    return [float(r["structured"]) for r in m[cond]]


def unstructured_filters(m: Measurements, cond: str) -> Verdict:
    """Holds when at most UNSTRUCTURED_MAX of the input filters are structured (mean over seeds)."""
    values = _structured(m, cond)
    return Verdict(statistics.fmean(values) <= UNSTRUCTURED_MAX, f"structured {fmt(values, '', UNSTRUCTURED_MAX)}",
                   f"structured fraction ≤ {UNSTRUCTURED_MAX:g}")


def about_half_structured(m: Measurements, cond: str) -> Verdict:
    """Holds when the structured fraction of the input filters is within HALF_TOLERANCE of one half (mean over seeds)."""
    values = _structured(m, cond)
    return Verdict(abs(statistics.fmean(values) - HALF) <= HALF_TOLERANCE,
                   f"structured {fmt(values, '', HALF - HALF_TOLERANCE, HALF + HALF_TOLERANCE)}",
                   f"|structured fraction − {HALF:g}| ≤ {HALF_TOLERANCE:g}")


def generates_classes(m: Measurements, cond: str) -> Verdict:
    """Holds when the model ranks the asked class first (rank 0) in ≥ TOP1_MIN of the generated images."""
    top1 = [1.0 if int(r[RANK]) == 0 else 0.0 for r in m[cond]]
    probs = [float(r[PROB]) for r in m[cond]]
    return Verdict(statistics.fmean(top1) >= TOP1_MIN, f"top-1 {statistics.fmean(top1):.2f}; prob {fmt(probs, '')}",
                   f"top-1 fraction ≥ {TOP1_MIN:g}")
