#!/usr/bin/env bash
# The load balancer beside nginx and HAProxy (Debian's), and the replicas hit directly, in one
# run on this machine: the same two `nimbus web` replicas behind each, the same load. For each:
# wrk (closed loop, --connections, --seconds), `nimbus bench http` at the same concurrency
# (p50/p99/p99.9) and at a fixed rate below saturation (--rate, open loop: latency from the
# planned send time). Prints Markdown tables for docs/benchmarks.md.
# With --cpu-rounds N, then N rounds of CPU time per proxied request (user and kernel, from
# /proc/PID/stat around a wrk run of --seconds) for each balancer in turn.
# Usage: scripts/bench_lb.sh [--connections 64] [--seconds 10] [--rate 2000] [--cpu-rounds 0]
# Needs: a release build (cargo build --release -p nimbus-cli), nginx, haproxy and wrk
# (apt-get install nginx haproxy wrk).
set -euo pipefail
cd "$(dirname "$0")/.."
connections=64 seconds=10 rate=2000 cpu_rounds=0
while [ $# -gt 0 ]; do
  case "$1" in
    --connections) connections=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --cpu-rounds) cpu_rounds=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
nimbus=${NIMBUS:-${CARGO_TARGET_DIR:-target}/release/nimbus}
for tool in "$nimbus" nginx haproxy wrk; do
  command -v "$tool" >/dev/null || [ -x "$tool" ] || { echo "missing $tool" >&2; exit 1; }
done
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "nothing on port $1" >&2; exit 1; }

targets=()
for i in 1 2; do
  port=$(free_port)
  NIMBUS_ENGINE="sqlite://$work/nimbus.db" "$nimbus" web --port "$port" --cluster-path /cluster1 --instance-id "replica-$i" >/dev/null 2>"$work/replica-$i.log" &
  pids+=($!); targets+=("$port")
  wait_port "$port"
done

lb_port=$(free_port)
"$nimbus" lb --listen "127.0.0.1:$lb_port" --target "127.0.0.1:${targets[0]}" --target "127.0.0.1:${targets[1]}" >/dev/null 2>"$work/lb.log" &
pids+=($!); lb_pid=$!

