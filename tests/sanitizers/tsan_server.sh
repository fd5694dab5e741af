#!/usr/bin/env bash
# make test-tsan, the server part: the TSan-built care-server on the integration tests'
# repository under concurrent load from the regular build's care-bench (an uninstrumented
# client: only the server is under test): Classify, Detect and Segment at once (also over
# the Open Inference Protocol, gRPC and HTTP, in the same batches), an
# overloaded queue (RESOURCE_EXHAUSTED), calls whose deadline expires (DEADLINE_EXCEEDED,
# cancellations), then a drain (SIGTERM) while a load runs, which must exit 0.
#   tests/sanitizers/tsan_server.sh TSAN_BUILD_DIR REGULAR_BUILD_DIR
set -euo pipefail
tsan_dir=$1 build_dir=$2
repo=$tsan_dir/test_repository
log=$tsan_dir/tsan_server.log
"$tsan_dir/care-server" --model_repository="$repo" --host=127.0.0.1 --port=0 --metrics_port=0 --http_port=0 --engine_runners=2 \
  --intra_op_threads=1 --drain_timeout=120s 2>"$log" &
server=$!
trap 'kill -9 $server 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do
  grep -q "msg=serving" "$log" && break
  kill -0 $server 2>/dev/null || { echo "tsan_server: care-server exited during startup:"; cat "$log"; exit 1; }
  sleep 1
done
port=$(grep -o 'msg=listening grpc_port=[0-9]*' "$log" | grep -o '[0-9]*$')
http_port=$(grep -o 'msg=listening .* http_port=[0-9]*' "$log" | grep -o '[0-9]*$')
out=$(mktemp -d)
bench() {  # name args...
  local name=$1
  shift
  "$build_dir/care-bench" --server="127.0.0.1:$port" --warmup=0 --json "$@" >"$out/$name.json" 2>"$out/$name.err" || true
}
pids=()
bench classify --task=classify --model=care_s0_cls --concurrency=16 --duration=20 --generate=64x64 & pids+=($!)
bench detect --task=detect --model=care_s0_det --concurrency=4 --duration=20 --generate=160x120 & pids+=($!)
bench segment --task=segment --model=care_s0_seg --concurrency=4 --duration=20 --generate=160x120 & pids+=($!)
bench oip --task=detect --model=care_s0_det --protocol=vision,oip-grpc,oip-http --http_server="127.0.0.1:$http_port" \
  --concurrency=6 --duration=20 --generate=160x120 & pids+=($!)
bench overload --task=classify --model=care_s0_queue1 --rate=300 --duration=20 --generate=64x64 & pids+=($!)
bench deadlines --task=classify --model=care_s0_cls --concurrency=8 --duration=20 --timeout=0.02 --generate=64x64 &
pids+=($!)
for pid in "${pids[@]}"; do wait "$pid"; done
/usr/bin/python3 - "$out" <<'PY'
import json, sys
reports = {}
for name in ("classify", "detect", "segment", "oip", "overload", "deadlines"):
    with open(f"{sys.argv[1]}/{name}.json") as f:
        reports[name] = json.load(f)
    r = reports[name]
    print(f"tsan_server: {name}: ok {r['ok']}, errors {r['errors']}")
# (the deadline load floods care_s0_cls's queue too: a full queue is a right answer)
for name in ("classify", "detect", "segment", "oip"):
    assert reports[name]["ok"] > 0 and set(reports[name]["errors"]) <= {"RESOURCE_EXHAUSTED"}, (name, reports[name])
assert "RESOURCE_EXHAUSTED" in reports["overload"]["errors"], reports["overload"]
PY
# Drain while a load runs: in-flight calls finish, the server exits 0.
bench drain --task=classify --model=care_s0_cls --concurrency=8 --duration=30 --generate=64x64 &
load=$!
sleep 5
kill -TERM $server
code=0
wait $server || code=$?
wait $load
trap - EXIT
grep -q "msg=stopped" "$log" || { echo "tsan_server: no msg=stopped in the log:"; tail -20 "$log"; exit 1; }
[ "$code" -eq 0 ] || { echo "tsan_server: care-server exited $code after SIGTERM"; tail -20 "$log"; exit 1; }
echo "tsan_server: drained and exited 0"
