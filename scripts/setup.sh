#!/usr/bin/env bash
# Installs everything the sensor needs to build, run and be tested on a Debian-like machine, then
# builds it. Idempotent: a second run only checks and rebuilds what changed.
#   Debian packages: rustc-web cargo-web rust-web-src (rustc 1.96, used with RUSTC_BOOTSTRAP=1
#   for the eBPF crate) and llvm-22-dev; bpf-linker 0.13.0 built against LLVM 22; the real tools
#   the integration tests drive (openssh, autossh, socat, ncat, dropbear, paramiko), and the
#   benign corpus: Debian's PyTorch (CPU; torchrun) and a venv with Jupyter Lab and TensorBoard.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "setup.sh: run as root (it installs packages and the sensor loads eBPF programs)" >&2
  exit 1
fi

PKGS=(rustc-web cargo-web rust-web-src llvm-22-dev build-essential pkg-config ca-certificates
      openssh-server openssh-client autossh socat ncat dropbear-bin python3 iproute2 procps
      prometheus prometheus-alertmanager curl openssl python3-paramiko git
      python3-torch python3-venv mmdebstrap podman runc uidmap)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup.sh: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# `kubectl kustomize` renders the manifests for tests/tests/deploy.rs: Debian's
# kubernetes-client, unless a kubectl is already there (another package's, such as
# google-cloud-cli's, owns /usr/bin/kubectl, and dpkg refuses a second owner).
if ! command -v kubectl >/dev/null 2>&1; then
  echo "setup.sh: installing kubernetes-client (kubectl)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends kubernetes-client >/dev/null
fi

# The benign corpus (tests/tests/incidents.rs): Jupyter Lab and TensorBoard are not packaged
# for this Debian release; a venv over Debian's python3 (which has Debian's torch) holds them.
CORPUS=/opt/gpu-sensor-corpus
if [ ! -x "$CORPUS/bin/jupyter-lab" ] || [ ! -x "$CORPUS/bin/tensorboard" ]; then
  echo "setup.sh: creating $CORPUS (jupyterlab, tensorboard)"
  /usr/bin/python3 -m venv --system-site-packages "$CORPUS"
  "$CORPUS/bin/pip" install --quiet --disable-pip-version-check 'jupyterlab==4.*' 'tensorboard==2.*'
fi

# The agent builds with the machine's cargo (rustup's when present, else Debian's cargo-web).
if ! command -v cargo >/dev/null 2>&1; then
  export PATH="/usr/bin:$PATH"
fi
export PATH="$HOME/.cargo/bin:$PATH"

if ! bpf-linker --version 2>/dev/null | grep -q "0\.13\.0"; then
  echo "setup.sh: building bpf-linker 0.13.0 against LLVM 22 (a few minutes, once)"
  LLVM_PREFIX=/usr/lib/llvm-22 cargo install --locked bpf-linker --version 0.13.0 \
    --no-default-features --features llvm-22 ||
  LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker --version 0.13.0 \
    --no-default-features --features llvm-22
fi

# Decodes the sensor's OTLP export in tests/tests/export.rs (the official protobuf classes).
if ! python3 -c "import opentelemetry.proto.collector.logs.v1.logs_service_pb2" >/dev/null 2>&1; then
  echo "setup.sh: installing opentelemetry-proto (PyPI)"
  python3 -m pip install --quiet opentelemetry-proto 2>/dev/null ||
    python3 -m pip install --quiet --break-system-packages opentelemetry-proto
fi

# Validates the Kubernetes manifests in tests/tests/deploy.rs (schemas ship in the package).
if ! python3 -m kubernetes_validate --version >/dev/null 2>&1; then
  echo "setup.sh: installing kubernetes-validate (PyPI)"
  python3 -m pip install --quiet kubernetes-validate 2>/dev/null ||
    python3 -m pip install --quiet --break-system-packages kubernetes-validate ||
    echo "setup.sh: kubernetes-validate unavailable; the manifest schema test will fail" >&2
fi

cargo build --release --package sensor
echo "setup.sh: built $(pwd)/target/release/sensor: $(target/release/sensor --version)"
