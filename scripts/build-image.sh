#!/usr/bin/env bash
# Builds the sensor's container image without Docker and without any container registry:
# a Debian bookworm minbase root filesystem (glibc, so the host's libnvidia-ml.so.1, which the
# NVIDIA container toolkit mounts into the container, can be dlopened) made by mmdebstrap from
# Debian's apt mirror, plus the sensor binary, imported with `podman import` as
# localhost/gpu-sensor:TAG.
#
#   scripts/build-image.sh [--save] [--refresh] [BINARY] [TAG]      (as root)
#
#   BINARY     default target/release/sensor (dynamically linked against this machine's glibc;
#              the rootfs is the same Debian release, and every library `ldd` lists is checked)
#   TAG        default: the version `BINARY --version` prints (e.g. 0.1.0)
#   --save     also write target/gpu-sensor-image.tar (`podman save`, docker-archive format)
#   --refresh  rebuild the cached rootfs (security updates) instead of reusing it
#
# The rootfs (without the binary) is cached in target/image-cache/, keyed by a hash of the
# package list and mmdebstrap options; a rerun only appends the binary to a copy of that tar and
# imports it (seconds). Needs: mmdebstrap podman runc uidmap (scripts/setup.sh installs them).
#
# Running it the way the DaemonSet does (deploy/kubernetes: hostPID, capabilities BPF PERFMON
# SYS_ADMIN SYS_PTRACE SYS_RESOURCE only, read-only root, seccomp unconfined, hostPath mounts of
# /sys/kernel/btf, /sys/kernel/tracing, /sys/fs/cgroup and the spool), with a stand-in NVML
# (tests/fixtures/nvml-stub) mounted where the NVIDIA container toolkit puts the real one. On a
# hybrid-cgroup host (v1 + v2 at /sys/fs/cgroup/unified) crun refuses; runc and cgroupfs work.
# Verified on a Debian bookworm host, kernel 6.18, podman 4.3.1, runc 1.1.5:
#
#   podman --cgroup-manager=cgroupfs run --rm --name gpu-sensor-test --runtime runc \
#     --ulimit nofile=1024:1024 --ulimit nproc=4096:4096 \
#     --pid=host --network=host --read-only \
#     --cap-drop=all --cap-add=BPF,PERFMON,SYS_ADMIN,SYS_PTRACE,SYS_RESOURCE \
#     --security-opt seccomp=unconfined --security-opt apparmor=unconfined \
#     -v /sys/kernel/btf:/sys/kernel/btf:ro \
#     -v /sys/kernel/tracing:/sys/kernel/tracing \
#     -v /sys/fs/cgroup:/sys/fs/cgroup:ro \
#     -v "$SPOOL":/var/lib/gpu-sensor \
#     -v "$CONFIG_DIR":/etc/gpu-sensor/config:ro \
#     -v "$STUB_DIR"/libnvidia-ml.so.1:/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1:ro \
#     -v "$STUB_DIR"/nvml.conf:/etc/nvml-stub/nvml.conf:ro \
#     -e NVML_STUB_CONFIG=/etc/nvml-stub/nvml.conf \
#     localhost/gpu-sensor:0.1.0 run --config /etc/gpu-sensor/config/sensor.toml
#
#   with $CONFIG_DIR/sensor.toml holding at least `[metrics]` `listen = "127.0.0.1:19943"` and,
#   because the root is read-only, `[alerting]` `spool_dir = "/var/lib/gpu-sensor/spool"` (the
#   default), and $STUB_DIR/libnvidia-ml.so.1 built by
#   `cc -shared -fPIC -O2 -o libnvidia-ml.so.1 tests/fixtures/nvml-stub/nvml_stub.c`.
#   (Without --network=host, publish the metrics port instead: -p 19943:19943 and listen on
#   0.0.0.0.) It logs, on stderr:
#     INFO sensor::gpu::nvml: NVML sampling every 5s devices=1
#     INFO sensor::run: metrics on http://127.0.0.1:19943/metrics
#     INFO sensor::run: sensor ready hooks=17 rules=36 ebpf="…"
#   (17 hooks: the last is cgroup_skb/egress:/sys/fs/cgroup/unified on this hybrid host.) Stop it
#   with `podman --cgroup-manager=cgroupfs kill --signal INT gpu-sensor-test` (it logs "SIGINT:
#   shutting down", "detached; bye" and exits 0), not with `timeout podman run …`: timeout
#   signals its whole process group, which includes the `runc kill` podman spawns to forward
#   the signal, and the container can be left running.
set -euo pipefail
cd "$(dirname "$0")/.."

