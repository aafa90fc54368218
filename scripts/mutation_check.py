"""Mutation check: deliberate bugs in the study's definitions must each fail a fast test that names them.

    python scripts/mutation_check.py [--only NAME ...] [--jobs N] [--list]

Each entry of MUTATIONS is one deliberate bug: text substitutions in files of the package (paths under
src/repinv) and the fast tests expected to catch it. For each, the package is copied to a temporary folder,
the bug applied to the copy, and only its named tests run in a pytest process with PYTHONPATH pointing at the
copy (the installed package stays untouched), several at once. First the same tests run
on an unchanged copy: they must pass there, or a "caught" bug would mean nothing. A bug is caught when at
least one of its tests fails. Exit status 0 when every bug is caught.

Add a bug here when a definition of the study gains a test; keep `old` unique in its file.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "repinv"
DEFS, READS = "tests/test_definitions.py::", "tests/test_readouts.py::"


@dataclass(frozen=True)
class Mutation:
    """One deliberate bug: (file under src/repinv, old text, new text) edits, and the tests that must catch it."""

    name: str
    edits: tuple[tuple[str, str, str], ...]
    tests: tuple[str, ...]


MUTATIONS = [
    Mutation("noise-shift std 1/8 instead of the configured 1/18",
             (("objectives/layer.py", "torch.stack([noise_shift(seed, im) for im in images]) * self.noise_std",
               "torch.stack([noise_shift(seed, im) for im in images]) / 8"),),
             (DEFS + "test_noise_shift_baseline_is_the_output_distance_under_seeded_noise_of_std_1_18",)),
    Mutation("noise-shift std 1/8 in the objective's config",
             (("conf/objective/layer.yaml", "noise_std: 0.05555555555555555", "noise_std: 0.125"),),
             (DEFS + "test_study_config_fixes_the_blur_loss_noise_init_steps_and_lr",)),
    Mutation("blur schedule reversed (sigma 0.4 -> 2.4)",
             (("priors/blur.py", "linear(self.sigma_start, self.sigma_end, step, total)",
               "linear(self.sigma_end, self.sigma_start, step, total)"),),
             (DEFS + "test_blur_schedule_goes_linearly_from_2_4_to_0_4",
              DEFS + "test_blur_update_spreads_an_impulse_into_the_outer_product_of_the_steps_taps",
              DEFS + "test_study_config_fixes_the_blur_loss_noise_init_steps_and_lr")),
    Mutation("layer loss averaged instead of summed",
             (("objectives/layer.py", "return (o - t).abs().sum(1)", "return (o - t).abs().mean(1)"),),
             (DEFS + "test_l1_distance_is_the_sum_of_absolute_differences",
              DEFS + "test_layer_loss_is_0_15_times_the_summed_absolute_difference_per_target")),
    Mutation("layer loss without its 0.15 scale",
             (("objectives/layer.py", "return self.scale * loss, stats", "return loss, stats"),),
             (DEFS + "test_layer_loss_is_0_15_times_the_summed_absolute_difference_per_target",)),
    Mutation("Fourier colour decorrelation dropped in render and encode",
             (("params/fourier.py", 'return torch.einsum("cd,ndhw->nchw", self.color.to(channels.dtype), channels)',
               "return channels"),
              ("params/fourier.py", 'channels = torch.einsum("cd,ndhw->nchw", self.decorrelate, image.to(self.param.dtype))',
               "channels = image.to(self.param.dtype)")),
             (DEFS + "test_fourier_renders_a_dc_coefficient_as_a_flat_image_in_its_colour",)),
    Mutation("final metrics of a bf16 run through the bf16 network",
             (("engine/module.py",
               "        losses, stats = self.measuring.fp32(self.net, view)\n        if self.divergence.check(",
               "        with torch.autocast(device_type=view.device.type, dtype=torch.bfloat16,\n"
               "                            enabled=self.stepper.net is not self.net):\n"
               "            losses, stats = self.objective(self.stepper.net, self.normalize(view.float()))\n"
               "        if self.divergence.check("),),
             (READS + "test_bf16_run_reports_final_metrics_of_an_fp32_forward_of_its_final_image",)),
    Mutation("every claim's verdict inverted (holds <-> fails)",
             (("claims/ledger.py", 'return ("holds" if v.holds else "fails")', 'return ("fails" if v.holds else "holds")'),),
             (READS + "test_ledger_verdicts_and_measured_text_come_from_the_run_folders",)),
    Mutation("shared multi-layer pass without its per-target reordering",
             (("objectives/layer.py", "index if moved else None, torch.argsort(index) if moved else None", "None, None"),),
             (READS + "test_shared_pass_with_layers_out_of_depth_order_scores_each_target_against_its_own_layer_and_image",)),
    Mutation("init mean 0.5 instead of 0.7",
             (("conf/config.yaml", "  mean: 0.7", "  mean: 0.5"),),
             (DEFS + "test_study_config_fixes_the_blur_loss_noise_init_steps_and_lr",
              DEFS + "test_a_run_starts_from_the_configured_noise")),
    Mutation("jitter window one pixel short",
             (("priors/jitter.py", "torch.randint(0, self.pixels + 1,", "torch.randint(0, self.pixels,"),),
             (DEFS + "test_jitter_offsets_cover_0_to_pixels_inclusive_after_start",)),
]


def copy_package(root: Path, edits=()) -> Path:
    """src/repinv copied under `root`/src with `edits` applied; each edit's old text must occur exactly once."""
    target = root / "src" / "repinv"
    shutil.copytree(PACKAGE, target, ignore=shutil.ignore_patterns("__pycache__"))
    for rel, old, new in edits:
        path = target / rel
        text = path.read_text()
        if text.count(old) != 1:
            raise SystemExit(f"mutation_check: {rel} holds {text.count(old)} copies of {old!r}, not one; update MUTATIONS.")
        path.write_text(text.replace(old, new))
    return root / "src"


