#!/usr/bin/env bash
# Runs the whole test suite (unit + integration tests as root), after setup.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
command -v cargo >/dev/null 2>&1 || export PATH="/usr/bin:$PATH"
exec cargo xtask test
