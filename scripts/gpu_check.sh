#!/usr/bin/env bash
# GPU checks in one go, in GPU_CHECK_BUDGET seconds (default 420, plus up to a minute for stopping and
# packing: under 7.5 minutes in all) on one large GPU:
#   tests      pytest -m gpu (tests/test_gpu.py): ViT-B/32 on CUDA equals the CPU run in fp32, bf16
#              against fp32, resume bit-identical, divergence then resume, every parametrisation,
#              prior and objective, two processes equal to one (with two GPUs)
#   benchmark  scripts/benchmark.py at real size: ViT-B/32 layers 0, 5, 11 x batch 1, 12, 64 in fp32
#              and bf16, the 13-depth shared pass (also compiled, and its operators a step),
#              ViT-L/16 at 512x512, the GPU's matmul ceiling
#   study      repinv-claims --budget study for the untrained timm claims, several runs sharing the
#              GPU, with the time left; cut off, it still writes the ledger of the runs that finished
#              (--report-only) and a later call resumes them
# GPU_CHECK_STAGES picks stages (default "tests benchmark study"; "study" alone gives the whole budget to
# the ledger once the tests and benchmark are measured). The study continues the committed ledger of this
# GPU model (docs/study/gpu-<model>, e.g. gpu-h200; GPU_CHECK_LEDGER names another folder, relative to the
# repository): its finished runs are reused, the rest are made. GPU_CHECK_STUDY_ARGS adds repinv overrides to
# every study run (e.g. "precision=bf16"); the default ledger is then docs/study/gpu-<model>-<them>, so runs of
# another precision never join the fp32 ledger. The ledger folder's cost.json (repinv-claims --cost: the plan's
# FLOPs; else another GPU ledger's, the same plan) is copied too, and the summary turns it into the least time
# the plan takes at this GPU's matmul ceiling.
# The benchmark rewrites its JSON after each part, so a stage cut off keeps what it measured.
# Everything goes under one folder: $OUT when set, else GPU_CHECK_OUT, else a temporary folder. The
# stages work in <folder>/work; at the end <folder> holds summary.md (one page), benchmark.json,
# logs.tar.gz (stage logs, the tests' JUnit XML) and study.tar.gz (the ledger: claims.csv/.md,
# sensitivity.csv, plots, each run's metrics.json, command.txt and filters.json; the grids would take
# the archive past what a device returns). With $OUT set the work folder is removed after packing
# (GPU_CHECK_KEEP_WORK=1 keeps it). Exits 1 if a stage failed (the tests or benchmark also when cut
# off; the study's cut-off is its budget); without CUDA it says it skipped and exits 0. Runs with
# $PYTHON (default python3) and PYTHONPATH=src; wheels in .whl/ are installed into a temporary folder
# when hydra-core or omegaconf is missing.
#
#     bash scripts/gpu_check.sh
set -u
cd "$(dirname "$0")/.."
started=$(date +%s)
budget=${GPU_CHECK_BUDGET:-420}
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 WANDB_MODE=offline WANDB_SILENT=true

stages=${GPU_CHECK_STAGES:-tests benchmark study}
for s in $stages; do
    case $s in tests|benchmark|study) ;;
    *) echo "gpu_check: error: GPU_CHECK_STAGES names '$s', which is not a stage; give some of: tests benchmark study (e.g. GPU_CHECK_STAGES=study)." >&2
       exit 2 ;;
    esac
done
wants() { [[ " $stages " == *" $1 "* ]]; }
if ! [[ $budget =~ ^[0-9]+$ ]] || [ "$budget" -lt 60 ]; then
    echo "gpu_check: error: GPU_CHECK_BUDGET=$budget is not a number of seconds of at least 60; give e.g. GPU_CHECK_BUDGET=420 (the default)." >&2
    exit 2
fi

gpus=$($PY -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)" 2>/dev/null || echo 0)
if [ "$gpus" -eq 0 ]; then
    echo "gpu_check: skipped (no CUDA device visible to torch)"
    exit 0