def run_tests(src: Path, tests: tuple[str, ...]) -> tuple[bool, str]:
    """Run `tests` against the package under `src` in a fresh pytest process; whether all passed, and the last lines
    of pytest's report. (A fresh process, not a fork: a fork of a process that has run torch or W&B can hang.)"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    where = subprocess.run([sys.executable, "-c", "import repinv; print(repinv.__file__)"],
                           env=env, capture_output=True, text=True)
    if not where.stdout.startswith(str(src)):
        found = where.stdout.strip() or where.stderr
        raise SystemExit(f"mutation_check: the tests would import repinv from {found}, not the copy")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", *tests],
                          cwd=REPO, env=env, capture_output=True, text=True)
    return proc.returncode == 0, "\n".join(proc.stdout.strip().splitlines()[-3:])


def check(mutations: list[Mutation], jobs: int = 1) -> dict[str, bool]:
    """Mutation name -> caught, checking `jobs` mutations at once; raises SystemExit when the named tests fail on the
    unchanged package."""
    tests = tuple(dict.fromkeys(t for m in mutations for t in m.tests))
    with tempfile.TemporaryDirectory(prefix="repinv-mutation-") as tmp:
        passed, report = run_tests(copy_package(Path(tmp) / "baseline"), tests)
        if not passed:
            raise SystemExit(f"mutation_check: the named tests fail on the unchanged package:\n{report}")
        print(f"baseline: {len(tests)} tests pass on the unchanged package", flush=True)
        start = time.perf_counter()
        with ThreadPoolExecutor(max(1, jobs)) as pool:
            results = list(pool.map(lambda k: run_tests(copy_package(Path(tmp) / str(k), mutations[k].edits),
                                                        mutations[k].tests), range(len(mutations))))
        for m, (passed, report) in zip(mutations, results):
            print(f"{'MISSED' if passed else 'caught'}: {m.name} ({report.splitlines()[-1] if report else ''})")
        print(f"mutations checked in {time.perf_counter() - start:.0f} s")
    return {m.name: not passed for m, (passed, _) in zip(mutations, results)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", default=None, help="names (or parts of names) of the mutations to check")
    parser.add_argument("--list", action="store_true", help="list the mutations and their tests, then exit")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="mutations checked at once (default: one per core)")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS if args.only is None or any(o in m.name for o in args.only)]
    if args.list:
        for m in chosen:
            print(f"{m.name}: {', '.join(t.rpartition('::')[2] for t in m.tests)}")
        return 0
    start = time.perf_counter()
    caught = check(chosen, args.jobs)
    print(f"{sum(caught.values())} of {len(caught)} mutations caught in {time.perf_counter() - start:.0f} s")
    return 0 if all(caught.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
