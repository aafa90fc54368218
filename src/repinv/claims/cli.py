"""`repinv-claims`: check every claim of the study that can be checked, and write the ledger.

    repinv-claims --budget quick                 # tiny models, one image, 10 steps: a minute or two
    repinv-claims --budget study --jobs 2        # the study's models and 1,500 steps
    repinv-claims --budget study --pretrained    # also the trained-weight claims
    repinv-claims --budget study --report-only   # the ledger of the runs finished so far, making none
"""

from __future__ import annotations

import argparse
import sys
import textwrap
import time
from pathlib import Path

from repinv.claims.ledger import BUDGETS, execute, plan
from repinv.claims.registry import CLAIMS, Claim
from repinv.claims.report import write
from repinv.errors import RepinvError, listing, suggest
from repinv.sources import Weights
from repinv.study import NOT_MADE

def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="repinv-claims", description="Does the study reproduce? Run each claim's inversions and write "
                                "claims.md and claims.csv with a verdict per claim.")
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
    p.add_argument("--lrs", type=float, nargs="*", help="constant learning rates of the sensitivity check (default: "
                   f"study {' '.join(map(str, BUDGETS['study'].lrs))}, quick {' '.join(map(str, BUDGETS['quick'].lrs))}; "
                   "none: the default recipe only)")
    p.add_argument("--steps", type=int, help="override the budget's steps")
    p.add_argument("--pretrained", action="store_true", help="trained runs load timm's pretrained weights, and "
                   "torchvision's IMAGENET1K_V1 unless --weights is given")
    p.add_argument("--checkpoint", action="append", default=[], metavar="[MODEL=]FILE",
                   help="trained weights file (model.checkpoint=); MODEL=FILE for one model config only, e.g. vit_b_32=vit.safetensors")
    p.add_argument("--weights", help="torchvision weights enum for the trained torchvision runs (model.weights=), e.g. IMAGENET1K_V1")
    p.add_argument("--list", action="store_true", help="list the claims and exit")
    p.add_argument("--report-only", action="store_true", help="write the ledger from the runs that have finished and launch "
                   "nothing; the claims still waiting for runs are 'pending' (rerun without it to make them)")
    p.add_argument("overrides", nargs="*", help="extra repinv overrides for every run, e.g. logger=csv")
    return p


def select(ids: str | None, sources: str) -> list[Claim]:
    """The claims asked for, in the study's order; unknown ids or sources are an error."""
    known = {c.id: c for c in CLAIMS}
    wanted = [s.strip() for s in sources.split(",") if s.strip()]
    for s in wanted:
        if s not in {c.source for c in CLAIMS}:
            raise RepinvError(f"--sources {s!r} is not a model source; use a comma-separated list of timm, torchvision.")
    if ids is None:
        return [c for c in CLAIMS if c.source in wanted]
    names = [i.strip() for i in ids.split(",") if i.strip()]
    for name in names:
        if name not in known:
            raise RepinvError(f"--claims {name!r} is not a claim.{suggest(name, known)} The claims are: {listing(known, 40)}.")
    return [c for c in CLAIMS if c.id in names and c.source in wanted]


def main(argv=None) -> int:
    """Plan, run and judge; print the paths of claims.md and claims.csv. Exit 1 when a run failed."""
    args = parser().parse_args(argv)
    budget = BUDGETS[args.budget]
    args.seeds = budget.seeds if args.seeds is None else args.seeds
    try:
        claims = select(args.claims, args.sources or ",".join(budget.sources))
        if args.seeds < 1 or args.jobs < 1:
            raise RepinvError(f"--seeds and --jobs must be at least 1 (got {args.seeds} and {args.jobs}).")
    except RepinvError as err:
        print(textwrap.fill(f"repinv-claims: error: {err}", width=100, break_on_hyphens=False), file=sys.stderr)
        return 2
    if args.list:
        print("\n".join(f"{c.id:<36} {c.source:<12} {'trained' if c.trained else 'untrained':<10} {c.text}" for c in claims))
        return 0
    out = (args.out or Path("logs") / "claims" / budget.name).resolve()
    images = args.image or list(budget.images)
    started = time.perf_counter()
    weights = Weights.parse(args.checkpoint, args.pretrained, args.weights)
    p = plan(claims, budget, out, args.seeds, images, args.lrs, weights.overrides, args.overrides, args.steps)
    print(f"{len(claims)} claims, {len(p.runs)} runs -> {out}", file=sys.stderr)
    execute(p, args.jobs, launch_missing=not args.report_only)
    csv_path, md_path = write(out, budget.name, claims, p, images, args.seeds)
    print(md_path)
    print(csv_path)
    print(f"ledger in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return 0 if all(r.status in ("finished", NOT_MADE) for r in p.runs.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
