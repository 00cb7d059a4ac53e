#!/usr/bin/env bash
# Runs every test of nimbus on a fresh machine: installs what the tests need, then the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --locked
