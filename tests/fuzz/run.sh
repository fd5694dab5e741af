#!/usr/bin/env bash
# Runs the libFuzzer targets built in BUILD_DIR for SECONDS each, starting from the
# checked-in corpora (tests/data/bad_inputs and tests/fuzz/corpus/decode for decoding: the
# latter small JPEGs of skimage's chelsea, 40x24, plain, progressive and with EXIF
# orientation 3 (big-endian) or 6 (little-endian) APP1 segments, so the fuzzer starts inside
# the EXIF path; tests/fuzz/corpus/request for validation) plus what earlier runs in
# BUILD_DIR found. A crash, sanitizer report or
# broken invariant fails the run and leaves the input in BUILD_DIR/artifacts/.
#   usage: tests/fuzz/run.sh BUILD_DIR SECONDS
set -euo pipefail
build=$(cd "$1" && pwd)
seconds=$2
src=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$build/found/decode" "$build/found/request" "$build/artifacts"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
status=0
fuzz() {  # target, corpus dirs...
  local target=$1; shift
  echo "fuzz: $target for ${seconds}s"
  if ! "$build/$target" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=3000 -max_len=65536 \
      -artifact_prefix="$build/artifacts/$target-" -print_final_stats=1 "$@" > "$build/$target.log" 2>&1; then
    echo "fuzz: $target FAILED (log: $build/$target.log)"; tail -n 40 "$build/$target.log"; status=1
  else
    grep -E "^stat::number_of_executed_units|^stat::new_units_added|cov:" "$build/$target.log" | tail -n 3
  fi
}
fuzz decode_fuzzer "$build/found/decode" "$src/tests/data/bad_inputs" "$src/tests/fuzz/corpus/decode"
fuzz request_fuzzer "$build/found/request" "$src/tests/fuzz/corpus/request"
exit $status
