#!/usr/bin/env bash
# Replication under network faults, for longer than CI runs it: two real daemons with the
# project's fault proxy between them (delays, cuts, stalls, resets, partitions in turn) while
# images are pushed continuously; after healing, every last tag must pull byte-identical from
# the target and anti-entropy must find no difference.
#
#   chaos/repl-faults.sh [SECONDS]     (default 300)
#
# Also runs the kill -9 test with a larger blob when STOWAGE_REPL_BIG_MIB is set.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/stowage/target}"
export STOWAGE_CHAOS_SECONDS="${1:-300}"
tests=(network_faults_between_sites_then_anti_entropy_finds_no_difference)
if [[ -n "${STOWAGE_REPL_BIG_MIB:-}" ]]; then
    tests+=(kill9_of_the_target_during_a_large_transfer_resumes_from_its_offset)
fi
for t in "${tests[@]}"; do
    cargo test -p stowage --test e2e_repl -- --exact "$t" --nocapture
done
