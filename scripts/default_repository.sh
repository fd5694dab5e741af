#!/usr/bin/env bash
# Exports the default model repository that `make serve` serves.
#
#   scripts/default_repository.sh OUT [CHECKPOINT_DIR]
#
# OUT/care_s0_imagenet: CARE-S0 classifier, 224x224, ImageNet-1k labels. With
# CHECKPOINT_DIR/care_s0.pth (the authors' ImageNet checkpoint) its weights are the
# authors'; without, random weights, reported as such (weights.source: random) in
# config.json, ListModels, the server's log and care_model_info.
# A model is re-exported only when its weights source changed (OUT/.stamps).
set -euo pipefail
out=$1
checkpoints=${2:-}
src=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH=$src/model
mkdir -p "$out/.stamps"

# export_one NAME CHECKPOINT_FILE ARGS...
export_one() {
  local name=$1 checkpoint=$2
  shift 2
  local source="random"
  local args=("$@")
  if [ -n "$checkpoints" ] && [ -f "$checkpoints/$checkpoint" ]; then
    source="checkpoint $(sha256sum "$checkpoints/$checkpoint" | cut -d' ' -f1)"
    args+=(--checkpoint "$checkpoints/$checkpoint")
  elif [ -n "$checkpoints" ]; then
    echo "default repository: $checkpoints/$checkpoint not found: $name gets random weights" >&2
  fi
  local stamp="$out/.stamps/$name"
  if [ -f "$out/$name/1/model.pt" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$source" ]; then
    echo "default repository: $name is up to date ($source)" >&2
    return
  fi
  rm -rf "${out:?}/$name"
  /usr/bin/python3 -m carevision.export --out "$out" --name "$name" --version 1 "${args[@]}"
  echo "$source" > "$stamp"
}

export_one care_s0_imagenet care_s0.pth --arch care_s0 --task classification --input-size 224 224
