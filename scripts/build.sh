#!/usr/bin/env bash
# Configures and builds Kiln into ./build (Release). Extra arguments go to cmake configure,
# e.g. scripts/build.sh -DKILN_SANITIZE=ON. BUILD_DIR overrides the folder; TARGET builds one
# target only (TARGET=kiln_cli: the kiln executable, without the test suite).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR="${BUILD_DIR:-build}"
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
cmake --build "$BUILD_DIR" -j "$(nproc)" ${TARGET:+--target "$TARGET"}
