"""One page, summary.md, from what scripts/gpu_check.sh left in its folder.

It reads `stages.tsv` (stage, exit status, seconds, log), `gpu.txt` (the GPUs and torch), the
tests' JUnit XML (`tests.xml`), the benchmark's JSON (`benchmark.json`) and the study ledger
(`study/claims.csv`, its run folders, `study.seconds`, `study.from`: the committed ledger it
continues, and `study/cost.json`: the plan's FLOPs, divided by the measured matmul ceiling); any
of them may be missing (a stage cut off, failed or not chosen), and the page says so.

    python scripts/gpu_summary.py RESULT_FOLDER     # writes RESULT_FOLDER/summary.md and prints it
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

from repinv.errors import paragraph


def stages(folder: Path) -> list[str]:
    path = folder / "stages.tsv"
    if not path.is_file():
        return ["No stage ran (stages.tsv missing)."]
    lines = ["| stage | result | seconds |", "|---|---|---:|"]
    for row in csv.reader(path.open(), delimiter="\t"):
        name, rc, seconds = row[:3]
        result = "ok" if rc == "0" else "timed out (cut off)" if rc in ("124", "137") else f"FAILED (exit {rc})"
        lines.append(f"| {name} | {result} | {seconds} |")
    return lines


def tests(folder: Path) -> list[str]:
    path = folder / "tests.xml"
    if not path.is_file():
        return ["No test results (tests.xml missing)."]
    cases = list(ET.parse(path).getroot().iter("testcase"))
    outcome = {}
    for case in cases:
        name = case.get("name")
        tags = {child.tag for child in case}
        outcome[name] = "failed" if tags & {"failure", "error"} else "skipped" if "skipped" in tags else "passed"
    counts = Counter(outcome.values())
    lines = [", ".join(f"{counts[k]} {k}" for k in ("passed", "failed", "skipped")) + f" of {len(cases)}."]
    lines += [f"- {k}: **{v}**" for k, v in outcome.items()]
    return lines


def _ms(seconds) -> str:
    return f"{1000 * seconds:.1f}"


def benchmark(folder: Path) -> list[str]:
    path = folder / "benchmark.json"
    if not path.is_file():
        return ["No benchmark results (benchmark.json missing)."]
    report = json.loads(path.read_text())
    peaks = report.get("matmul_peak_gflops_by_precision") or {"fp32": report.get("matmul_peak_gflops")}
    lines = ["Plain matmul ceiling: " + ", ".join(f"{k} {v / 1000:.1f} TFLOP/s" for k, v in peaks.items() if v) + ".", "",
             "| layer | batch | fp32 ms/step | fp32 % of peak | bf16 ms/step | bf16 % of peak "
             "| repinv / kernels fp32 | study ms/step |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    cells = {(r["variant"], r["layer"], r["batch"]): r for r in report["rows"]}
    over_kernels = report.get("ratios", {}).get("repinv_over_kernels", {})
    for layer, batch in dict.fromkeys((r["layer"], r["batch"]) for r in report["rows"]):
        fp, bf, study = (cells.get((v, layer, batch)) for v in ("repinv", "repinv_bf16", "study"))
        ratio = over_kernels.get(f"L{layer}_b{batch}")
        lines.append(" | ".join([
            f"| {layer}", str(batch),
            _ms(fp["seconds_per_step"]) if fp else "-", f"{100 * fp['fraction_of_matmul_peak']:.1f}" if fp else "-",
            _ms(bf["seconds_per_step"]) if bf else "-", f"{100 * bf['fraction_of_matmul_peak']:.1f}" if bf else "-",
            f"{ratio:.2f}" if ratio else "-", (_ms(study["seconds_per_step"]) if study else "-") + " |"]))
    shared = report.get("shared_pass") or {}
    variants = shared.get("variants", {})
    for variant, v in variants.items():
        lines.append(f"- {shared['depths']} depths x {shared['images']} images, one shared pass, {variant}: "
                     f"{_ms(v['seconds_per_step'])} ms/step, 1,500 steps in {v['seconds_for_1500_steps']:.0f} s, "
                     f"peak {v.get('peak_memory_mib') or 0:.0f} MiB")
    host = report.get("host_step")
    if host:
        lines.append(f"- a near-empty network's step (repinv's own cost a step, {host['kernel_ops_per_step']} kernels): "
                     f"{_ms(host['seconds_per_step'])} ms")
    if shared.get("kernel_ops_per_step") and "32-true" in variants:
        per_op = 1e6 * variants["32-true"]["seconds_per_step"] / shared["kernel_ops_per_step"]
        lines.append(f"- one step of it dispatches {shared['aten_ops_per_step']} aten operators, "
                     f"{shared['kernel_ops_per_step']} of them not views: {per_op:.1f} µs each at the fp32 step time")
    big = report.get("vit_l16_512") or {}
    for precision, v in big.items():
        lines.append(f"- ViT-L/16 at 512x512, last block, batch 1, {precision}: {_ms(v['seconds_per_step'])} ms/step, "
                     f"peak {v.get('peak_memory_mib') or 0:.0f} MiB")
    ratios = report.get("ratios", {})
    for key in ("all_layers_one_run_over_separate_runs", "bf16_psnr_minus_fp32", "bf16_speedup_quality_run",
                "compile_speedup"):
        if key in ratios:
            lines.append(f"- {key}: {ratios[key]:.3g}")
    return lines


def least_time(cost: Path, bench: Path) -> list[str]:
    """The plan's FLOPs (`repinv-claims --cost`) over this GPU's measured matmul ceiling per precision: the least
    time the whole plan takes."""
    if not cost.is_file():
        return []
    flops = sum(c["flops_per_step"] * c["steps"] for c in json.loads(cost.read_text()))
    line = f"The plan counts {flops / 1e15:.3g} PFLOP (cost.json, `repinv-claims --cost`)"
    peaks = json.loads(bench.read_text()).get("matmul_peak_gflops_by_precision") if bench.is_file() else None
    if not peaks:
        return [line + "; no measured matmul ceiling to divide it by (the benchmark stage did not run)."]
    return [line + "; at this GPU's measured matmul ceiling it takes at least " +
            ", ".join(f"{flops / (g * 1e9) / 60:.1f} min in {k}" for k, g in peaks.items() if g) + "."]


def study(folder: Path) -> list[str]:
    ledger = folder / "study"
    path = ledger / "claims.csv"
    if not path.is_file():
        return ["No ledger (study/claims.csv missing)."]
    rows = list(csv.DictReader(path.open()))
    runs = sorted((ledger / "runs").glob("*/command.txt")) if (ledger / "runs").is_dir() else []
    seconds = (ledger.parent / "study.seconds").read_text().strip() if (ledger.parent / "study.seconds").is_file() else "?"
    verdicts = Counter(r["verdict"] for r in rows)
    lines = [f"{len(runs)} runs finished in {seconds} s; verdicts: " + ", ".join(f"{v} {k}" for k, v in verdicts.items()) + "."]
    if (ledger.parent / "study.from").is_file():
        committed, reused = (ledger.parent / "study.from").read_text().strip().split("\t")
        lines.append(f"It continues {committed}: {reused} of those runs were finished there and reused.")
    lines += least_time(ledger / "cost.json", folder / "benchmark.json")
    lines += ["", "| claim | verdict | measured |", "|---|---|---|"]
    lines += [f"| {r['claim']} | {r['verdict']} | {r['measured'][:90]} |" for r in rows]
    return lines


def summary(folder: Path) -> str:
    gpu = (folder / "gpu.txt").read_text().strip() if (folder / "gpu.txt").is_file() else "GPU unknown"
    parts = [f"# gpu_check: {gpu}", "", "## Stages", *stages(folder), "", "## Tests (pytest -m gpu)", *tests(folder), "",
             "## Benchmark (scripts/benchmark.py)", *benchmark(folder), "",
             "## Study ledger (untrained claims, timm, study budget)", *study(folder), ""]
    return "\n".join(parts)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpu_summary.py", description=__doc__.split("\n")[0])
    p.add_argument("folder", type=Path, help="the result folder scripts/gpu_check.sh wrote (summary.md goes there)")
    return p


def main(argv=None) -> int:
    """Write `<folder>/summary.md` and print it; a folder that is not there is refused (exit 2)."""
    folder = parser().parse_args(argv).folder
    if not folder.is_dir():
        print(paragraph("gpu_summary.py", f"{folder} is not a folder; give the result folder scripts/gpu_check.sh "
                        "wrote (its work/ folder, holding stages.tsv and gpu.txt)."),
              file=sys.stderr)
        return 2
    text = summary(folder)
    (folder / "summary.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
