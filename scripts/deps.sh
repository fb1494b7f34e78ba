#!/usr/bin/env bash
# Installs, from Debian, whatever the build needs and is missing.
# Usage: scripts/deps.sh [extra-package ...]. Needs root (or sudo) only when
# something is missing; runs `apt-get update` once, only then.
set -euo pipefail

packages=(cmake ninja-build g++ clang libclang-rt-dev libeigen3-dev catch2 libbenchmark-dev zlib1g-dev
          pkg-config python3 "$@")
SUDO=""
[[ $(id -u) -ne 0 ]] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
updated=0
update_once() { ((updated)) || { $SUDO apt-get update -qq; updated=1; }; }

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "deps: installing ${missing[*]}"
  update_once
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Optional: the BLAS product engine (MUON_USE_BLAS), Open MPI (the
# distributed optimizer's tests), libtorch (the muon::torch adapter), the
# Fashion-MNIST data and the fortunes text (the examples' short runs).
# Missing, they only skip their test stages.
for p in libopenblas-dev libopenmpi-dev openmpi-bin libtorch-dev dataset-fashion-mnist fortunes; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" && continue
  update_once || true
  $SUDO apt-get install -y -qq --no-install-recommends "$p" \
    >/dev/null 2>&1 || echo "deps: optional $p not installed"
done
