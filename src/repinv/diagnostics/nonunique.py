"""Non-uniqueness: do inversions from different starting noise reach the same image?

For an invertible layer every accurate inversion (output distance below the noise-shift
baseline) is the target photograph, so K of them from K seeds agree; for a projection they
agree only on what the layer keeps and differ wherever it is blind. The K inversions are
`repinv.engine.pipeline.run` with only the seed changed (the untrained weights keep the base seed),
so they use the configured recipe, regulariser included.
"""

from __future__ import annotations

import copy
import itertools
import math
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, open_dict

from repinv.engine.pipeline import run
from repinv.metrics import PSNR
from repinv.objectives import ACCURATE
from repinv.reporting.callbacks import last_checkpoint
from repinv.reporting.results import all_finished

PSNR_CAP = 100.0  # dB, for identical images (mean squared difference below 1e-10)
INVERSION_PSNR = f"inversion_{PSNR}"  # the inversions' mean PSNR to the target


def pairwise(images: torch.Tensor, accurate: list[bool]) -> dict:
    """Mean pairwise PSNR (dB, data range 1, capped at 100) and input-space L2 of K images [K, 3, H, W].

    The pairs are among the accurate images when at least two are, else among all;
    `nonunique_accurate` says how many of the K were accurate.
    """
    keep = [i for i, ok in enumerate(accurate) if ok]
    keep = keep if len(keep) >= 2 else list(range(len(images)))
    pairs = list(itertools.combinations(keep, 2))
    x = images.detach().double().clamp(0, 1)
    psnr = [min(PSNR_CAP, -10 * math.log10(max(float((x[i] - x[j]).pow(2).mean()), 1e-10))) for i, j in pairs]
    l2 = [float((x[i] - x[j]).norm()) for i, j in pairs]
    mean = lambda v: sum(v) / len(v) if v else math.nan  # noqa: E731
    return {"nonunique_psnr": mean(psnr), "nonunique_input_l2": mean(l2), "nonunique_pairs": len(pairs),
            "nonunique_accurate": sum(map(bool, accurate)), "nonunique_k": len(images)}


def inversion_quality(records: list[dict]) -> dict:
    """The mean PSNR to the target (`INVERSION_PSNR`) and the fraction accurate of several inversions' records of one target."""
    return {INVERSION_PSNR: sum(r[PSNR] for r in records) / len(records),
            "inversion_accurate": sum(bool(r[ACCURATE]) for r in records) / len(records)}


def seeded_config(cfg: DictConfig, seed: int, steps: int, out_dir: Path, surgery: dict | None = None,
                  resume: bool = False) -> DictConfig:
    """The run config for one inversion: `cfg` with another noise seed, the same weights, no loggers. With `resume`
    (a diagnosis continued), an unfinished inversion in `out_dir` continues from its checkpoint; one that finished or
    saved none starts afresh."""
    c = copy.deepcopy(cfg)
    with open_dict(c):
        c.model.seed = cfg.model.seed  # untrained weights stay those of the base seed
        c.seed, c.steps, c.output_dir = int(seed), int(steps), str(out_dir)
        c.resume = "last" if resume and last_checkpoint(out_dir).is_file() and not all_finished(out_dir) else None
        c.logger = {}
        c.surgery = {**(cfg.get("surgery") or {}), **(surgery or {})}
        c.pop("diagnostics", None)
    return c


def seed_inversions(cfg: DictConfig, seeds: list[int], steps: int, out_dir: Path, surgery: dict | None = None,
                    resume: bool = False) -> list[dict]:
    """Invert every (layer, image) of `cfg` once per seed (`seeded_config`); one record per target with the pairwise
    measures.

    Each record also carries the inversions' mean PSNR to the target and the fraction accurate
    (`inversion_quality`), and the wall time of one inversion per target (`inversion_seconds`).
    """
    results, seconds = [], []
    for s in seeds:
        t0 = time.perf_counter()
        results.append(run(seeded_config(cfg, s, steps, out_dir / f"seed{s}", surgery, resume)))
        seconds.append((time.perf_counter() - t0) / max(1, len(results[-1].records)))
    out = []
    for t, record in enumerate(results[0].records):
        runs = [r.records[t] for r in results]
        accurate = [bool(r[ACCURATE]) for r in runs]
        out.append({
            "layer": record["layer"], "image": record["image"],
            **pairwise(torch.stack([r.images[t] for r in results]), accurate),
            **inversion_quality(runs),
            "inversion_seconds": sum(seconds) / len(seconds),
        })
    return out