fi
if ! $PY -c "import hydra, omegaconf" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
    site=$(mktemp -d -t repinv-site-XXXX)
    $PY -m pip install -q --no-index --no-deps --no-compile --target "$site" .whl/*.whl
    export PYTHONPATH="$site:$PYTHONPATH"
fi
out=${OUT:-${GPU_CHECK_OUT:-$(mktemp -d -t repinv-gpu-check-XXXX)}}
work=$out/work
mkdir -p "$work"
gpu_name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
echo "$gpus x $gpu_name, $($PY -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda)')" >"$work/gpu.txt"
: >"$work/stages.tsv"
failed=0

left() { echo $(( started + budget - $(date +%s) )); }
limit() {  # limit WANTED RESERVE: WANTED seconds, or what is left after keeping RESERVE for later stages
    local l=$(( $(left) - $2 ))
    echo $(( l < $1 ? (l > 10 ? l : 10) : $1 ))
}
stage() {  # stage NAME SECONDS COMMAND...: run with a time limit (SIGTERM, then SIGKILL 15 s later), log to work/NAME.log
    local name=$1 seconds=$2 start rc
    shift 2
    start=$(date +%s)
    timeout -k 15 "$seconds" "$@" >"$work/$name.log" 2>&1
    rc=$?
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" $(( $(date +%s) - start )) "$name.log" >>"$work/stages.tsv"
    echo "gpu_check: $name exit $rc after $(( $(date +%s) - start )) s"
    return $rc
}

if wants tests; then
    stage tests "$(limit 120 290)" $PY -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py --junitxml="$work/tests.xml" || failed=1
fi
if wants benchmark; then
    stage benchmark "$(limit 180 90)" $PY scripts/benchmark.py --vit-l --compile --out "$work/benchmark.json" || failed=1
fi

if wants study; then
    model=$(echo "$gpu_name" | tr 'A-Z' 'a-z' | grep -oE '\b[a-z][0-9]{2,4}[a-z]?\b' | head -1)
    read -r -a study_args <<<"${GPU_CHECK_STUDY_ARGS:-}"
    suffix=$(printf '%s' "${study_args[*]:-}" | tr 'A-Z' 'a-z' | tr -cs 'a-z0-9.' '-' | sed 's/^-*//; s/-*$//')
    ledger=${GPU_CHECK_LEDGER:-docs/study/gpu-${model:-unknown}${suffix:+-$suffix}}
    mkdir -p "$work/study"
    # the plan's FLOPs: every GPU ledger holds the same plan, and its FLOPs depend on neither GPU nor precision
    cost=$(ls "$ledger/cost.json" docs/study/gpu-*/cost.json 2>/dev/null | head -1)
    [ -n "$cost" ] && cp "$cost" "$work/study/cost.json"
    if [ -d "$ledger/runs" ]; then  # continue it: its finished runs are reused (what the work folder holds is kept)
        cp -R -n "$ledger/runs" "$work/study/"
        printf '%s\t%s\n' "$ledger" "$(find "$ledger/runs" -mindepth 2 -maxdepth 2 -name command.txt | wc -l)" >"$work/study.from"
    fi
    claims=$($PY -m repinv.claims --budget study --sources timm --list 2>/dev/null | awk '$3 == "untrained" {print $1}' | paste -sd, -)
    jobs=${GPU_CHECK_JOBS:-6}
    study_start=$(date +%s)
    stage study "$(limit 100000 40)" env OMP_NUM_THREADS=2 $PY -m repinv.claims --budget study --sources timm --claims "$claims" --jobs "$jobs" \
        --out "$work/study" logger=csv trainer.accelerator=gpu trainer.devices=1 checkpoint_every=250 ${study_args[@]+"${study_args[@]}"}
    study_rc=$?
    echo $(( $(date +%s) - study_start )) >"$work/study.seconds"
    if [ "$study_rc" -ne 0 ]; then  # cut off (or a run failed): the ledger of what finished
        stage ledger "$(limit 60 10)" $PY -m repinv.claims --budget study --sources timm --claims "$claims" --report-only \
            --out "$work/study" logger=csv trainer.accelerator=gpu trainer.devices=1 checkpoint_every=250 ${study_args[@]+"${study_args[@]}"} \
            || failed=1
    fi
    [ "$study_rc" -eq 0 ] || [ "$study_rc" -eq 124 ] || [ "$study_rc" -eq 137 ] || failed=1
fi

$PY scripts/gpu_summary.py "$work" >/dev/null || failed=1
cp "$work/summary.md" "$out/summary.md" 2>/dev/null
[ -f "$work/benchmark.json" ] && cp "$work/benchmark.json" "$out/benchmark.json"
tar -czf "$out/logs.tar.gz" -C "$work" $(cd "$work" && ls *.log tests.xml stages.tsv gpu.txt study.seconds study.from 2>/dev/null)
if [ -d "$work/study" ]; then
    (cd "$work" && find study -maxdepth 1 -type f; find study/plots -type f 2>/dev/null
     find study/runs -maxdepth 2 \( -name metrics.json -o -name command.txt -o -name filters.json \) 2>/dev/null) >"$work/study.files"
    tar -czf "$out/study.tar.gz" -C "$work" -T "$work/study.files"
fi
if [ -n "${OUT:-}" ] && [ "${GPU_CHECK_KEEP_WORK:-0}" != 1 ]; then
    rm -rf "$work"
fi
cat "$out/summary.md"
echo "gpu_check: $(( $(date +%s) - started )) s; results in $out"
exit $failed
