#!/usr/bin/env bash
# Exports the default model repository that `make serve` serves.
#
#   scripts/default_repository.sh OUT [CHECKPOINT_DIR]
#
#   care_s0_fashion            CARE-S0 classifier, 64x64, Fashion-MNIST          <- model/weights (trained)
#   care_s0_retinanet_fashion  CARE-S0 RetinaNet, 128x128, Fashion-MNIST scenes  <- model/weights (trained)
#   care_s0_fpn_fashion        CARE-S0 Semantic FPN, 128x128, Fashion-MNIST scenes <- model/weights (trained)
#   care_s0_maskrcnn_fashion   CARE-S0 Mask R-CNN, 128x128, Fashion-MNIST scenes  <- model/weights (trained)
# The four demo models (make train-demo, docs/models.md) are their task's default: a request
# with an empty model gets a real answer.
#   care_s0_imagenet          CARE-S0 classifier, 224x224, ImageNet-1k labels  <- care_s0.pth
#   care_s0_retinanet_coco    CARE-S0 RetinaNet, 512x512, COCO labels          <- care_s0_retinanet.pth
#   care_s0_fpn_ade20k        CARE-S0 Semantic FPN, 512x512, ADE20K labels     <- care_s0_fpn.pth
# Each takes its weights from CHECKPOINT_DIR/<file> when that file exists (the authors'
# checkpoints: ImageNet classifier; mmdet RetinaNet; mmseg Semantic FPN), else random
# weights, reported as such (weights.source: random) in config.json, ListModels, the
# server's log and care_model_info.
# A model is re-exported only when its weights source or the exporter (model/carevision)
# changed (OUT/.stamps).
set -euo pipefail
out=$1
checkpoints=${2:-}
src=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH=$src/model
mkdir -p "$out/.stamps"
exporter=$(cat "$src"/model/carevision/*.py | sha256sum | cut -c1-16)

# export_model NAME SOURCE ARGS...: exports NAME with the exporter's ARGS, unless its stamp
# says it was exported from SOURCE by this exporter already.
export_model() {
  local name=$1 source="$2 exporter $exporter"
  shift 2
  source="$source args $*"
  local stamp="$out/.stamps/$name"
  if [ -f "$out/$name/1/model.pt" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$source" ]; then
    echo "default repository: $name is up to date ($source)" >&2
    return
  fi
  rm -rf "${out:?}/$name"
  /usr/bin/python3 -m carevision.export --out "$out" --name "$name" --version 1 "$@"
  echo "$source" > "$stamp"
}

# export_demo NAME WEIGHTS_FILE ARGS...: a model trained by make train-demo (committed weights in
# model/weights, or $DEMO_WEIGHTS)
export_demo() {
  local name=$1 weights=${DEMO_WEIGHTS:-$src/model/weights}/$2
  shift 2
  export_model "$name" "checkpoint $(sha256sum "$weights" | cut -d' ' -f1)" --arch care_s0 \
    --checkpoint "$weights" --default "$@"
}

# export_one NAME CHECKPOINT_FILE ARGS...: the authors' checkpoint from CHECKPOINT_DIR if there,
# else random weights
export_one() {
  local name=$1 checkpoint=$2
  shift 2
  if [ -n "$checkpoints" ] && [ -f "$checkpoints/$checkpoint" ]; then
    export_model "$name" "checkpoint $(sha256sum "$checkpoints/$checkpoint" | cut -d' ' -f1)" "$@" \
      --checkpoint "$checkpoints/$checkpoint"
    return
  elif [ -n "$checkpoints" ]; then
    echo "default repository: $checkpoints/$checkpoint not found: $name gets random weights" >&2
  fi
  export_model "$name" random "$@"
}

labels=$src/model/carevision/labels
export_demo care_s0_fashion care_s0_fashion.pth --task classification --input-size 64 64 --crop-pct 1.0 \
  --labels "$labels/fashion_mnist10.txt" --max-batch-size 64
export_demo care_s0_retinanet_fashion care_s0_retinanet_fashion.pth --task detection --input-size 128 128 \
  --labels "$labels/fashion_mnist10.txt"
export_demo care_s0_fpn_fashion care_s0_fpn_fashion.pth --task segmentation --input-size 128 128 \
  --labels "$labels/fashion_mnist_segmentation11.txt"
export_demo care_s0_maskrcnn_fashion care_s0_maskrcnn_fashion.pth --task instance_segmentation \
  --input-size 128 128 --labels "$labels/fashion_mnist10.txt" --max-batch-size 8
# Batches of 8: the engine's best per runner (make bench, 2 runners x 1 thread: batch 4 108,
# 8 114, 16 110, 32 98 img/s).
export_one care_s0_imagenet care_s0.pth --arch care_s0 --task classification --input-size 224 224 \
  --max-batch-size 8
# Dense models at 512x512 take ~10x a classifier's time per image: smaller batches.
export_one care_s0_retinanet_coco care_s0_retinanet.pth --arch care_s0 --task detection --input-size 512 512 \
  --max-batch-size 4
export_one care_s0_fpn_ade20k care_s0_fpn.pth --arch care_s0 --task segmentation --input-size 512 512 \
  --max-batch-size 4