SAVE=0
REFRESH=0
ARGS=()
for a in "$@"; do
  case "$a" in
    --save) SAVE=1 ;;
    --refresh) REFRESH=1 ;;
    -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "build-image.sh: unknown option $a" >&2; exit 2 ;;
    *) ARGS+=("$a") ;;
  esac
done
BINARY=${ARGS[0]:-target/release/sensor}
TAG=${ARGS[1]:-}

if [ "$(id -u)" != 0 ]; then
  echo "build-image.sh: run as root (mmdebstrap and podman import)" >&2
  exit 1
fi
for tool in mmdebstrap podman runc ldd dpkg-query sha256sum tar flock; do
  command -v "$tool" >/dev/null || { echo "build-image.sh: $tool not found (scripts/setup.sh installs it)" >&2; exit 1; }
done
[ -x "$BINARY" ] || { echo "build-image.sh: $BINARY is not an executable (cargo build --release --package sensor)" >&2; exit 1; }
if [ -z "$TAG" ]; then
  # "sensor 0.1.0 (ebpf sha256 …)" -> 0.1.0
  TAG=$("$BINARY" --version | awk '{print $2}')
fi
[ -n "$TAG" ] || { echo "build-image.sh: could not read a version from $BINARY --version" >&2; exit 1; }
IMAGE=localhost/gpu-sensor:$TAG

SUITE=bookworm
# ca-certificates: the sinks are HTTPS (the binary also carries Mozilla's roots, ureq's
# webpki-roots; the system store serves anything else run in the container). The shared
# libraries the binary links are added by package (the owners of what `ldd` lists on this
# machine: libc6, libgcc-s1), so a binary that starts to need another library changes the key
# and gets a rootfs that has it.
PKGS=(ca-certificates)
mapfile -t LIBS < <(ldd "$BINARY" | awk '/=>/ && $3 ~ /^\// {print $3} !/=>/ && $1 ~ /^\// {print $1}')
for lib in "${LIBS[@]}"; do
  real=$(readlink -f "$lib")
  owner=$(dpkg-query -S "$lib" 2>/dev/null || dpkg-query -S "$real" 2>/dev/null ||
          dpkg-query -S "${lib#/usr}" 2>/dev/null || true)
  owner=${owner%%:*}
  [ -n "$owner" ] || { echo "build-image.sh: no Debian package owns $lib (needed by $BINARY)" >&2; exit 1; }
  PKGS+=("$owner")
done
mapfile -t PKGS < <(printf '%s\n' "${PKGS[@]}" | sort -u)
INCLUDE=$(IFS=,; echo "${PKGS[*]}")

