#!/usr/bin/env bash
# make test-asan / make test-tsan: the C++ tree built with sanitizers in its own build
# directory, and its C++ tests run there. The integration tests start the instrumented
# care-server, care-client and care-bench, so the server is checked under real traffic.
#   scripts/sanitize_test.sh address   ASan + UBSan + LeakSanitizer, every C++ test but the precision suite
#   scripts/sanitize_test.sh thread    TSan: the scheduler unit tests and care-server under load
# Every report of every process (tests, server, clients) goes to a file under
# <build dir>/sanitizer_reports; any ASan/UBSan/LSan report fails the run, even one from a
# process whose exit code nobody looked at; a TSan report fails it when one of the racing
# accesses is the project's own code (tests/sanitizers/tsan_reports.py: Debian's gRPC,
# protobuf and LibTorch are not built with TSan, and their races with themselves cannot be
# told from real ones). The one suppression (tests/sanitizers/lsan.supp) is a leak inside an
# uninstrumented system library.
set -euo pipefail
kind=${1:?usage: sanitize_test.sh address|thread}
src=$(cd "$(dirname "$0")/.." && pwd)
supp=$src/tests/sanitizers
case $kind in
  address)
    # Not the precision suite: what it adds over the others is LibTorch's bf16 and int8
    # kernels, which are not instrumented (the server's precision checks run in every suite,
    # for every model, and in their unit tests).
    dir=${ASAN_DIR:-build-asan}; sanitizers=address,undefined
    select=(-E '^(server_precision_test|export_precision_repository)$')
    ;;
  thread)
    # The scheduler unit tests, then the server under load (tests/sanitizers/tsan_server.sh).
    # Not the server_*_test suites: their test process is a gRPC client, and Debian's gRPC and protobuf are
    # not built with TSan, so its callbacks race with gRPC's threads as far as TSan can see,
    # and protobuf's Map templates compiled with TSan crash against the uninstrumented
    # library; several of its tests also time a load that TSan slows many times.
    dir=${TSAN_DIR:-build-tsan}; sanitizers=thread
    select=(-R '^(SchedulerTest\.|BatchTimesTest\.|AdaptiveBatchSizeTest\.|EarliestCompletionTest\.|BatchPolicyTest\.|QueueOptionsTest\.|export_test_repository$)')
    ;;
  *) echo "sanitize_test.sh: unknown kind '$kind' (address or thread)" >&2; exit 2 ;;
esac
start=$(date +%s)
cmake -S "$src" -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCARE_SANITIZE=$sanitizers >/dev/null
cmake --build "$dir" -j"${JOBS:-$(nproc)}"
built=$(date +%s)
reports=$(cd "$dir" && pwd)/sanitizer_reports
rm -rf "$reports" && mkdir -p "$reports"
# quarantine_size_mb: freed memory ASan holds back to catch use-after-free (default 256 MB);
# 64 MB still covers the recent past, and keeps the overload test's RSS bound meaningful.
export ASAN_OPTIONS="log_path=$reports/asan:detect_leaks=1:strict_string_checks=1:detect_stack_use_after_return=1:check_initialization_order=1:quarantine_size_mb=64"
export LSAN_OPTIONS="suppressions=$supp/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="log_path=$reports/ubsan:print_stacktrace=1:halt_on_error=1"
# exitcode=0: a report does not change a process's exit code; tsan_reports.py judges them.
export TSAN_OPTIONS="log_path=$reports/tsan:second_deadlock_stack=1:history_size=4:ignore_noninstrumented_modules=1:exitcode=0"
status=0
(cd "$dir" && ctest --output-on-failure --timeout 1800 "${select[@]}") || status=$?
if [ "$kind" = thread ] && [ $status -eq 0 ]; then
  bash "$src/tests/sanitizers/tsan_server.sh" "$dir" "${BUILD_DIR:-build}" || status=$?
fi
if [ "$kind" = thread ]; then
  # Only races in the project's own code count: the libraries TSan cannot see into report
  # their own (tests/sanitizers/tsan_reports.py says which and where).
  /usr/bin/python3 "$supp/tsan_reports.py" "$reports" "$src" || status=1
elif compgen -G "$reports/*" >/dev/null; then
  echo "sanitize_test.sh: sanitizer reports ($kind):" >&2
  for f in "$reports"/*; do echo "== $f" >&2; cat "$f" >&2; done
  status=1
fi
echo "sanitize_test.sh: $kind: build $((built - start)) s, tests $(( $(date +%s) - built )) s, exit $status"
exit $status
