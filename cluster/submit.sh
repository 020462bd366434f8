#!/usr/bin/env bash
# Run a raysegment command on a Ray cluster as a Ray job, from a checkout of this repository.
#   cluster/submit.sh http://HEAD:8265 infer conf/infer.yaml input=/data/slides \
#       model=/data/models/unet output=/data/out device=all
#   cluster/submit.sh http://HEAD:8265 train conf/train.yaml images.dir=/data/img \
#       labels.dir=/data/lbl output=/data/models/unet num_workers=4 device=gpu
# The repository travels as the job's working directory; RUNTIME_ENV (default
# cluster/runtime_env.yaml) installs the dependencies the cluster's image lacks. Paths must
# name storage every node sees. `ray job logs -f <id>` follows a job; `ray job stop <id>`
# stops it, and the same submission later resumes where it stopped.
set -euo pipefail
address=${1:?usage: cluster/submit.sh RAY_DASHBOARD_URL infer|train [CONFIG.yaml ...] [key=value ...]}
shift
cd "$(dirname "$0")/.."
exec ray job submit --address "$address" --working-dir . \
    --runtime-env "${RUNTIME_ENV:-cluster/runtime_env.yaml}" \
    -- python -m raysegment.cli "$@"
