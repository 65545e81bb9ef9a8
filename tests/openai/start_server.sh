# Sourced by tests/openai/run.sh and bench/serve.sh: start_kiln_server KILN ARGS... starts
# `KILN serve ARGS... --port 0`, waits until it listens and sets $server (its pid), $port and
# $server_log (its output); the server is killed when the calling shell exits.
start_kiln_server() {
  local kiln="$1"
  shift
  local log
  log="$(mktemp)"
  server_log="$log"  # its output, for callers that read the startup line
  "$kiln" serve "$@" --port 0 >"$log" 2>&1 &
  server=$!
  trap "kill $server 2>/dev/null; rm -f '$log'" EXIT
  port=""
  for _ in $(seq 1 3000); do  # up to 5 minutes: a 1B model on a loaded machine
    port="$(sed -n 's|.*http://127.0.0.1:\([0-9]*\).*|\1|p' "$log")"
    [ -n "$port" ] && return 0
    kill -0 $server 2>/dev/null || { cat "$log"; return 1; }
    sleep 0.1
  done
  echo "the server did not start"
  cat "$log"
  return 1
}
