#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh) and starts the sensor, printing one JSON event per line.
# Extra arguments go to `sensor run` (e.g. --config deploy/sensor.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >&2
exec target/release/sensor run "$@"
