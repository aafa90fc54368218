"""`repinv-claims`: check every claim of the study that can be checked, and write the ledger.

    repinv-claims --budget quick                 # tiny models, one image, 10 steps: a few minutes
    repinv-claims --budget study --jobs 2        # the study's models and 1,500 steps
    repinv-claims --budget study --pretrained    # also the trained-weight claims
    repinv-claims --budget study --report-only   # the ledger of the runs finished so far, making none
    repinv-claims --compare docs/study/cpu docs/study/cpu-astronaut   # ledgers side by side
"""

from __future__ import annotations

import argparse
import io
import math
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from contextlib import redirect_stderr
from pathlib import Path

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException, OverrideParseException

from repinv.api import CONFIG_MODULE, CONFIG_NAME, composition_error
from repinv.claims.compare import comparison
from repinv.claims.cost import plan_cost, write_plan
from repinv.claims.ledger import BUDGETS, PRECISION, execute, plan
from repinv.claims.registry import CLAIMS, Claim
from repinv.claims.report import judged, made_by, write
from repinv.cli import CONFIG_DIR
from repinv.conf import override_key, respell_all
from repinv.engine.pipeline import validate
from repinv.errors import RepinvError, listing, paragraph, suggest
from repinv.inputs.images import locate, resolved
from repinv.metrics import PSNR, require
from repinv.sources import Weights
from repinv.study import NOT_MADE, canonical, check_out, quote, value

EXAMPLE = "repinv-claims --budget quick logger=csv"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="repinv-claims", description="Does the study reproduce? Run each claim's inversions "
                                "and write claims.md and claims.csv with a verdict per claim.")
    p.add_argument("--budget", choices=sorted(BUDGETS), default="quick", help="study: the study's models and 1,500 steps; "
                   "cpu: the study's models and steps that fit a 2-core CPU (one image and seed, two recipes, fewer depths); "
                   "quick: tiny models, one image and 10 steps (a smoke check of the machinery, not of the study)")
    p.add_argument("--out", type=Path, help="ledger folder (default logs/claims/<budget>)")
    p.add_argument("--seeds", type=int, help="seeds per condition (default: the budget's; study 3, cpu 1)")
    p.add_argument("--image", action="append", help="photograph to invert (repeatable); default: embedded photographs")
    p.add_argument("--jobs", type=int, default=1, help="runs at once, each its own repinv process (default 1: "
                   "one after another in this process)")
    p.add_argument("--claims", help="comma-separated claim ids to check (default all; --list shows them)")
    p.add_argument("--sources", help="model sources to check (comma-separated; default: the budget's, cpu timm only)")
    p.add_argument("--lrs", type=learning_rate, nargs="*", help="constant learning rates of the sensitivity check (default: "
                   f"study {' '.join(map(str, BUDGETS['study'].lrs))}, quick {' '.join(map(str, BUDGETS['quick'].lrs))}; "
                   "none: the default recipe only)")
    p.add_argument("--steps", type=int, help="override the budget's steps")
    p.add_argument("--pretrained", action="store_true", help="trained runs load timm's pretrained weights, and "
                   "torchvision's IMAGENET1K_V1 unless --weights is given")
    p.add_argument("--checkpoint", action="append", default=[], metavar="[MODEL=]FILE",
                   help="trained weights file (model.checkpoint=); MODEL=FILE for one model config only, "
                   "e.g. vit_b_32=vit.safetensors")
    p.add_argument("--weights", help="torchvision weights enum for the trained torchvision runs (model.weights=), "
                   "e.g. IMAGENET1K_V1")
    p.add_argument("--list", action="store_true", help="list the claims and exit")
    p.add_argument("--compare", type=Path, nargs="+", metavar="LEDGER", help="print a markdown table of these ledger "
                   "folders' verdicts side by side (one column each) and exit; runs nothing")
    p.add_argument("--report-only", action="store_true", help="write the ledger from the runs that have finished and launch "
                   "nothing; the claims still waiting for runs are 'pending' (rerun without it to make them)")
    p.add_argument("--cost", action="store_true", help="count what the plan costs instead of running it: one 3-step run "
                   "per network counts a step's FLOPs; prints a table and writes cost.md and cost.json "
                   "in the ledger folder (the counting runs in its cost/)")
    p.add_argument("--peak", action="append", default=[], metavar="NAME=TFLOPS", type=peak,
                   help="with --cost, the least time the plan takes at this many TFLOP/s (repeatable), e.g. 'H200 fp32=67'")
    p.add_argument("overrides", nargs="*", help="extra repinv overrides for every run, e.g. logger=csv")
    return p


