#!/usr/bin/env bash
# Starts `kiln serve` (tinycoder, Qwen3's chat template) on a free port, runs client_test.mjs
# with the real OpenAI client against it, then page_test.mjs (the chat page in headless
# Chromium; its screenshot goes beside the binary, chat_page.png). Usage: run.sh KILN_BINARY
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
[ -d "$here/node_modules/playwright-core" ] || (cd "$here" && npm ci --no-audit --no-fund >/dev/null)
source "$here/start_server.sh"
# --prefill-chunk takes 0, a number of tokens or auto; anything else is refused by name.
if out="$("$1" serve "$root/models/tinycoder" --prefill-chunk fast 2>&1)"; then
  echo "kiln serve accepted --prefill-chunk fast"; exit 1
fi
grep -q "must be auto or a number of tokens" <<<"$out" || { echo "$out"; exit 1; }
# The bf16 GEMV of the steps, from the startup line: rounded unless --bf16-gemv or
# KILN_BF16_GEMV says otherwise.
gemv_mode() {
  start_kiln_server "$@" >/dev/null
  sed -n 's/.*bf16 GEMV \([a-z]*\)).*/\1/p' "$server_log"
  kill "$server"
  wait "$server" 2>/dev/null || true
  rm -f "$server_log"
}
for want in "rounded|" "split|--bf16-gemv split" "widen|KILN_BF16_GEMV=widen"; do
  mode="${want%%|*}" how="${want#*|}"
  case "$how" in
    KILN_BF16_GEMV=*) got="$(export "$how"; gemv_mode "$1" "$root/models/tinycoder")" ;;
    *) got="$(unset KILN_BF16_GEMV; gemv_mode "$1" "$root/models/tinycoder" $how)" ;;
  esac
  [ "$got" = "$mode" ] || { echo "kiln serve ${how:-(no option)}: bf16 GEMV '$got', want $mode"; exit 1; }
  echo "kiln serve ${how:-(no option)}: bf16 GEMV $got"
done
start_kiln_server "$1" "$root/models/tinycoder" --parallel 4 --api-key sk-kiln-test \
  --chat-template "$root/tests/data/tokenizers/qwen3/tokenizer_config.json"
node "$here/client_test.mjs" "http://127.0.0.1:$port" sk-kiln-test
node "$here/page_test.mjs" "http://127.0.0.1:$port" sk-kiln-test "$(dirname "$1")/chat_page.png"
