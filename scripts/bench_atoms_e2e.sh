#!/usr/bin/env bash
# Request-to-result time of atoms jobs through a running `nimbus up`: POST the job, follow its
# server-sent events to the result. Prints a Markdown table (median of RUNS runs per grid).
# Usage: scripts/bench_atoms_e2e.sh [URL] [ATOMS] [RUNS] [GRIDS...]
set -eu  # no pipefail: curl is cut off (SIGPIPE) once the result event is read
url=${1:-http://127.0.0.1:8080}; atoms=${2:-1000}; runs=${3:-5}; shift $(( $# < 3 ? $# : 3 ))
grids=("$@"); [ ${#grids[@]} -gt 0 ] || grids=(4 16 64 128)
now_ms() { date +%s%3N; }
echo "| grid | points | atoms | request to result, ms (median of $runs) | all runs |"
echo "| ---: | ---: | ---: | ---: | --- |"
for n in "${grids[@]}"; do
  times=()
  for ((r = 0; r < runs; r++)); do
    start=$(now_ms)
    id=$(curl -sS -XPOST "$url/api/v1/jobs" -H 'content-type: application/json' \
      -d "{\"kind\":\"atoms\",\"params\":{\"grid_size\":$n,\"atom_count\":$atoms,\"seed\":$r}}" |
      sed -n 's/.*"id":"\([^"]*\)".*/\1/p')
    [ -n "$id" ] || { echo "job creation failed" >&2; exit 1; }
    curl -sSN --max-time 600 "$url/api/v1/jobs/$id/events" | grep -m1 -qE '^event: result|"state":"succeeded"'
    times+=($(( $(now_ms) - start )))
  done
  sorted=($(printf '%s\n' "${times[@]}" | sort -n))
  echo "| $n | $((n * n * n)) | $atoms | ${sorted[$((runs / 2))]} | ${times[*]} |"
done
