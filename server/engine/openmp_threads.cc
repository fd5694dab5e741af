#include "server/engine/openmp_threads.h"

#include <dlfcn.h>
#include <omp.h>
#include <sched.h>

#include <atomic>
#include <chrono>

#include "absl/strings/str_cat.h"
#include "ATen/Parallel.h"
#include "server/common/thread_name.h"
#include "torch/script.h"

namespace careserve {
namespace {

// The team size this thread last set (omp_set_num_threads is cheap, but not free).
thread_local int current_threads = 0;

// StayAwake's state, shared with the team threads through atomics only: libgomp hands
// shared variables over through synchronisation ThreadSanitizer cannot see. One thread
// at a time spins (only engine thread 0 runs lone batches).
std::atomic<bool> spin_stop{false};

}  // namespace

void OpenMpThreadPolicy::StartThread(int index) {
  at::globalContext().setFlushDenormal(true);
  NameThisThread(absl::StrCat("care-runner-", index));
  // LibTorch initialises a thread's OpenMP count lazily on first use; first, so that the
  // lazy initialisation cannot undo this.
  (void)at::get_num_threads();
  omp_set_num_threads(threads_);
  current_threads = threads_;
}

void OpenMpThreadPolicy::UseThreads(int threads) {
  if (threads != current_threads) {
    omp_set_num_threads(threads);
    current_threads = threads;
  }
  SetBlasThreads(threads);
}

// OpenBLAS (LibTorch's BLAS here, for matrix products) runs a product on as many threads
// as its process-wide count says; its OpenMP build, which the server links, takes them
// from the calling thread's team. With the pthread build it keeps a pool of its own whose
// idle workers spin after each product (docs/service.md, "Threads").
void OpenMpThreadPolicy::SetBlasThreads(int threads) {
  using Setter = void (*)(int);
  static const Setter set = reinterpret_cast<Setter>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
  if (set == nullptr) return;  // another BLAS
  absl::MutexLock lock(&blas_mu_);
  if (threads == blas_threads_) return;
  set(threads);
  blas_threads_ = threads;
}

namespace {

std::atomic<const absl::FunctionRef<bool()>*> spin_wake{nullptr};
std::atomic<int64_t> spin_until_ns{0};

int64_t NowNanos() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// The parallel region's body reads nothing of the caller's frame, only the atomics above.
void SpinInTeam() {
  if (omp_get_thread_num() == 0) {
    const absl::FunctionRef<bool()>& wake = *spin_wake.load(std::memory_order_acquire);
    while (!wake() && NowNanos() < spin_until_ns.load(std::memory_order_relaxed)) sched_yield();
    spin_stop.store(true, std::memory_order_release);
  } else {
    while (!spin_stop.load(std::memory_order_acquire)) sched_yield();
  }
}

}  // namespace

void OpenMpThreadPolicy::StayAwake(int threads, absl::FunctionRef<bool()> wake, absl::Duration limit) {
  spin_wake.store(&wake, std::memory_order_relaxed);
  spin_until_ns.store(NowNanos() + absl::ToInt64Nanoseconds(limit), std::memory_order_relaxed);
  spin_stop.store(false, std::memory_order_release);
#pragma omp parallel num_threads(threads)
  SpinInTeam();
}

}  // namespace careserve
