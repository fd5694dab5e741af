#!/usr/bin/env bash
# Evaluates the Fashion-MNIST demo models through a real care-server (make train-demo runs
# it after training; docs/models.md): exports the default repository from the weights in
# model/weights/, serves it on loopback, and runs carevision.demo.evaluate on the 10000 test
# images and 1000 test scenes, in fp32, bf16 and int8 (exit 1 when a lower precision loses
# more than the targets of evaluate.py against fp32). Writes the report to model/weights/metrics.json (the
# figures the demo test in make test holds the server to; the others under "precisions").
#   scripts/evaluate_demo.sh [REPORT]     (REPORT default model/weights/metrics.json)
set -euo pipefail
cd "$(dirname "$0")/.."
report=${1:-model/weights/metrics.json}
repo=${DEMO_REPOSITORY:-build/evaluate_repository}
export PYTHONPATH=$PWD/model
bash scripts/default_repository.sh "$repo" >/dev/null
# The demo models in bf16 and int8 beside them (NAME_bf16, NAME_int8), each past its accuracy
# guard on training images (int8 calibrated on them); the evaluation holds them to the fp32
# figures (evaluate.py, PRECISION_TARGETS).
calibration=$(mktemp -d)
/usr/bin/python3 -m carevision.demo.calibration "$calibration"
labels=model/carevision/labels
low() {
  local precision=$1 name=$2 weights=${DEMO_WEIGHTS:-model/weights}/$3 images=$4
  shift 4
  rm -rf "${repo:?}/${name}_$precision"
  /usr/bin/python3 -m carevision.export --arch care_s0 --out "$repo" --name "${name}_$precision" --version 1 \
    --checkpoint "$weights" --precision "$precision" --calibration "$calibration/$images" "$@" 2>&1 |
    grep -v '^verify'
}
for precision in bf16 int8; do
  low $precision care_s0_fashion care_s0_fashion.pth items --task classification --input-size 64 64 --crop-pct 1.0 \
    --labels "$labels/fashion_mnist10.txt" --max-batch-size 64
  low $precision care_s0_retinanet_fashion care_s0_retinanet_fashion.pth scenes --task detection --input-size 128 128 \
    --labels "$labels/fashion_mnist10.txt"
  low $precision care_s0_fpn_fashion care_s0_fpn_fashion.pth scenes --task segmentation --input-size 128 128 \
    --labels "$labels/fashion_mnist_segmentation11.txt"
  low $precision care_s0_maskrcnn_fashion care_s0_maskrcnn_fashion.pth scenes --task instance_segmentation \
    --input-size 128 128 --labels "$labels/fashion_mnist10.txt" --max-batch-size 8
done
rm -rf "$calibration"
log=$(mktemp)
build/care-server --model_repository="$repo" --host=127.0.0.1 --port=0 --metrics_port=0 --http_port=0 2>"$log" &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do grep -q "msg=serving" "$log" && break; kill -0 $server || { cat "$log"; exit 1; }; sleep 1; done
port=$(grep -o 'msg=listening grpc_port=[0-9]*' "$log" | grep -o '[0-9]*$')
start=$(date +%s)
/usr/bin/python3 -m carevision.demo.evaluate --server="127.0.0.1:$port" --images=10000 --scenes=1000 \
  --precisions fp32 bf16 int8 --json="$report"
echo "evaluate-demo: $(( $(date +%s) - start )) s through care-server; report in $report" >&2
