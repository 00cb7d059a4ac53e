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

prepare() {
    mkdir -p "$dir"
    cargo build --release --locked -p nimbus-cli --features cuda
    cp target/release/nimbus "$dir/nimbus"
    # The workloads' unit tests, built with the cuda feature: the test binary's path from cargo.
    local tests
    tests=$(cargo test --release --locked -p nimbus-workloads --features cuda --lib --no-run \
        --message-format=json | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "nimbus_workloads":
        print(m["executable"])')
    cp "$tests" "$dir/workloads-tests"
    # Without symbols both fit the device tool's 64 MiB carry.
    strip "$dir/nimbus" "$dir/workloads-tests"
    cp ../shared/reference/dcs_gpu.cu "$dir/dcs_gpu.cu"
    ls -la "$dir"
}

run() {
    local out=${OUT:-$dir/out}
    mkdir -p "$out"
    nvidia-smi | tee "$out/nvidia-smi.txt" || true
    # The GPU tests (NVRTC compile, GPU against CPU on random inputs) and the planner's.
    "$dir/workloads-tests" atoms::gpu --nocapture 2>&1 | tee "$out/gpu-tests.txt"
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
