#!/usr/bin/env bash
# The GPU check, one script for a lent NVIDIA machine (the device tool), under 8 minutes:
#   1. the GPU tests, each test's name printed as it passes (-v), so a run stopped by its limit shows
#      how far it got: tests/test_gpu.py (every Triton form in fp32/fp16/bf16, forward and backward,
#      against the fp64 oracle, up to T = 32768), the Triton forms of the layers and of the delta rules
#      on the GPU (tests/test_layers.py, tests/test_triton.py -k delta), then tests/test_gpu_fla.py
#      (tttla_kernels.fla_compat against fla's own Triton kernels, fp32 and bf16, packed sequences;
#      about 30 s a test, most of it compiling and autotuning fla's kernels);
#   2. benchmarks/run_gpu.py: lact_v2 and lact_v6 at the paper's shape and linear_attention beside
#      flash-linear-attention, in one run (ratios measured in that run).
# The device machine has no network: first, on this machine,
#   pip download --no-deps -d .gpu_wheels flash-linear-attention fla-core latex2mathml
# then run with the device tool:  bash benchmarks/gpu_check.sh   (carry: .gpu_wheels)
# Results go to $OUT (the device tool's output folder) or benchmarks/results.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD"
if compgen -G ".gpu_wheels/*.whl" >/dev/null; then
    python3 -m pip install -q --no-deps .gpu_wheels/*.whl 2>&1 | grep -v "^WARNING" || true
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$OUT/gpu-machine.txt"
start=$(date +%s)
# the whole log is kept: a run stopped by its limit still shows which tests passed
timeout "${GPU_TEST_SECONDS:-180}" python3 -m pytest -v -p no:cacheprovider -rf --durations=10 \
    tests/test_gpu.py tests/test_layers.py::test_the_triton_form_inside_the_layer tests/test_triton.py -k \
    "gpu or triton_form_inside or delta" 2>&1 | tee "$OUT/gpu-tests.txt" | tail -25
timeout "${GPU_FLA_SECONDS:-90}" python3 -m pytest -v -p no:cacheprovider -rf --durations=10 \
    tests/test_gpu_fla.py -k "gated_delta_rule or packed" 2>&1 | tee "$OUT/gpu-tests-fla.txt" | tail -15
echo "tests: $(( $(date +%s) - start )) s"
timeout "${GPU_BENCH_SECONDS:-170}" python3 benchmarks/run_gpu.py --out "$OUT" --only lact linear \
    --variants lact_v2 lact_v6 2>&1 | tee "$OUT/gpu-bench.txt" | tail -60
echo "total: $(( $(date +%s) - start )) s"
