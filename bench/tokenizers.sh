#!/usr/bin/env bash
# Tokenizer throughput, Kiln against HF's Rust tokenizers (npm @anush008/tokenizers, installed
# into build/bench/node_modules on first use), for llama3 and gpt2 by default.
#   bench/tokenizers.sh [TOKENIZER_DIR...]
set -euo pipefail
cd "$(dirname "$0")/.."
NODE_DIR=build/bench/node
if [ ! -d "$NODE_DIR/node_modules/@anush008/tokenizers" ]; then
  mkdir -p "$NODE_DIR"
  (cd "$NODE_DIR" && npm init -y >/dev/null &&
    npm install --no-audit --no-fund @anush008/tokenizers@0.6.0 \
      @anush008/tokenizers-linux-x64-gnu@0.6.0 >/dev/null)
fi
cmake --build build --target kiln_tokenizer_bench >/dev/null
if [ $# -eq 0 ]; then set -- tests/data/tokenizers/llama3 tests/data/tokenizers/gpt2; fi
build/bench/kiln_tokenizer_bench --node-modules "$PWD/$NODE_DIR/node_modules" "$@"
