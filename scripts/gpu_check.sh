#!/usr/bin/env bash
# GPU checks in one go (under 8 minutes): the GPU-marked tests (a tiny run on CUDA equals the CPU
# run; bf16 on CUDA), the quick benchmark in fp32 and bf16, and a 2-process sharded run when there
# are two GPUs. Prints one summary; exits 1 if a check failed. Without CUDA it says it skipped and
# exits 0.
#
#     bash scripts/gpu_check.sh            # logs in a temporary folder, or GPU_CHECK_OUT=<folder>
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 WANDB_MODE=offline WANDB_SILENT=true
PY=${PYTHON:-python}

gpus=$($PY -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)" 2>/dev/null || echo 0)
if [ "$gpus" -eq 0 ]; then
    echo "gpu_check: skipped (no CUDA device visible to torch)"
    exit 0
fi
out=${GPU_CHECK_OUT:-$(mktemp -d -t repinv-gpu-check-XXXX)}
mkdir -p "$out"
summary=()
failed=0

check() {  # check NAME SECONDS COMMAND...: run with a time limit, log to $out/NAME.log
    local name=$1 limit=$2 start rc
    shift 2
    start=$(date +%s)
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    rc=$?
    [ "$rc" -eq 0 ] || failed=1
    summary+=("$(printf '%-10s %-12s %4d s  %s' "$name" "$([ "$rc" -eq 0 ] && echo ok || echo "FAILED rc=$rc")" \
        $(( $(date +%s) - start )) "$out/$name.log")")
}

check tests 200 $PY -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py
check benchmark 150 $PY scripts/benchmark.py --quick --bf16 --out "$out/benchmark.json"
if [ "$gpus" -ge 2 ]; then
    check sharded 120 $PY -m repinv model=vit_tiny "image=[chelsea,astronaut]" "layers=[0,patch_embed]" steps=40 \
        logger=none trainer.accelerator=gpu trainer.devices=2 collective_timeout_s=60 "hydra.run.dir=$out/sharded"
else
    summary+=("sharded    skipped       (one GPU)")
fi

echo "== gpu_check: $gpus x $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1) =="
printf '%s\n' "${summary[@]}"
echo "-- tests:"; tail -n 3 "$out/tests.log"
echo "-- benchmark:"; tail -n 25 "$out/benchmark.log"
[ -f "$out/sharded/metrics.json" ] && { echo "-- sharded run:"; $PY -c "import json, sys
for r in json.load(open(sys.argv[1])): print(r['image'], r['layer'], r['status'], r['steps'], round(r['psnr'], 2), 'dB')" \
    "$out/sharded/metrics.json"; }
exit $failed
