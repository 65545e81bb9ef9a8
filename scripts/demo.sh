#!/usr/bin/env bash
# README command 1: install dependencies, build, and run Kiln's main job on the bundled
# tinycoder model: generate text from a prompt, then verify the model against its goldens.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
TARGET=kiln_cli scripts/build.sh  # the kiln executable only; the test command builds the rest
./build/kiln generate models/tinycoder --prompt "def fibonacci(n):" --max-tokens 48 --temperature 0
