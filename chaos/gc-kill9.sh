#!/usr/bin/env bash
# Soak: kill -9 the daemon at random moments inside garbage-collection runs, N times (default
# 200), restarting it each time; after every restart every tagged image must pull byte-identical,
# and at the end one full run must leave exactly the live blobs on disk.
# It is the CI test tests/e2e_gc_load.rs::kill9_during_gc_keeps_reachable_images (20 kills there)
# with more kills. Binds only to 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/stowage/target}"
export STOWAGE_CHAOS_KILLS="${1:-200}"
exec cargo test -p stowage --test e2e_gc_load kill9_during_gc_keeps_reachable_images -- --nocapture