def learning_rate(text: str) -> float | None:
    """One --lrs value: a number, or `none` (None) for the default recipe only."""
    return None if text.strip().lower() == "none" else float(text)


def peak(text: str) -> tuple[str, float]:
    """One --peak: NAME=TFLOPS with a positive number."""
    name, _, value = text.rpartition("=")
    try:
        tflops = float(value)
    except ValueError:
        tflops = math.nan
    if not name or not (math.isfinite(tflops) and tflops > 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=TFLOPS with a positive number of TFLOP/s, e.g. 'H200 fp32=67'")
    return name, tflops


def model_configs() -> list[str]:
    """The model configs `model=` takes (conf/model/*.yaml)."""
    return sorted(p.stem for p in (Path(CONFIG_DIR) / "model").glob("*.yaml"))


def check_lrs(lrs: list[float | None] | None) -> list[float] | None:
    """--lrs as the constant learning rates to check ([] for `none`), or a RepinvError."""
    if lrs is None or lrs == [None]:
        return None if lrs is None else []
    if None in lrs:
        raise RepinvError(f"--lrs {' '.join(map(str, lrs))}: give positive learning rates, "
                          "or none alone for the default recipe only.")
    bad = [lr for lr in lrs if not (math.isfinite(lr) and lr > 0)]
    if bad:
        raise RepinvError(f"--lrs {' '.join(f'{lr:g}' for lr in bad)}: learning rates must be positive finite numbers, "
                          f"e.g. --lrs {' '.join(map(str, BUDGETS['study'].lrs))}, or --lrs none for the default recipe only.")
    return list(lrs)


def check_checkpoints(specs: list[str]) -> None:
    """Each --checkpoint is FILE or MODEL=FILE with a model config repinv has and a file that exists."""
    models = model_configs()
    for spec in specs:
        model, _, file = spec.partition("=") if "=" in spec else ("", "", spec)
        if model and model not in models:
            raise RepinvError(f"--checkpoint {spec}: {model!r} is not a model config.{suggest(model, models)} "
                              f"MODEL=FILE names one of {listing(models, 40)}; FILE alone applies to every trained run.")
        if not Path(file).expanduser().is_file():
            raise RepinvError(f"--checkpoint {spec}: {file} is not a file. Give the trained weights file "
                              "(e.g. vit_b_32=vit.safetensors).")


def check_images(entries: list[str]) -> None:
    """Each --image is an embedded photograph's name or an image file."""
    for entry in entries:
        try:
            locate(entry)
        except RepinvError as err:
            raise RepinvError(f"--image {entry}: {err}") from None


def check_runs(runs, extra: list[str], who: str = "the ledger's rules", needs: Sequence[str] = (PSNR,),
               example: str = EXAMPLE) -> None:
    """Every planned run's overrides must compose with repinv's config, hold values a run can start with (not seed=x)
    and keep the metrics `who` reads (`needs`), so an unknown key, option or bad value among the extra overrides is
    found before the first run, not run by run; `example` is the command the error shows."""
    groups = {p.name for p in Path(CONFIG_DIR).iterdir() if p.is_dir()}

    def shape(overrides) -> tuple:
        """What decides whether overrides compose: their keys, and the options chosen for config groups."""
        pairs = (o.partition("=")[::2] for o in respell_all(overrides))
        return tuple(sorted((k, v if override_key(k) in groups else None) for k, v in pairs))

    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            for run in {shape(r.overrides): r for r in runs}.values():
                try:
                    cfg = compose(CONFIG_NAME, overrides=[*respell_all(run.overrides), f"output_dir={quote(run.folder)}"])
                except (ConfigCompositionException, OverrideParseException) as err:
                    where = f" (in the run {' '.join(run.overrides)})" if extra else ""
                    raise RepinvError(f"{composition_error(err, list(extra) or list(run.overrides), example)}{where}") from None
                require(cfg, who, *needs)
                validate(cfg)
    finally:
        GlobalHydra.instance().clear()


def check(args, budget) -> None:
    """Every argument, before the first run: counts, steps, learning rates, images, the ledger folder, weights, overrides."""
    if args.seeds < 1 or args.jobs < 1:
        raise RepinvError(f"--seeds and --jobs must be at least 1 (got {args.seeds} and {args.jobs}).")
    if args.steps is not None and args.steps < 1:
        raise RepinvError(f"--steps {args.steps} must be at least 1 (the budget {budget.name} runs {budget.steps}); "
                          "leave it out for the budget's steps.")
    if args.peak and not args.cost:
        raise RepinvError(f"--peak {args.peak[0][0]}={args.peak[0][1]:g}: a peak rate gives the least time of a counted plan, "
                          "and only --cost counts one; add --cost, or leave --peak out to run the ledger.")
    args.lrs = check_lrs(args.lrs)
    check_images(args.image or [])
    check_out(args.out, "the ledger is a folder (claims.md, claims.csv, runs/)")
    check_checkpoints(args.checkpoint)


def select(ids: str | None, sources: str | None, default: Sequence[str]) -> list[Claim]:
    """The claims asked for, in the study's order (from the `default` sources unless --sources is given); unknown ids or
    sources, and a selection that names none (`--sources ,`, `--claims ''`), are an error."""
    known = {c.id: c for c in CLAIMS}
    wanted = list(default) if sources is None else [s.strip() for s in sources.split(",") if s.strip()]
    if not wanted:
        raise RepinvError(f"--sources {sources!r} names no model source; give a comma-separated list of timm, torchvision, "
                          f"or leave --sources out for the budget's ({','.join(default)}).")
    for s in wanted:
        if s not in {c.source for c in CLAIMS}:
            raise RepinvError(f"--sources {s!r} is not a model source; use a comma-separated list of timm, torchvision.")
    if ids is None:
        return [c for c in CLAIMS if c.source in wanted]
    names = [i.strip() for i in ids.split(",") if i.strip()]
    if not names:
        raise RepinvError(f"--claims {ids!r} names no claim; give comma-separated claim ids, or leave --claims out for "
                          f"all. The claims are: {listing(known, 40)}.")
    for name in names:
        if name not in known:
            raise RepinvError(f"--claims {name!r} is not a claim.{suggest(name, known)} The claims are: {listing(known, 40)}.")
        if known[name].source not in wanted:
            raise RepinvError(f"--claims {name} is checked on {known[name].source}'s models, which --sources leaves out "
                              f"({','.join(wanted)}); add --sources {','.join([*wanted, known[name].source])}, or leave the "
                              "claim out.")
    return [c for c in CLAIMS if c.id in names]


def refuse(err: RepinvError) -> int:
    """Print the one-paragraph error; exit status 2 (bad input)."""
    print(paragraph("repinv-claims", err), file=sys.stderr)
    return 2


def report_cost(p, out: Path, peaks: dict[str, float], command: str) -> int:
    """Count the plan's networks (their counting runs in `<out>/cost/`), print the table and write it to
    `<out>/cost.md`, the counts to `cost.json`; exit 2 when a count failed."""
    try:
        costs = plan_cost(p.runs.values(), out / "cost")
    except RepinvError as err:
        return refuse(err)
    print(write_plan(costs, out, command, peaks), end="")
    return 0


def made_with(argv: list[str], images: Mapping[str, str] | None = None, overrides: Sequence[str] = (),
              stated: Sequence[str] = ()) -> str:
    """The command that makes (and continues) this ledger: the arguments given, less --report-only, each --image as
    `images` maps it (to the path its runs name), and the `stated` overrides after the given `overrides`."""
    words, images = [a for a in argv if a != "--report-only"], images or {}
    for i, word in enumerate(words):
        if word.startswith("--image="):
            words[i] = "--image=" + images.get(word.partition("=")[2], word.partition("=")[2])
        elif i and words[i - 1] == "--image":
            words[i] = images.get(word, word)
    if stated:
        n = len(overrides)
        at = max((i + n for i in range(len(words) - n + 1) if n and words[i:i + n] == list(overrides)), default=len(words))
        ends_list = not n and next((w for w in reversed(words) if w.startswith("--")), None) == "--lrs"
        words[at:at] = ["--"] * ends_list + list(stated)  # after a bare --lrs, `--` ends its list of rates
    return shlex.join(["repinv-claims", *words])


def writing_to(command: str, out: Path) -> str:
    """A recorded repinv-claims command with its --out set to `out`: a ledger copied elsewhere names the folder it was
    made in, and its command would write there."""
    words = shlex.split(command)
    at = next((i for i, w in enumerate(words) if w == "--out" or w.startswith("--out=")), None)
    if at is None:
        return shlex.join([*words[:1], "--out", str(out), *words[1:]])
    words[at:at + (words[at] == "--out") + 1] = ["--out", str(out)]
    return shlex.join(words)


def settings(args, out: Path) -> dict[str, str]:
    """What names a ledger's runs, by the flag that sets it (the extra overrides as every run gets them, its precision
    included): a ledger written with other settings than its own judges runs it does not hold."""
    budget = BUDGETS[args.budget]
    lrs = budget.lrs if args.lrs is None else args.lrs
    return {"--budget": budget.name, "--image": " ".join(resolved(args.image or budget.images)), "--seeds": str(args.seeds),
            "--steps": str(args.steps or budget.steps), "--lrs": " ".join(f"{lr:g}" for lr in lrs) or "none",
            "--pretrained": "yes" if args.pretrained else "no", "--checkpoint": " ".join(sorted(args.checkpoint)) or "none",
            "--weights": args.weights or "none",
            "overrides": " ".join(canonical(budget.overrides(out, args.overrides))) or "none given"}


def recorded_args(command: str):
    """The arguments of a recorded repinv-claims command, normalised as `main` normalises its own (None where they do
    not parse, as a hand-edited claims.md may not)."""
    try:
        with redirect_stderr(io.StringIO()):  # argparse's usage message is for a user, and this user typed none of it
            args = parser().parse_args(shlex.split(command)[1:])
        args.seeds = BUDGETS[args.budget].seeds if args.seeds is None else args.seeds
        args.lrs = check_lrs(args.lrs)
    except (SystemExit, RepinvError, ValueError):
        return None
    return args


def check_report_only(args, out: Path, made: str | None) -> None:
    """--report-only rewrites a ledger from its runs: with other settings than the command the ledger recorded
    (`made`), it would overwrite that ledger with verdicts on runs it does not hold. A RepinvError naming both."""
    ledger = recorded_args(made) if made else None
    if ledger is None:
        return
    own, asked = settings(ledger, out), settings(args, out)
    differ = [k for k in own if own[k] != asked[k]]
    if differ:
        raise RepinvError(f"--report-only would write the ledger in {out} anew from other runs than its own: it was made "
                          f"with {'; '.join(f'{k} {own[k]}' for k in differ)}, and this command asks for "
                          f"{'; '.join(f'{k} {asked[k]}' for k in differ)}, so claims.md, claims.csv and sensitivity.csv "
                          f"would judge runs it does not hold. Write it again with `{writing_to(made, args.out or out)} "
                          "--report-only`, or give these settings a ledger folder of their own (--out).")


def main(argv=None) -> int:
    """Plan, run and judge; print the paths of claims.md and claims.csv. Exit 1 when a run failed."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser().parse_args(argv)
    budget = BUDGETS[args.budget]
    args.seeds = budget.seeds if args.seeds is None else args.seeds
    try:
        claims = select(args.claims, args.sources, budget.sources)
        check(args, budget)
    except RepinvError as err:
        return refuse(err)
    if args.compare:
        try:
            print(comparison(args.compare, made_with(argv)), end="")
        except RepinvError as err:
            return refuse(err)
        return 0
    if args.list:
        print("\n".join(f"{c.id:<36} {c.source:<12} {'trained' if c.trained else 'untrained':<10} {c.text}" for c in claims))
        return 0
    out = (args.out or Path("logs") / "claims" / budget.name).resolve()
    images = resolved(args.image or []) or list(budget.images)
    started = time.perf_counter()
    weights = Weights.parse(args.checkpoint, args.pretrained, args.weights)
    made = made_by(out)
    try:
        p = plan(claims, budget, out, args.seeds, images, args.lrs, weights.overrides, args.overrides, args.steps)
        check_runs(p.runs.values(), args.overrides)
        if args.report_only:
            check_report_only(args, out, made)
    except RepinvError as err:
        return refuse(err)
    # a bf16 budget's precision depends on the CPU and on the runs the folder holds: the command says which it was
    stated = [f"{PRECISION}={budget.precision(out, args.overrides)}"] if budget.bf16 and value(
        args.overrides, PRECISION) is None else []
    command = made_with(argv, dict(zip(args.image or [], images)), args.overrides, stated)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        return refuse(RepinvError(f"--out {args.out or out}: the folder could not be made ({err.strerror or err}); the "
                                  "ledger is a folder (claims.md, claims.csv, runs/). Give a folder this user can "
                                  f"write to, e.g. --out logs/claims/{budget.name}."))
    print(f"{len(claims)} claims, {len(p.runs)} runs -> {out}", file=sys.stderr)
    if args.cost:
        return report_cost(p, out, dict(args.peak), command)
    execute(p, args.jobs, launch_missing=not args.report_only)
    dropped = [cid for cid in judged(out) if cid not in {c.id for c in claims}]
    before = writing_to(made, args.out or out) if made else "the command that made it"
    csv_path, md_path = write(out, budget.name, claims, p, images, args.seeds, command)
    if dropped:
        print(f"repinv-claims: {md_path} and {csv_path.name} now judge this selection alone; they judged "
              f"{listing(dropped, 6)} too. Its runs are kept: `{before} --report-only` writes that ledger again.",
              file=sys.stderr)
    print(md_path)
    print(csv_path)
    print(f"ledger in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return 0 if all(r.ok or r.status == NOT_MADE for r in p.runs.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