# Smaller image: no docs (copyright files kept), man pages, locales; no apt lists or caches.
MMDEBSTRAP_OPTS=(
  --variant=minbase --mode=root --format=tar --include="$INCLUDE"
  # merged-/usr by symlinks + usr-is-merged, instead of the usrmerge package, which pulls in
  # perl (the rootfs tar is 134 MB with it, 85 MB without).
  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
  --dpkgopt='path-exclude=/usr/share/doc/*'
  --dpkgopt='path-include=/usr/share/doc/*/copyright'
  --dpkgopt='path-exclude=/usr/share/man/*'
  --dpkgopt='path-exclude=/usr/share/info/*'
  --dpkgopt='path-exclude=/usr/share/locale/*'
  --dpkgopt='path-exclude=/usr/share/lintian/*'
  --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/var/cache/debconf/*-old "$1"/var/log/apt/* "$1"/var/log/dpkg.log "$1"/var/log/alternatives.log'
  --customize-hook='mkdir -p "$1"/etc/gpu-sensor/config "$1"/etc/gpu-sensor/rules "$1"/etc/gpu-sensor/secrets "$1"/var/lib/gpu-sensor'
)
KEY=$(printf '%s\n' "$SUITE" "${MMDEBSTRAP_OPTS[@]}" | sha256sum | cut -c1-16)
CACHE_DIR=target/image-cache
ROOTFS=$CACHE_DIR/rootfs-$SUITE-$KEY.tar
mkdir -p "$CACHE_DIR"
# One build at a time (parallel test runs share the cache and the tag).
exec 9>"$CACHE_DIR/.lock"
flock 9

t0=$(date +%s)
if [ "$REFRESH" = 1 ] || [ ! -s "$ROOTFS" ]; then
  echo "build-image.sh: building the $SUITE rootfs ($INCLUDE) -> $ROOTFS"
  if ! mmdebstrap --quiet "${MMDEBSTRAP_OPTS[@]}" "$SUITE" "$ROOTFS.partial" \
      >"$CACHE_DIR/mmdebstrap.log" 2>&1; then
    tail -n 30 "$CACHE_DIR/mmdebstrap.log" >&2
    echo "build-image.sh: mmdebstrap failed (full log: $CACHE_DIR/mmdebstrap.log)" >&2
    rm -f "$ROOTFS.partial"
    exit 1
  fi
  mv "$ROOTFS.partial" "$ROOTFS"
  # Older cached rootfs tarballs (other keys) are not needed any more.
  find "$CACHE_DIR" -maxdepth 1 -name "rootfs-$SUITE-*.tar" ! -name "$(basename "$ROOTFS")" -delete
else
  echo "build-image.sh: reusing $ROOTFS (--refresh rebuilds it)"
fi

# Every library the binary needs must be in the rootfs (bookworm is merged-/usr: /lib -> usr/lib).
LISTING=$(tar -tf "$ROOTFS")
for lib in "${LIBS[@]}"; do
  name=$(basename "$lib")
  if ! grep -qE "^\./(usr/)?(lib|lib64)/(x86_64-linux-gnu/)?$name\$" <<<"$LISTING"; then
    echo "build-image.sh: $lib (needed by $BINARY) is not in $ROOTFS" >&2
    exit 1
  fi
done

# The binary goes into a copy of the cached tar (no image layers, no build container).
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-sensor-image.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/usr/local/bin"
install -m 0755 "$BINARY" "$WORK/usr/local/bin/sensor"
cp "$ROOTFS" "$WORK/rootfs.tar"
tar --append -f "$WORK/rootfs.tar" -C "$WORK" --owner=0 --group=0 --numeric-owner ./usr/local/bin/sensor

OLD_ID=$(podman image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
podman import \
  --change 'ENTRYPOINT ["/usr/local/bin/sensor"]' \
  --change 'CMD ["run","--config","/etc/gpu-sensor/config/sensor.toml"]' \
  --change "LABEL org.opencontainers.image.title=gpu-sensor org.opencontainers.image.version=$TAG" \
  --message "gpu-sensor $TAG ($("$BINARY" --version))" \
  --quiet "$WORK/rootfs.tar" "$IMAGE" >/dev/null

# The previous build of this tag, now untagged, goes (unless a container still uses it).
NEW_ID=$(podman image inspect --format '{{.Id}}' "$IMAGE")
if [ -n "$OLD_ID" ] && [ "$OLD_ID" != "$NEW_ID" ]; then
  podman rmi "$OLD_ID" >/dev/null 2>&1 || true
fi

# The image must start: the binary's loader and libraries are there.
podman --cgroup-manager=cgroupfs run --rm --runtime runc --network=none \
  --ulimit nofile=1024:1024 --ulimit nproc=4096:4096 "$IMAGE" --version

if [ "$SAVE" = 1 ]; then
  rm -f target/gpu-sensor-image.tar
  podman save --quiet --format docker-archive -o target/gpu-sensor-image.tar "$IMAGE"
  echo "build-image.sh: saved target/gpu-sensor-image.tar ($(du -h target/gpu-sensor-image.tar | cut -f1))"
fi

size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
echo "build-image.sh: built $IMAGE: $((size / 1024 / 1024)) MiB ($size bytes) in $(( $(date +%s) - t0 )) s"
