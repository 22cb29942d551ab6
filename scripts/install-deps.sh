#!/usr/bin/env bash
# Installs what building Stowage needs (and, with --test, what its tests need) from Debian's
# packages. Idempotent: packages already present are skipped, so repeated runs cost nothing.
#
#   scripts/install-deps.sh          build dependencies (libclang for RocksDB's bindings, a C++
#                                    compiler for RocksDB itself)
#   scripts/install-deps.sh --test   plus the real clients and peers the tests start:
#                                    skopeo, umoci, docker-registry (CNCF Distribution)
set -euo pipefail

want=(libclang-dev clang g++ make)
if [[ "${1:-}" == "--test" ]]; then
    want+=(skopeo umoci docker-registry)
fi

missing=()
for p in "${want[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done
if [[ ${#missing[@]} -eq 0 ]]; then
    exit 0
fi

SUDO=""
if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || { echo "need root or sudo to install: ${missing[*]}" >&2; exit 1; }
    SUDO="sudo"
fi
echo "installing: ${missing[*]}" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
