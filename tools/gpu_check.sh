#!/usr/bin/env bash
# One-command GPU check of fastnets: kernel tests on the GPU, fwht and Escort benchmarks against
# cuBLAS / cuDNN / cuSPARSE and a device copy, reversible-backprop memory, a short training run,
# and a one-page summary (steps and summary: tools/gpu_check.py; how to run: docs/gpu/README.md).
#
#   tools/gpu_check.sh             on a machine with an NVIDIA GPU and jax's CUDA plugin, offline
#   tools/gpu_check.sh --dry-run   tiny sizes, Pallas kernels in the interpreter, on a CPU (CI)
#
# Writes into $OUT if set, else runs/gpu_check/: summary.md, summary.json, gpu_check.log and
# results.tgz (every results.json, the kernel tests' junit.xml, each step's log). Each step runs
# under its own time limit (T_TESTS, T_FWHT, ... seconds) inside an overall budget
# (GPU_CHECK_BUDGET_S, default 345 s), so one hang cannot eat the rest. Exit status: 0 when every
# step ran, 1 when one failed or timed out (the summary says which), 2 for bad arguments, 3 when
# there is no GPU (without --dry-run; nothing is installed or written then).
set -u
cd "$(dirname "$0")/.." || exit 2
PY=${PYTHON:-python3}
DRY=""
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY="--dry-run" ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown argument '$arg' (usage: tools/gpu_check.sh [--dry-run])" >&2
       exit 2 ;;
  esac
done
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
SLOW=1
if [ -n "$DRY" ]; then
  # The CPU, whatever the machine has; the XLA fwht rather than compiling the native one. The
  # limits are the GPU's times 5: a shared CI machine compiles slowly.
  export JAX_PLATFORMS=cpu FASTNETS_NATIVE=0
  SLOW=5
fi
START=$(date +%s)
BUDGET=$(( ${GPU_CHECK_BUDGET_S:-345} * SLOW ))
RESERVE=20  # kept back for the summary and the tarball

# A GPU or nothing: checked before anything is installed or written.
ENV_JSON=$(mktemp)
timeout 90 "$PY" tools/gpu_check.py probe --env-json "$ENV_JSON" $DRY >/dev/null
rc=$?
if [ $rc -ne 0 ]; then
  rm -f "$ENV_JSON"
  [ $rc -eq 124 ] && echo "gpu_check: the device probe timed out after 90 s" >&2
  exit 3
fi

OUT=${OUT:-runs/gpu_check}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd) || exit 2
R="$OUT/results"
rm -rf "$R" "$OUT/results.tgz" "$OUT/summary.md" "$OUT/summary.json" "$OUT/gpu_check.log"
mkdir -p "$R/logs"
mv "$ENV_JSON" "$R/env.json"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
printf 'step\trc\tseconds\tlimit\n' > "$R/steps.tsv"
cat "$R/env.json"

# run_step NAME LIMIT_S COMMAND...: the command under min(LIMIT_S, what the budget has left).
run_step() {
  local name=$1 own=$(( $2 * SLOW ))
  shift 2
  local left=$(( BUDGET - RESERVE - ($(date +%s) - START) ))
  local limit=$(( own < left ? own : left ))
  echo
  echo "=== $name ($(date +%T), limit ${limit} s)"
  if [ "$limit" -lt 5 ]; then
    echo "skipped: the time budget is spent"
    printf '%s\tskipped\t0\t%s\n' "$name" "$own" >> "$R/steps.tsv"
    return
  fi
  local t0
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" > "$R/logs/$name.log" 2>&1
  local rc=$?
  tail -n 30 "$R/logs/$name.log"
  [ $rc -eq 124 ] && echo "TIMED OUT after ${limit} s"
  echo "--- $name: exit $rc, $(( $(date +%s) - t0 )) s"
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - t0 ))" "$limit" >> "$R/steps.tsv"
}

if [ -n "$DRY" ]; then
  printf 'install\tdry-run\t0\t0\n' >> "$R/steps.tsv"
else
  run_step install "${T_INSTALL:-60}" \
    "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e .
fi
run_step tests "${T_TESTS:-75}" "$PY" tools/gpu_check.py tests --out "$R" $DRY
run_step fwht "${T_FWHT:-60}" "$PY" tools/gpu_check.py step fwht --out "$R" $DRY
run_step escort "${T_ESCORT:-150}" "$PY" tools/gpu_check.py step escort --out "$R" $DRY
run_step reversible "${T_REVERSIBLE:-40}" "$PY" tools/gpu_check.py step reversible --out "$R" $DRY
run_step baseline "${T_BASELINE:-40}" "$PY" tools/gpu_check.py step baseline --out "$R" $DRY

echo
echo "=== summary ($(date +%T))"
timeout 60 "$PY" tools/gpu_check.py summary --out "$R" --md "$OUT/summary.md" \
  --json "$OUT/summary.json" $DRY
tar -C "$OUT" -czf "$OUT/results.tgz" --exclude=checkpoints --exclude=tb results && rm -rf "$R"
echo "gpu_check: $(( $(date +%s) - START )) s; wrote summary.md, summary.json, gpu_check.log" \
  "and results.tgz into $OUT"
if awk -F'\t' 'NR > 1 && $2 != "0" && $2 != "dry-run" {bad = 1} END {exit !bad}' \
    <(tar -xzOf "$OUT/results.tgz" results/steps.tsv); then
  exit 1
fi
exit 0
