#!/usr/bin/env bash
# Real-GPU validation: runs the static sensor beside `nvidia-smi -q`, a short PyTorch training
# loop and a short mining-like CuPy hash kernel, then prints the GPU sessions the sensor saw and
# the NVML join. Needs: root, an NVIDIA GPU with its driver, python3 with torch and cupy,
# nvidia-smi. No compilers: build the binary elsewhere with `cargo xtask build --static` and
# pass its path.
#   usage: tests/gpu/run.sh [path/to/static/sensor] [seconds-per-workload]
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="${1:-$here/../../target/x86_64-unknown-linux-gnu/release/sensor}"
secs="${2:-12}"
out="${OUT:-/tmp}/gpu-sensor-events.jsonl"
log="${OUT:-/tmp}/gpu-sensor.log"

mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing || true
echo "== sensor: $("$bin" --version)"
echo "== /proc/devices GPU lines:"; grep -E 'nvidia|kfd|drm' /proc/devices
cat > /tmp/gpu-sensor.toml <<CFG
[gpu]
nvml_interval_secs = 2
CFG
"$bin" run --config /tmp/gpu-sensor.toml >"$out" 2>"$log" &
spid=$!
for _ in $(seq 50); do grep -q sensor_start "$out" 2>/dev/null && break; sleep 0.2; done

echo "== nvidia-smi -q"; nvidia-smi -q >/dev/null; echo "rc=$?"
echo "== training ($secs s)"; timeout $((secs + 60)) python3 "$here/train.py" "$secs"; echo "rc=$?"
echo "== mining-like ($secs s)"; timeout $((secs + 60)) python3 "$here/mine.py" "$secs"; echo "rc=$?"
sleep 3
kill -INT "$spid"; wait "$spid"
echo "== sensor log (tail)"; tail -5 "$log"
echo "== what the sensor saw"
python3 "$here/summary.py" "$out"
