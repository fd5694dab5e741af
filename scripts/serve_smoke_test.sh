#!/usr/bin/env bash
# The README's first steps, as a test: `make serve` starts the server on the default
# repository, and care-client's first requests get real answers from the demo models.
set -euo pipefail
cd "$(dirname "$0")/.."
port=${SMOKE_PORT:-50151}
metrics_port=${SMOKE_METRICS_PORT:-9191}
http_port=${SMOKE_HTTP_PORT:-8191}
log=$(mktemp)
# Its own repository: never touches models/default (which may hold your checkpoints).
make --no-print-directory serve PORT="$port" METRICS_PORT="$metrics_port" HTTP_PORT="$http_port" MODEL_REPOSITORY=build/smoke_repository >"$log" 2>&1 &
make_pid=$!
cleanup() {
  pkill -TERM -f "care-server --model_repository=.* --port=$port " 2>/dev/null || true
  wait "$make_pid" 2>/dev/null || true
}
trap cleanup EXIT
client=build/care-client
for _ in $(seq 1 300); do
  if "$client" health --server="localhost:$port" --timeout=1 >/dev/null 2>&1; then break; fi
  if ! kill -0 "$make_pid" 2>/dev/null; then echo "make serve exited:"; cat "$log"; exit 1; fi
  sleep 1
done
"$client" health --server="localhost:$port"
# The README's first request: the default classifier is the Fashion-MNIST demo model, with
# trained weights; it knows this ankle boot (a Fashion-MNIST test image).
answer=$("$client" classify --server="localhost:$port" --image docs/demo/ankle_boot.png)
echo "$answer"
grep -q "^care_s0_fashion version 1" <<<"$answer"
sed -n 2p <<<"$answer" | grep -q "Ankle boot (class 9)"
[ "$(grep -c '(class [0-9]*)' <<<"$answer")" -eq 5 ]
imagenet=$("$client" classify --server="localhost:$port" --model=care_s0_imagenet --image build/samples/cat.jpg)
grep -q "^care_s0_imagenet version 1" <<<"$imagenet"
# (captured first: grep -q exiting early would fail the writer under pipefail)
models=$("$client" list --server="localhost:$port")
for model in care_s0_fashion care_s0_retinanet_fashion care_s0_fpn_fashion care_s0_maskrcnn_fashion; do
  grep -Eq "^$model .* checkpoint +fp32 +ready" <<<"$models"
done
for model in care_s0_imagenet care_s0_retinanet_coco care_s0_fpn_ade20k; do
  grep -Eq "^$model .* random +fp32 +ready" <<<"$models"
done
metrics=$(curl -sf "localhost:$metrics_port/metrics")
grep -q '^care_model_info{.*model="care_s0_imagenet".*weights="random"} 1' <<<"$metrics"
grep -q '^care_model_info{.*model="care_s0_fashion".*weights="checkpoint"} 1' <<<"$metrics"
# Detect and Segment on the default (demo) models and on the COCO / ADE20K ones, with
# pictures of the input's size.
pictures=$(mktemp -d)
"$client" detect --server="localhost:$port" --image docs/demo/scene.png --draw "$pictures/scene_boxes.png" \
  | grep -q "^care_s0_retinanet_fashion version 1: [1-9][0-9]* detections in 256x256"
"$client" segment --server="localhost:$port" --image docs/demo/scene.png --draw "$pictures/scene_mask.png" \
  | grep -q "^care_s0_fpn_fashion version 1: 256x256 mask"
# The demo Mask R-CNN: each detection with its mask (a mask of some pixels: "mask N px").
instances=$("$client" detect --server="localhost:$port" --model=care_s0_maskrcnn_fashion --image docs/demo/scene.png \
  --draw "$pictures/scene_instances.png")
grep -q "^care_s0_maskrcnn_fashion version 1: [1-9][0-9]* detections in 256x256" <<<"$instances"
grep -Eq "mask [1-9][0-9]* px$" <<<"$instances"
"$client" detect --server="localhost:$port" --model=care_s0_retinanet_coco --image build/samples/astronaut.jpg \
  --draw "$pictures/boxes.png"
"$client" segment --server="localhost:$port" --model=care_s0_fpn_ade20k --image build/samples/astronaut.jpg \
  --draw "$pictures/mask.png" | grep -q "^care_s0_fpn_ade20k version 1: 512x512 mask"
/usr/bin/python3 - "$pictures" <<'PY'
import sys, cv2
for name, size in (("boxes.png", 512), ("mask.png", 512), ("scene_boxes.png", 256), ("scene_mask.png", 256),
                   ("scene_instances.png", 256)):
    image = cv2.imread(f"{sys.argv[1]}/{name}")
    assert image is not None and image.shape[:2] == (size, size), (name, None if image is None else image.shape)
PY
# care-bench keeps working: a second of closed-loop Classify load, no errors.
bench=$(build/care-bench --server="localhost:$port" --concurrency=2 --duration=1 --warmup=0.5 --json 2>/dev/null)
echo "$bench"
/usr/bin/python3 -c 'import json, sys; r = json.loads(sys.argv[1]); assert r["ok"] > 0 and not r["errors"], r' "$bench"
# The Python example client gets the same answer.
python_answer=$(/usr/bin/python3 clients/python/care_client.py --server "localhost:$port" classify docs/demo/ankle_boot.png)
[ "$python_answer" = "$answer" ] || { echo "Python client answered differently:"; echo "$python_answer"; exit 1; }
# The README's web console is on the HTTP port, listing the same models.
curl -sf "localhost:$http_port/" | grep -q '<title>careserve console</title>'
index=$(curl -sf -X POST "localhost:$http_port/v2/repository/index")
for model in care_s0_fashion care_s0_maskrcnn_fashion care_s0_fpn_ade20k; do
  grep -q "\"name\":\"$model\",[^}]*\"state\":\"READY\"" <<<"$index" || { echo "$model not READY in $index"; exit 1; }
done
grep -q 'msg=serving' "$log"
echo "serve smoke test: ok"
