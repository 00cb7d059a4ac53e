#!/usr/bin/env bash
# The window in which a task can run twice, measured as issue 16 describes: TASKS shell tasks
# that each append their NIMBUS_TASK_ID to a file, three workers of 8 slots, one killed with -9
# (its whole process group) after KILL_AFTER seconds, a fourth started; then every task must be
# reported, and the effects that ran twice are counted. Repeated RUNS times; prints one line per
# run and a Markdown row (duplicates per kill, tasks/s before the kill) for docs/benchmarks.md.
# Usage: scripts/bench_window.sh [--runs 5] [--tasks 2000] [--kill-after 1.5] [--label L]
#        [--worker-arg ARG]...   (e.g. --worker-arg=--free-slot --worker-arg=finished)
# Needs: a release build (cargo build --release -p nimbus-cli), or NIMBUS=path/to/nimbus.
# Every worker gets --free-slot recorded|finished as given; an older binary without the flag is
# measured with no --worker-arg.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=5 tasks=2000 kill_after=1.5 label=${NIMBUS:-release}
worker_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=$2; shift 2 ;;
    --tasks) tasks=$2; shift 2 ;;
    --kill-after) kill_after=$2; shift 2 ;;
    --label) label=$2; shift 2 ;;
    --worker-arg) worker_args+=("$2"); shift 2 ;;
    --worker-arg=*) worker_args+=("${1#--worker-arg=}"); shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
nimbus=$(realpath "${NIMBUS:-${CARGO_TARGET_DIR:-target}/release/nimbus}")
[ -x "$nimbus" ] || { echo "missing $nimbus (cargo build --release -p nimbus-cli)" >&2; exit 1; }
work=$(mktemp -d)
cleanup() { pkill -KILL -f "$work/db" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')
total_dup=0 rates=()
for run in $(seq "$runs"); do
  rm -rf "$work"/* && cd "$work"
  db="sqlite://$work/db/nimbus.db"
  mkdir -p db
  effects="$work/effects.txt"
  "$nimbus" --engine "$db" tasks gen "$tasks" "echo \$NIMBUS_TASK_ID >> $effects" -o workload.txt >/dev/null
  session=$("$nimbus" --engine "$db" tasks submit workload.txt)
  worker() { setsid "$nimbus" --engine "$db" worker --concurrency 8 --visibility 2s --allow-exec 'echo .*' --exit-when-idle 3s "${worker_args[@]}" >/dev/null 2>&1 & echo $!; }
  victim=$(worker); a=$(worker); b=$(worker)
  started=$(date +%s.%N)
  sleep "$kill_after"
  done_before=$(wc -l < "$effects" 2>/dev/null || echo 0)
  kill -KILL -- "-$victim" 2>/dev/null || true
  rates+=("$(python3 -c "import time; print(round($done_before / (time.time() - $started)))")")
  c=$(worker)
  check=$("$nimbus" --engine "$db" tasks check --session "$session" --wait 300s | head -1)
  wait "$a" "$b" "$c" 2>/dev/null || true
  lines=$(wc -l < "$effects")
  unique=$(sort -u "$effects" | wc -l)
  dup=$((lines - unique))
  total_dup=$((total_dup + dup))
  echo "run $run: $done_before effects before the kill; $check; $unique tasks had their effect, $dup twice"
  cd - >/dev/null
done
echo
echo "CPU: $cpu ($(nproc) cores)"
echo "| build | tasks | runs (one kill -9 each) | effects run twice | per kill | tasks/s before the kill (median) |"
echo "| --- | ---: | ---: | ---: | ---: | ---: |"
median=$(printf '%s\n' "${rates[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
echo "| $label ${worker_args[*]} | $tasks | $runs | $total_dup | $(python3 -c "print(round($total_dup/$runs, 2))") | $median |"
