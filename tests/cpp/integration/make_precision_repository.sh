#!/usr/bin/env bash
# Exports the repository of the precision integration test (precision_test.cc) into $1_precision
# (replaced): the Fashion-MNIST demo models (model/weights) in fp32, bf16 and int8, each
# lower-precision one past its accuracy guard on training images (int8 calibrated on them),
# and one whose config.json claims bf16 for an fp32 graph; and $1_precision_images: test
# images for them. $1 is the integration tests' repository path, whose name these extend.
set -euo pipefail
out=$1
src=$(cd "$(dirname "$0")/../../.." && pwd)
export PYTHONPATH=$src/model
rm -rf "${out}_precision" "${out}_precision_images" "${out}_calibration"
pids=()
background() { "$@" & pids+=($!); }
/usr/bin/python3 -m carevision.demo.calibration "${out}_calibration" --items 300 --scenes 48 2>/dev/null
/usr/bin/python3 -m carevision.demo.calibration "${out}_precision_images" --items 32 --scenes 16 --split test \
  2>/dev/null
labels=$src/model/carevision/labels
export_demo() {
  local name=$1 weights=$src/model/weights/$2 precision=$3 images=$4
  shift 4
  /usr/bin/python3 -m carevision.export --arch care_s0 --out "${out}_precision" --name "${name}_$precision" \
    --checkpoint "$weights" --precision "$precision" --calibration "${out}_calibration/$images" "$@" 2>/dev/null
}
for precision in fp32 bf16 int8; do
  background export_demo fashion care_s0_fashion.pth $precision items --task classification --input-size 64 64 \
    --crop-pct 1.0 --labels "$labels/fashion_mnist10.txt"
  background export_demo retinanet_fashion care_s0_retinanet_fashion.pth $precision scenes --task detection \
    --input-size 128 128 --labels "$labels/fashion_mnist10.txt"
  background export_demo fpn_fashion care_s0_fpn_fashion.pth $precision scenes --task segmentation \
    --input-size 128 128 --labels "$labels/fashion_mnist_segmentation11.txt"
  background export_demo maskrcnn_fashion care_s0_maskrcnn_fashion.pth $precision scenes \
    --task instance_segmentation --input-size 128 128 --labels "$labels/fashion_mnist10.txt"
done
for pid in "${pids[@]}"; do wait "$pid"; done
# config.json claims bf16 for an fp32 graph: the server must refuse it and say why.
cp -r "${out}_precision/fashion_fp32" "${out}_precision/precision_mismatch"
sed -i 's/"fashion_fp32"/"precision_mismatch"/; s/"precision": "fp32"/"precision": "bf16"/' \
  "${out}_precision/precision_mismatch/config.json"
rm -rf "${out}_calibration"
echo "exported precision repository to ${out}_precision"
