#!/usr/bin/env bash
# Evaluates the Fashion-MNIST demo models through a real care-server (make train-demo runs
# it after training; docs/models.md): exports the default repository from the weights in
# model/weights/, serves it on loopback, and runs carevision.demo.evaluate on the 10000 test
# images and 1000 test scenes. Writes the report to model/weights/metrics.json (the figures
# the demo test in make test holds the server to).
#   scripts/evaluate_demo.sh [REPORT]     (REPORT default model/weights/metrics.json)
set -euo pipefail
cd "$(dirname "$0")/.."
report=${1:-model/weights/metrics.json}
repo=${DEMO_REPOSITORY:-build/smoke_repository}
export PYTHONPATH=$PWD/model
bash scripts/default_repository.sh "$repo" >/dev/null
log=$(mktemp)
build/care-server --model_repository="$repo" --host=127.0.0.1 --port=0 --metrics_port=0 --http_port=0 2>"$log" &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do grep -q "msg=serving" "$log" && break; kill -0 $server || { cat "$log"; exit 1; }; sleep 1; done
port=$(grep -o 'msg=listening grpc_port=[0-9]*' "$log" | grep -o '[0-9]*$')
start=$(date +%s)
/usr/bin/python3 -m carevision.demo.evaluate --server="127.0.0.1:$port" --images=10000 --scenes=1000 \
  --json="$report"
echo "evaluate-demo: $(( $(date +%s) - start )) s through care-server; report in $report" >&2
