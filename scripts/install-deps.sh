#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Installs memkv's build, test and demo dependencies on Debian 12 (bookworm).
# Idempotent: when every package is already installed it touches neither apt nor the network.
# Runs as root, or through sudo when that is available.
set -euo pipefail

packages=(
  # toolchains and build tools
  build-essential cmake ninja-build pkg-config g++ clang
  # libraries
  libssl-dev libisal-dev libxxhash-dev liburing-dev libibverbs-dev librdmacm-dev libblkid-dev
  libfmt-dev libcli11-dev catch2 libbenchmark-dev
  # tools used by tests, benchmarks and the demo
  iperf3 fio iproute2 procps util-linux e2fsprogs python3 xxhash
)

log() { printf 'install-deps: %s\n' "$*"; }

if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
  log "not a Debian system (no dpkg-query/apt-get); install the equivalents of:"
  log "  ${packages[*]}"
  exit 0
fi

missing=()
for pkg in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
  if [[ "$status" != "installed" ]]; then
    missing+=("$pkg")
  fi
done

if ((${#missing[@]} == 0)); then
  log "all ${#packages[@]} packages already installed; nothing to do"
  exit 0
fi

log "missing: ${missing[*]}"
if [[ $(id -u) -eq 0 ]]; then
  as_root=(env DEBIAN_FRONTEND=noninteractive)
elif command -v sudo >/dev/null 2>&1; then
  as_root=(sudo env DEBIAN_FRONTEND=noninteractive)
else
  log "error: not root and sudo is not available; as root, run:"
  log "  apt-get update && apt-get install -y --no-install-recommends ${missing[*]}"
  exit 1
fi

log "running: apt-get update"
"${as_root[@]}" apt-get update
log "running: apt-get install -y --no-install-recommends ${missing[*]}"
"${as_root[@]}" apt-get install -y --no-install-recommends "${missing[@]}"
log "done"
