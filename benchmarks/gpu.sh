#!/usr/bin/env bash
# The GPU column in one command, on a machine with a CUDA GPU and the project installed:
#
#     bash benchmarks/gpu.sh [OUT] [run.py options]     # OUT: benchmarks/results/gpu
#
# The slides are made (a process each) while the GPU tests (`pytest -m gpu`) and the
# training-step benchmark (train_precision.py) run; then benchmarks/run.py, the GPU keys
# `device=gpu actors=1 batch_size=8`; where py-spy is installed, a profile of the largest
# slide's run (OUT/profile.json, summed up by speedscope.py). Everything printed goes to
# OUT/gpu.log as well; run.py's partial.json keeps what a run cut short measured (`run.py
# --report` writes the results from it). PYTHON: the interpreter (default python3).
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
# Where the largest slide's GPU run spends its time, where py-spy is installed: every
# process sampled (idle too), then the predictors' threads summed up.
slide=$(ls -S benchmarks/work/slide*.ome.tif 2>/dev/null | head -1)
if command -v py-spy >/dev/null && [ -n "$slide" ]; then
  echo "== py-spy: $slide ($((SECONDS - start)) s)" | tee -a "$log"
  py-spy record --subprocesses --idle -r 50 -f speedscope -o "$out/profile.json" -- \
    "$py" -m raysegment.cli infer "input=$slide" model=benchmarks/work/unet.pth \
    output=benchmarks/work/profiled overwrite=true progress=false quicklook=false \
    tile.size=512 tile.overlap=0.25 finalize.mode=mask device=gpu actors=1 batch_size=8 2>&1 |
    tee -a "$log"
  "$py" benchmarks/speedscope.py "$out/profile.json" --match predictor.py 2>&1 | tee -a "$log"
fi
echo "== done ($((SECONDS - start)) s): pytest $tests, run.py $ran" | tee -a "$log"
exit $((tests || ran))
