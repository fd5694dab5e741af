#!/usr/bin/env bash
# Soak test (not in CI): care-server on the default repository under care-bench load for
# SOAK_SECONDS (default 600) -- Classify at concurrency 16 plus Detect and Segment at 2 --
# then RSS at the start and the end, and every request's status. `make soak`.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${SOAK_SECONDS:-600}
port=${SOAK_PORT:-50161}
metrics_port=${SOAK_METRICS_PORT:-9161}
repo=${SOAK_REPOSITORY:-build/smoke_repository}
bash scripts/default_repository.sh "$repo" >/dev/null
log=$(mktemp)
build/care-server --model_repository="$repo" --host=127.0.0.1 --port="$port" --metrics_port="$metrics_port" --http_port=0 2>"$log" &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do grep -q "msg=serving" "$log" && break; sleep 1; done
rss() { curl -sf "127.0.0.1:$metrics_port/metrics" | awk '/^process_resident_memory_bytes/ {printf "%.0f", $2 / 1048576}'; }
bench() {  # task model concurrency image
  build/care-bench --server="127.0.0.1:$port" --task="$1" --model="$2" --concurrency="$3" --duration="$seconds" \
    --warmup=0 --generate="$4" --json
}
# A short warm-up load first: RSS "at the start" is that of a server that has seen traffic.
build/care-bench --server="127.0.0.1:$port" --task=classify --concurrency=16 --duration=20 --warmup=0 >/dev/null
start_rss=$(rss)
echo "soak: ${seconds}s, RSS at start ${start_rss} MiB"
out=$(mktemp -d)
loads=()
bench classify care_s0_imagenet 16 224x224 > "$out/classify.json" & loads+=($!)
bench detect care_s0_retinanet_coco 2 640x480 > "$out/detect.json" & loads+=($!)
bench segment care_s0_fpn_ade20k 2 640x480 > "$out/segment.json" & loads+=($!)
samples=()
for _ in $(seq 1 10); do sleep $((seconds / 10)); samples+=("$(rss)"); done
for pid in "${loads[@]}"; do wait "$pid"; done
end_rss=$(rss)
echo "soak: RSS every $((seconds / 10)) s (MiB): ${samples[*]}"
echo "soak: RSS at start ${start_rss} MiB, at end ${end_rss} MiB"
for task in classify detect segment; do echo "soak: $task $(cat "$out/$task.json")"; done
kill -TERM $server; wait $server
echo "soak: server exit $?"