nginx_port=$(free_port)
mkdir -p "$work/nginx"
cat > "$work/nginx/nginx.conf" <<CONF
worker_processes 2;
daemon off;
error_log $work/nginx/error.log;
pid $work/nginx/nginx.pid;
events { worker_connections 8192; }
http {
  access_log off;
  client_body_temp_path $work/nginx/body;
  proxy_temp_path $work/nginx/proxy;
  fastcgi_temp_path $work/nginx/fastcgi;
  uwsgi_temp_path $work/nginx/uwsgi;
  scgi_temp_path $work/nginx/scgi;
  upstream replicas {
    server 127.0.0.1:${targets[0]};
    server 127.0.0.1:${targets[1]};
    keepalive 128;
  }
  server {
    listen 127.0.0.1:$nginx_port;
    location / {
      proxy_pass http://replicas;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
CONF
nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" &
pids+=($!); nginx_pid=$!

haproxy_port=$(free_port)
cat > "$work/haproxy.cfg" <<CONF
global
  maxconn 8192
  nbthread 2
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend front
  bind 127.0.0.1:$haproxy_port
  default_backend replicas
backend replicas
  balance roundrobin
  http-reuse always
  server r1 127.0.0.1:${targets[0]}
  server r2 127.0.0.1:${targets[1]}
CONF
haproxy -f "$work/haproxy.cfg" -db >/dev/null 2>"$work/haproxy.log" &
pids+=($!); haproxy_pid=$!
for p in "$lb_port" "$nginx_port" "$haproxy_port"; do wait_port "$p"; done
sleep 1

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')
echo "CPU: $cpu ($(nproc) cores); $connections connections, $seconds s each; open loop at $rate requests/s"
echo
echo "| path | wrk req/s | wrk p50 ms | wrk p99 ms | nimbus bench req/s | p50 ms | p99 ms | p99.9 ms | at $rate/s: p50 ms | p99 ms | p99.9 ms |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
ms() { # wrk's latency as milliseconds
  awk -v v="$1" 'BEGIN { if (v ~ /us$/) { sub(/us$/, "", v); print v / 1000 } else if (v ~ /ms$/) { sub(/ms$/, "", v); print v } else { sub(/s$/, "", v); print v * 1000 } }'
}
for row in "direct (one replica):${targets[0]}" "nimbus lb:$lb_port" "nginx:$nginx_port" "haproxy:$haproxy_port"; do
  name=${row%%:*} port=${row##*:}
  url="http://127.0.0.1:$port/cluster1"
  w=$(wrk -t2 -c"$connections" -d"${seconds}s" --latency "$url")
  wrk_rps=$(echo "$w" | awk '/Requests\/sec/ {print $2}')
  wrk_p50=$(ms "$(echo "$w" | awk '$1 == "50%" {print $2}')")
  wrk_p99=$(ms "$(echo "$w" | awk '$1 == "99%" {print $2}')")
  closed=$("$nimbus" bench http "$url" --connections "$connections" --duration "${seconds}s" --json)
  open=$("$nimbus" bench http "$url" --connections "$connections" --rate "$rate" --duration "${seconds}s" --json)
  python3 - "$name" "$wrk_rps" "$wrk_p50" "$wrk_p99" "$closed" "$open" <<'PY'
import json, sys
name, wrk_rps, wrk_p50, wrk_p99, closed, opened = sys.argv[1:]
c, o = json.loads(closed), json.loads(opened)
errors = c["errors"] + o["errors"]
note = f" ({errors} errors)" if errors else ""
print(f"| {name}{note} | {float(wrk_rps):,.0f} | {float(wrk_p50):.2f} | {float(wrk_p99):.2f} | "
      f"{c['requests_per_second']:,.0f} | {c['latency']['p50_ms']:.2f} | {c['latency']['p99_ms']:.2f} | {c['latency']['p999_ms']:.2f} | "
      f"{o['latency']['p50_ms']:.2f} | {o['latency']['p99_ms']:.2f} | {o['latency']['p999_ms']:.2f} |")
PY
done

[ "$cpu_rounds" -gt 0 ] || exit 0
# Clock ticks of user and kernel time of the given processes.
ticks() { local u=0 k=0 a b; for p in "$@"; do read -r a b < <(cut -d' ' -f14,15 "/proc/$p/stat"); u=$((u + a)); k=$((k + b)); done; echo "$u $k"; }
echo
echo "| round | balancer | wrk req/s | user us/request | kernel us/request |"
echo "| --- | --- | --- | --- | --- |"
nginx_workers=$(pgrep -P "$nginx_pid" | tr '\n' ' ')
for round in $(seq "$cpu_rounds"); do
  for row in "nimbus lb:$lb_port:$lb_pid" "nginx:$nginx_port:$nginx_pid $nginx_workers" "haproxy:$haproxy_port:$haproxy_pid"; do
    IFS=: read -r name port procs <<<"$row"
    # shellcheck disable=SC2086 # procs is a list of PIDs
    before=$(ticks $procs)
    w=$(wrk -t2 -c"$connections" -d"${seconds}s" "http://127.0.0.1:$port/cluster1")
    # shellcheck disable=SC2086
    after=$(ticks $procs)
    requests=$(echo "$w" | awk '/requests in/ {print $1}')
    rps=$(echo "$w" | awk '/Requests\/sec/ {print $2}')
    python3 - "$round" "$name" "$rps" "$requests" "$(getconf CLK_TCK)" $before $after <<'PY'
import sys
rnd, name, rps, requests, hz, ub, kb, ua, ka = sys.argv[1:]
per = lambda a, b: (int(a) - int(b)) * 1e6 / int(hz) / int(requests)
print(f"| {rnd} | {name} | {float(rps):,.0f} | {per(ua, ub):.1f} | {per(ka, kb):.1f} |")
PY
  done
done
