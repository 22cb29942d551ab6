#!/usr/bin/env bash
# Builds and runs the Stowage daemon on its embedded default: local file system blobs and the
# RocksDB index in ./stowage-data, OCI API on 127.0.0.1:5000, admin gRPC on 127.0.0.1:5001.
# Extra arguments go to `stowage serve` (see `stowage serve --help`).
#
# The first build compiles RocksDB (20-35 minutes on 2 cores); the target dir is kept in
# $HOME/.cache/stowage/target so later builds take seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/stowage/target}"
exec cargo run --release -p stowage -- serve --data-dir "${STOWAGE_DATA_DIR:-./stowage-data}" "$@"
