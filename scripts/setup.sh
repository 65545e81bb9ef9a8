#!/usr/bin/env bash
# Installs every build and test dependency of Kiln: Debian 12 packages, then the npm packages of
# the server tests (tests/openai: the OpenAI client and playwright-core, from its lockfile).
# Idempotent and non-interactive: packages already present are not reinstalled.
set -euo pipefail
PACKAGES=(
  g++ cmake ninja-build ccache pkg-config
  nlohmann-json3-dev libcli11-dev libgtest-dev libgmock-dev libbenchmark-dev
  libsentencepiece-dev libzstd-dev libpcre2-dev libopenblas-dev libcpp-httplib-dev
  libopenmpi-dev openmpi-bin
)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# Node.js and Chromium for the server tests; a Node.js from elsewhere also serves.
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
[ -x /usr/bin/chromium ] || missing+=(chromium)
if ((${#missing[@]})); then
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
openai_dir="$(cd "$(dirname "$0")/.." && pwd)/tests/openai"
if [ ! -d "$openai_dir/node_modules/openai" ] || [ ! -d "$openai_dir/node_modules/playwright-core" ]; then
  (cd "$openai_dir" && npm ci --no-audit --no-fund >/dev/null)
fi
