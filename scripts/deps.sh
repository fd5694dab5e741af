#!/usr/bin/env bash
# Installs every Debian package careserve needs to build, test and serve (with --bench:
# Node.js and npm for make bench's ONNX Runtime baseline; with --console: those and
# chromium, for the web console's browser test).
# Idempotent: does nothing (not even apt-get update) when all are present.
set -euo pipefail

BUILD_PKGS=(
  build-essential cmake pkg-config git
  libtorch-dev python3-torch python3-torchvision libopenblas0-pthread libopenblas0-openmp libtcmalloc-minimal4
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libopencv-dev libjpeg62-turbo-dev prometheus-cpp-dev libabsl-dev
  libcpp-httplib-dev libssl-dev libbrotli-dev nlohmann-json3-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  python3-pytest python3-numpy python3-grpcio python3-protobuf python3-skimage python3-pil
  python3-opencv python3-yaml python3-matplotlib
  zlib1g-dev
  prometheus curl openssl
  clang libclang-rt-14-dev
  dataset-fashion-mnist
)

missing=()
if [ "${1:-}" = "--bench" ]; then
  # Only Node.js and npm, for make bench's ONNX Runtime baseline (bench/ort): any on PATH
  # will do, else Debian's. Apart, so that the server's build and its image do not carry them.
  command -v node >/dev/null 2>&1 || missing+=(nodejs)
  command -v npm >/dev/null 2>&1 || missing+=(npm)
elif [ "${1:-}" = "--console" ]; then
  command -v node >/dev/null 2>&1 || missing+=(nodejs)
  command -v npm >/dev/null 2>&1 || missing+=(npm)
  dpkg-query -W -f='${Status}\n' chromium 2>/dev/null | grep -q "install ok installed" || missing+=(chromium)
else
  for p in "${BUILD_PKGS[@]}"; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  # kubectl (for `kubectl kustomize` in the deployment tests): any kubectl on PATH will do;
  # else Debian's.
  command -v kubectl >/dev/null 2>&1 || missing+=(kubernetes-client)
fi
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "deps: installing ${missing[*]}" >&2
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
