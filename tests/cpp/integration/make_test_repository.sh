#!/usr/bin/env bash
# Exports the model repository of the integration tests into $1 (replaced): small real
# CARE-S0 models, plus one broken model that the server must report and skip.
set -euo pipefail
out=$1
src=$(cd "$(dirname "$0")/../../.." && pwd)
export PYTHONPATH=$src/model
rm -rf "$out"
mkdir -p "$out"
export_model() { /usr/bin/python3 -m carevision.export --arch care_s0 --out "$out" --input-size 64 64 "$@" 2>/dev/null; }
# Batches fill within 20 ms: 64 concurrent requests form batches of several.
export_model --task classification --name care_s0_cls --max-batch-size 16 --max-queue-delay-us 20000 &
# One request at a time, one waiting: a burst overflows the queue.
export_model --task classification --name care_s0_queue1 --seed 1 --max-batch-size 1 --queue-capacity 1 &
export_model --task detection --name care_s0_det &
wait
mkdir -p "$out/broken_model/1"
cat > "$out/broken_model/config.json" <<'JSON'
{"name": "broken_model", "task": "classification", "input": {"height": 64, "width": 64},
 "batching": {"max_batch_size": 0}}
JSON
echo "only" > "$out/broken_model/labels.txt"
echo "exported test repository to $out"
