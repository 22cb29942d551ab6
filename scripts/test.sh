#!/usr/bin/env bash
# Runs the whole test suite: unit, model-based, and end-to-end tests against the real daemon
# with real clients (skopeo, umoci). Installs what the tests need first.
#
# One cargo invocation compiles everything once (RocksDB included, 20-35 minutes cold on
# 2 cores); the target dir is kept in $HOME/.cache/stowage/target between runs and clones.
# Long soak and chaos runs are not part of this; see chaos/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh --test
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/stowage/target}"
mkdir -p "$CARGO_TARGET_DIR"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
exec cargo test --workspace --all-targets --no-fail-fast "$@"
