#!/bin/bash
# One lent-GPU session (docs/gpu.md): joins and installs carried wheels, runs the CUDA tests and the GPU benchmarks,
# and writes every figure under $OUT; each step has its own time limit (540 s in all, under one call's 600) so that
# one failure leaves time for the rest.
# Carry wheels split under 64 MiB as wheels/NAME.whl.part-aa, -ab, ... (split -b 60M NAME.whl NAME.whl.part-).
set -u
OUT=${OUT:-/tmp/segearth-gpu}
mkdir -p "$OUT"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
python3 --version > "$OUT/python.txt" 2>&1
for first in wheels/*.part-aa; do
    [ -e "$first" ] && cat "${first%.part-aa}".part-* > "${first%.part-aa}"
done
if ls wheels/*.whl > /dev/null 2>&1; then
    python3 -m pip install --no-deps --target /tmp/segearth-site wheels/*.whl > "$OUT/pip.txt" 2>&1
fi
export PYTHONPATH=/tmp/segearth-site:$PWD HF_HUB_OFFLINE=1
step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    echo "== $name: $*" >> "$OUT/steps.txt"
    timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
    echo "== $name exited $?" >> "$OUT/steps.txt"
}
step tests 120 python3 -m pytest -q -p no:cacheprovider tests/core/runtime/test_cuda.py \
    tests/core/method/test_simfeatup_cuda.py
step speed 150 python3 -m tools.dev.bench speed --device cuda --runs 3
step parity 120 python3 -m tools.dev.bench parity
step throughput 150 python3 -m tools.dev.bench throughput --device cuda --size 4096
