#!/usr/bin/env bash
# Exports the model repository of the integration tests into $1 (replaced): small real
# CARE-S0 models, plus one broken model that the server must report and skip; then the
# reference answers of the dense models into $1_reference (tests/tools/dense_reference.py).
# $1_precision: the Fashion-MNIST demo models (model/weights) in fp32, bf16 and int8, each
# lower-precision one past its accuracy guard on training images (int8 calibrated on them), and $1_precision_images: test images for them.
set -euo pipefail
out=$1
src=$(cd "$(dirname "$0")/../../.." && pwd)
export PYTHONPATH=$src/model
rm -rf "$out" "${out}_reference" "${out}_checkpoints"
mkdir -p "$out"
/usr/bin/python3 "$src/tests/tools/make_test_checkpoints.py" "${out}_checkpoints"
export_model() { /usr/bin/python3 -m carevision.export --arch care_s0 --out "$out" --input-size 64 64 "$@" 2>/dev/null; }
export_dense() { /usr/bin/python3 -m carevision.export --arch care_s0 --out "$out" "$@" 2>/dev/null; }
# Exports run in parallel; `wait PID` (not a bare `wait`) so that a failed one fails the script.
pids=()
background() { "$@" & pids+=($!); }
# Batches fill within 20 ms: 64 concurrent requests form batches of several.
background export_model --task classification --name care_s0_cls --max-batch-size 16 --max-queue-delay-us 20000
# One request at a time, one waiting: a burst overflows the queue.
background export_model --task classification --name care_s0_queue1 --seed 1 --max-batch-size 1 --queue-capacity 1 \
  --instances 1
# Non-square inputs; weights with spread outputs (make_test_checkpoints.py).
background export_dense --task detection --name care_s0_det --input-size 96 128 --max-batch-size 4 \
  --checkpoint "${out}_checkpoints/test_retinanet.pth"
background export_dense --task segmentation --name care_s0_seg --input-size 64 96 --max-batch-size 4 \
  --checkpoint "${out}_checkpoints/test_fpn.pth"
background export_dense --task instance_segmentation --name care_s0_mask --input-size 128 160 --max-batch-size 4 \
  --checkpoint "${out}_checkpoints/test_maskrcnn.pth"
for pid in "${pids[@]}"; do wait "$pid"; done
/usr/bin/python3 "$src/tests/tools/dense_reference.py" "$out" care_s0_det care_s0_seg care_s0_mask "${out}_reference" 2>/dev/null
mkdir -p "$out/broken_model/1"
cat > "$out/broken_model/config.json" <<'JSON'
{"name": "broken_model", "task": "classification", "input": {"height": 64, "width": 64},
 "batching": {"max_batch_size": 0}}
JSON
echo "only" > "$out/broken_model/labels.txt"
# A valid model whose TorchScript file is corrupt, and one whose labels file is missing.
cp -r "$out/care_s0_queue1" "$out/corrupt_weights"
sed -i 's/"care_s0_queue1"/"corrupt_weights"/' "$out/corrupt_weights/config.json"
head -c 5000 "$out/care_s0_queue1/1/model.pt" > "$out/corrupt_weights/1/model.pt"
cp -r "$out/care_s0_queue1" "$out/missing_labels"
sed -i 's/"care_s0_queue1"/"missing_labels"/' "$out/missing_labels/config.json"
rm "$out/missing_labels/labels.txt"
echo "exported test repository to $out"
