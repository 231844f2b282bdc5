#!/usr/bin/env bash
# `make gpu-check`: the prepared command for a lent GPU machine (device tool), one run.
#   run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=590)
# Installs the few wheels the GPU image lacks (`make gpu-wheels` downloads them into .whl/), runs
# the GPU-marked tests and both benchmarks, and writes everything to $OUT (or ./gpu-check-out).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-check-out}"
mkdir -p "$out"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/code:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python3 -c "import torch; print(torch.__version__)"; } \
  2>&1 | tee "$out/device.txt"
timeout 180 python3 -m pytest -m gpu tests/unit/test_gpu.py -q -p no:cacheprovider 2>&1 | tee "$out/gpu_tests.log"
timeout 330 python3 bench/model_step.py 2>&1 | grep -v Warning | tee "$out/bench_model_step.jsonl"
timeout 60 python3 bench/data_loading.py --skip-memory --rows 12000 2>&1 | grep '^{' | tee "$out/bench_data_loading.jsonl"
