#!/usr/bin/env bash
# A two-minute tour of nimbus's embedded engine through the `nimbus` command line:
# queues with visibility timeouts and dead-lettering, a topic fanning out with a filter, the ledger.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p nimbus-cli
data=$(mktemp -d)
trap 'rm -rf "$data"' EXIT
nimbus() { ./target/release/nimbus --engine "sqlite://$data/nimbus.db" "$@"; }
step() { printf '\n\033[1m$ nimbus %s\033[0m\n' "$*"; nimbus "$@"; }

step queue create jobs-dlq
step queue create jobs --visibility-timeout 1s --dead-letter jobs-dlq --max-receives 2
step queue send jobs "resize photo-1.jpg" "resize photo-2.jpg" --attr kind=resize
step queue receive jobs --max 10
echo "(not deleted: after 1 s both come back, receive count 2)"
step queue receive jobs --max 10 --wait 5s
step queue depth
echo "(a third receive moves them to the dead-letter queue instead)"
sleep 1.2
step queue receive jobs --max 10 --wait 2s || true
step queue receive jobs-dlq --max 10 --delete

step topic create events
step queue create web-1
step queue create web-2
step topic subscribe events web-1
step topic subscribe events web-2 --filter job_id=42
step topic publish events "progress 10/64" --attr job_id=7
step topic publish events "progress 64/64" --attr job_id=42
step queue receive web-1 --max 10 --delete
step queue receive web-2 --max 10 --delete

step ledger put tasks task-1 claimed-by-worker-a --if-absent
step ledger put tasks task-1 claimed-by-worker-b --if-absent || echo "(the second claim loses: exactly-once effects start here)"
step ledger add jobs done 3
step ledger list tasks
