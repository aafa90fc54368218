#!/usr/bin/env bash
# The recipe study, then the diagnostics, from the runs of a CPU ledger (repinv-claims --budget cpu --out ROOT):
#   scripts/study_cpu.sh ROOT [STUDY_FOLDER]
# Both write into STUDY_FOLDER (default ROOT); their extra runs go under ROOT/runs beside the ledger's. Resumable: run
# it again and every finished run and spectrum is reused, an interrupted run resumes from its checkpoint.
set -uo pipefail
ROOT=${1:?usage: scripts/study_cpu.sh LEDGER_ROOT [STUDY_FOLDER]}
OUT=${2:-$ROOT}
HERE=$(cd "$(dirname "$0")" && pwd)
python "$HERE/recipes.py" --ledger "$ROOT" --budget cpu --out "$OUT"
recipes=$?
python "$HERE/diagnostics.py" --ledger "$ROOT" --budget cpu --out "$OUT"
diagnostics=$?
exit $(( recipes || diagnostics ))
