#pragma once

#include <string>
#include <vector>

namespace careserve {

// An environment variable that a library reads when it is loaded, before main, so that
// setting it later has no effect: libgomp's GOMP_SPINCOUNT, OpenCV's
// OPENCV_IO_MAX_IMAGE_PIXELS (imgcodecs reads it into a static at load time).
struct StartupVariable {
  std::string name;
  std::string value;
  bool keep_existing = false;  // a value already in the environment wins (the user's)
};

// If the environment does not already hold `variables`, sets them and re-executes the
// program (its own file, same pid and arguments) so the libraries read them at load;
// in the re-executed program they hold, and this returns. Call it before starting any
// thread. If exec fails, the program goes on without them (the return value says so).
bool ReexecWith(char** argv, const std::vector<StartupVariable>& variables);

// GOMP_SPINCOUNT=2000 unless the environment sets it: how long GNU OpenMP's idle team
// threads spin before they sleep, for processes that run LibTorch.
//
// Why: after a batch that ran alone on every core, a spinning team thread holds a core
// that the next batch on another runner needs. Measured with care-bench against care-server
// (2026-12-02): libgomp's default 300000 (~8 ms of spinning here) against 2000, concurrency
// 2 p50 +2.04 ms, concurrency 4 +2.27 ms (-0.11 in a second run), 2-3% fewer requests/s;
// at concurrency 1 it was 0.6-1.5 ms faster on a loaded host and the same on a calm one.
// (First measured on an earlier host with OpenBLAS's pthread build: batch 1 p50 22.4-24.0
// ms with 300000 and 1000000 against 19.4-19.9 with 2000.) See docs/service.md.
StartupVariable OpenMpSpinCount();

// TCMALLOC_RELEASE_RATE=0 unless the environment sets it: tcmalloc (care-server's malloc)
// keeps freed pages instead of handing them back to the kernel bit by bit.
//
// Why: every batch frees and reallocates its activations; with tcmalloc's default rate (1)
// some of the freed pages went back to the kernel and the next batch faulted them in again,
// and a page fault costs ~11 us on this VM (mmap + touch, measured). CARE-S0 224 at
// concurrency 1: ~13 page faults per request with the default, none with 0 (the server's
// minflt over 180 requests); care-engine-bench batch 1: 12.7 per batch against 4.6. The
// resident size stays at its peak, which tcmalloc's default mostly kept anyway.
StartupVariable TcmallocReleaseRate();

// OPENCV_IO_MAX_IMAGE_PIXELS=`max_pixels`: OpenCV's decoders refuse larger images from
// their headers, before allocating pixels (its default is 2^30: 3 GiB for an 8-bit colour
// image). The server's own header checks come first; this covers what they do not read.
StartupVariable OpenCvPixelCap(long long max_pixels);

// Turns off Abseil's Mutex deadlock detection for the whole process (our locks and gRPC's,
// which are absl::Mutex too), unless CARE_ABSL_DEADLOCK_DETECTION=1 or this is a sanitizer
// build (make test-asan / test-tsan keep it, to catch lock-order inversions in the tests).
//
// Why: Debian's Abseil is built without NDEBUG, so every Mutex::Lock of the process records
// the locks held and checks a global lock-order graph under a global spin lock, as a debug
// build does. Measured (2026-12-03): a nested pair of uncontended locks 92-95 ns with it,
// 26 ns without; care-bench concurrency 1 (224x224 Classify, 3 s runs, order alternating),
// care-server and care-bench with it off against both with it on: p50 lower in 11 of 12
// rounds, median -0.21 ms; concurrency 4 and 64 throughput within the noise. See
// docs/service.md (Abseil's deadlock detection).
void TurnOffAbseilDeadlockDetection();

}  // namespace careserve
