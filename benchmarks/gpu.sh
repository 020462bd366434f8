#!/usr/bin/env bash
# The GPU column in one command, on a machine with a CUDA GPU and the project installed:
#
#     bash benchmarks/gpu.sh [OUT] [run.py options]     # OUT: benchmarks/results/gpu
#
# The slides are made (a process each) while the GPU tests (`pytest -m gpu`) and the
# training-step benchmark (train_precision.py) run; then benchmarks/run.py, the GPU keys
# `device=gpu actors=1 batch_size=8`. Everything printed goes to OUT/gpu.log as well;
# run.py's partial.json keeps what a run cut short measured. PYTHON: the interpreter
# (default python3).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-benchmarks/results/gpu}
shift || true
py=${PYTHON:-python3}
mkdir -p "$out"
log="$out/gpu.log"
export PYTHONUNBUFFERED=1
"$py" -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'" || exit 2
"$py" benchmarks/run.py --slides-only --out "$out" "$@" >"$out/.slides.log" 2>&1 &
slides=$!
start=$SECONDS
echo "== pytest -m gpu" | tee -a "$log"
"$py" -m pytest -m gpu -p no:cacheprovider 2>&1 | tee -a "$log"
tests=${PIPESTATUS[0]}
echo "== train_precision.py ($((SECONDS - start)) s)" | tee -a "$log"
"$py" benchmarks/train_precision.py --out "$out" 2>&1 | tee -a "$log"
wait "$slides"
made=$?
cat "$out/.slides.log" >>"$log" && rm -f "$out/.slides.log"
[ "$made" -eq 0 ] || { echo "making the slides failed ($made)" | tee -a "$log"; exit 1; }
echo "== run.py ($((SECONDS - start)) s)" | tee -a "$log"
"$py" benchmarks/run.py --out "$out" "$@" 2>&1 | tee -a "$log"
ran=${PIPESTATUS[0]}
echo "== done ($((SECONDS - start)) s): pytest $tests, run.py $ran" | tee -a "$log"
exit $((tests || ran))
