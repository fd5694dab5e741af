#!/usr/bin/env bash
# Node.js and npm for make bench's ONNX Runtime baseline (bench/ort): any on PATH will do,
# else Debian's. Kept out of deps.sh so that the server's build (and its image) does not
# carry them. Idempotent.
set -euo pipefail
missing=()
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
[ ${#missing[@]} -eq 0 ] && exit 0
echo "bench_deps: installing ${missing[*]}" >&2
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
