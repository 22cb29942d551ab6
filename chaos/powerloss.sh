#!/usr/bin/env bash
# Soak: power cuts (every write not yet flushed to the device is lost) during pushes, GC runs and
# replication, 150 of them, each followed by a remount, a restart and the checks of
# tests/e2e_powerloss.rs (acknowledged images pull byte-identical, acknowledged deletes stay,
# fsck finds nothing, the replica converges). CI runs the same test with 30 cuts.
# Needs root and /dev/fuse. STOWAGE_POWERLOSS_SEED=N replays a run. Binds only to 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/stowage/target}"
export STOWAGE_CHAOS_LONG=1
exec cargo test --workspace --test e2e_powerloss -- --nocapture
