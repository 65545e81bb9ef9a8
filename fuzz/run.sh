#!/usr/bin/env bash
# Builds the tokenizer and chat-template fuzz targets with clang's libFuzzer + ASan + UBSan
# (not part of the normal build or tests) and runs each for SECONDS (default 120).
#   fuzz/run.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH="${1:-120}"
for p in clang libclang-rt-14-dev; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="${missing:-} $p"
done
if [ -n "${missing:-}" ]; then
  SUDO=""; [ "$(id -u)" != 0 ] && SUDO=sudo
  $SUDO apt-get install -y -q --no-install-recommends $missing
fi
OUT=build-fuzz
mkdir -p "$OUT"
SOURCES=(src/kiln/tokenizer/*.cc src/kiln/io/json.cc src/kiln/io/whole_file.cc src/kiln/core/mapped_file.cc
         src/kiln/chat/jinja_*.cc)
SOURCES=("${SOURCES[@]/*_test.cc/}")
FLAGS=(-std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
       -Isrc -DKILN_TEST_DATA="\"$PWD/tests/data\"")
LIBS=($(pkg-config --libs libpcre2-8 libzstd sentencepiece))
for target in tokenizer_json_fuzz tokenizer_encode_fuzz jinja_fuzz; do
  clang++ "${FLAGS[@]}" "fuzz/$target.cc" ${SOURCES[@]} "${LIBS[@]}" -o "$OUT/$target"
done
# Seed corpora: real tokenizer files (small ones), the shared test strings, the jinja cases.
mkdir -p "$OUT/corpus_json" "$OUT/corpus_text"
cp tests/data/tokenizers/tinycoder/tokenizer.json "$OUT/corpus_json/tinycoder.json"
zstd -dcq tests/data/tokenizers/llama2/tokenizer.json.zst > "$OUT/corpus_json/llama2.json"
python3 - "$OUT/corpus_text" "$OUT/corpus_jinja" <<'PY'
import json, os, sys
for i, s in enumerate(json.load(open("tests/data/tokenizers/strings.json"))[:186]):
    open(f"{sys.argv[1]}/s{i}", "wb").write(s.encode("utf-8", "surrogatepass"))
os.makedirs(sys.argv[2], exist_ok=True)
for i, case in enumerate(json.load(open("tests/data/chat_templates/jinja_cases.json"))["cases"]):
    open(f"{sys.argv[2]}/c{i}", "w").write(case["template"])
PY
"$OUT/tokenizer_json_fuzz" -max_total_time="$SECONDS_EACH" -max_len=300000 -rss_limit_mb=4096 \
  -dict=fuzz/json.dict "$OUT/corpus_json" 2>&1 | tail -3
"$OUT/tokenizer_encode_fuzz" -max_total_time="$SECONDS_EACH" -max_len=4096 "$OUT/corpus_text" \
  2>&1 | tail -3
"$OUT/jinja_fuzz" -max_total_time="$SECONDS_EACH" -max_len=8192 -rss_limit_mb=4096 \
  "$OUT/corpus_jinja" 2>&1 | tail -3
