#!/usr/bin/env bash
# Installs what building Stowage needs (and, with --test, what its tests need) from Debian's
# packages. Idempotent: packages already present are skipped, so repeated runs cost nothing.
#
#   scripts/install-deps.sh          build dependencies (libclang for RocksDB's bindings, a C++
#                                    compiler for RocksDB itself)
#   scripts/install-deps.sh --test   plus the real clients and peers the tests start:
#                                    skopeo, umoci, podman, buildah, docker-registry (CNCF
#                                    Distribution), and moto's S3 server and the oras client
#                                    (oras-py) in $HOME/.cache/stowage/venv, and the
#                                    Azurite Azure Blob emulator (from npm; needs node and npm)
#                                    in $HOME/.cache/stowage/azurite
set -euo pipefail

want=(libclang-dev clang g++ make)
if [[ "${1:-}" == "--test" ]]; then
    want+=(skopeo umoci podman buildah docker-registry)
    # The disk-full and power-loss tests make ext4 file systems on loop devices (mount, losetup).
    want+=(e2fsprogs mount)
    # moto's S3 server (from PyPI) in a virtualenv: the S3 backend's tests start it.
    if ! python3 -c "import venv, ensurepip" 2>/dev/null; then
        want+=(python3-venv)
    fi
fi

missing=()
for p in "${want[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done
install_moto() {
    local venv="$HOME/.cache/stowage/venv"
    if [[ ! -x "$venv/bin/moto_server" ]]; then
        echo "installing moto's S3 server into $venv" >&2
        python3 -m venv "$venv"
        "$venv/bin/pip" install -q "moto[server]==5.*" >&2
    fi
    # oras-py (an OCI artifact client with registry logins): tests/e2e_clients_auth.rs drives
    # it through tests/clients/oras_client.py.
    if ! "$venv/bin/python" -c "import oras.client" 2>/dev/null; then
        echo "installing oras-py into $venv" >&2
        "$venv/bin/pip" install -q "oras==0.2.*" >&2
    fi
}
# Azurite's blob server (from npm): the Azure backend's tests start it.
install_azurite() {
    local dir="$HOME/.cache/stowage/azurite"
    if [[ -x "$dir/node_modules/.bin/azurite-blob" ]]; then
        return 0
    fi
    command -v npm >/dev/null || { echo "need node and npm to install Azurite" >&2; exit 1; }
    echo "installing Azurite into $dir" >&2
    npm install --prefix "$dir" --no-audit --no-fund --loglevel=error azurite@3 >&2
}
if [[ ${#missing[@]} -eq 0 ]]; then
    if [[ "${1:-}" == "--test" ]]; then install_moto; install_azurite; fi
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
if [[ "${1:-}" == "--test" ]]; then install_moto; install_azurite; fi
