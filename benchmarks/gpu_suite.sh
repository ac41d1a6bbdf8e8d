#!/usr/bin/env bash
# The ONE device command of the GPU suite (benchmarks/gpu_suite.py), run from the repository root on the device
# machine with .whl/ carried (fill it here first with benchmarks/gpu_wheels.sh):
#
#   bash benchmarks/gpu_suite.sh                 # JSON and log to $OUT (else benchmarks/results/)
#   bash benchmarks/gpu_suite.sh --dry-run       # the CPU rehearsal through the same script
#
# Extra arguments go to gpu_suite.py. The suite keeps to its own 390 s budget (after ~10 s of imports); `timeout 420`
# bounds it anyway (SIGTERM: the runner stops the running section, restores any power limit, writes the JSON and
# the table).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${OUT:-benchmarks/results}
mkdir -p "$OUT_DIR"
# A failed install does not stop the run: the sections that need no carried package (throughput, NVML) still
# measure, and the others record the ImportError.
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
        || echo "gpu_suite.sh: installing the wheels in .whl/ failed (wrong Python? they are for 3.12)" >&2
else
    echo "gpu_suite.sh: no wheels in .whl/ (run benchmarks/gpu_wheels.sh where pip works, and carry .whl)" >&2
fi
export PYTHONPATH="/tmp/site:$PWD/src" PYTHONUNBUFFERED=1 PYTORCH_NVML_BASED_CUDA_CHECK=1
timeout -k 15 420 python3 benchmarks/gpu_suite.py --out "$OUT_DIR" "$@" 2>&1 | tee "$OUT_DIR/gpu_suite.log"
exit "${PIPESTATUS[0]}"
