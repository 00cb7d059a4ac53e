#!/usr/bin/env bash
# The atom kernel's GPU check in two steps, for a GPU machine without cargo (issue 5).
#
#   scripts/gpu_check.sh prepare   # here: builds the cuda binary and the GPU tests into gpu-check/
#   scripts/gpu_check.sh run       # on the GPU machine, from the checkout with gpu-check/ carried:
#                                  # the GPU tests, then nimbus beside dcs_gpu.cu; logs to $OUT
#
# gpu-check/ is git-ignored; carry it to the GPU machine (the device tool's `carry`).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=gpu-check

# The executable of target NAME in cargo's JSON messages on stdin.
executable() {
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == sys.argv[1]:
        print(m["executable"])' "$1"
}

prepare() {
    mkdir -p "$dir"
    # The binary and the workloads' unit tests, built with the cuda feature; their paths from
    # cargo (wherever CARGO_TARGET_DIR points).
    local nimbus tests
    nimbus=$(cargo build --release --locked -p nimbus-cli --features cuda \
        --message-format=json | executable nimbus)
    tests=$(cargo test --release --locked -p nimbus-workloads --features cuda --lib --no-run \
        --message-format=json | executable nimbus_workloads)
    cp -f "$nimbus" "$dir/nimbus"
    cp -f "$tests" "$dir/workloads-tests"
    # Without symbols both fit the device tool's carry (64 MiB with the whole working tree).
    strip "$dir/nimbus" "$dir/workloads-tests"
    install -m 0644 ../shared/reference/dcs_gpu.cu "$dir/dcs_gpu.cu"
    ls -la "$dir"
}

run() {
    local out=${OUT:-$dir/out}
    mkdir -p "$out"
    nvidia-smi | tee "$out/nvidia-smi.txt" || true
    # cudarc looks for libnvrtc.so(.12); a CUDA toolkit keeps it here.
    export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
    # The GPU tests (NVRTC compile, GPU against CPU on random inputs) and the planner's; a
    # missing GPU or NVRTC fails them here instead of passing as "not used".
    NIMBUS_REQUIRE_GPU=1 "$dir/workloads-tests" atoms::gpu --nocapture 2>&1 | tee "$out/gpu-tests.txt"
    # nimbus's GPU kernel beside the reference built with nvcc, same n and m, same run.
    (cd "$dir" && ./nimbus bench atoms --n 256 --m 16000 --gpu --gpu-reference dcs_gpu.cu \
        --no-cpu) 2>&1 | tee "$out/bench-gpu.txt"
}

case "${1:-}" in
prepare) prepare ;;
run) run ;;
*)
    echo "usage: $0 prepare|run" >&2
    exit 2
    ;;
esac
