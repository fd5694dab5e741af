// How an engine thread computes with the intra-op thread count the scheduler gives a
// batch: LibTorch's OpenMP team size for that thread, OpenBLAS's thread count, denormals
// flushed to zero, and staying awake after a lone batch.
#pragma once

#include "absl/functional/function_ref.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/scheduler/batch_scheduler.h"

namespace careserve {

class OpenMpThreadPolicy final : public ThreadPolicy {
 public:
  // Names engine thread i care-runner-i (its OpenMP team threads inherit the name), flushes
  // denormals (random or badly scaled weights otherwise run up to 50x slower; MXCSR is per
  // thread) and starts it with `threads` intra-op threads.
  explicit OpenMpThreadPolicy(int threads) : threads_(threads) {}

  void StartThread(int index) override;
  // Sets this thread's OpenMP team size (LibTorch and oneDNN size each parallel region
  // from it) and OpenBLAS's count (process-wide: the batch that starts last sets it).
  void UseThreads(int threads) override;
  // This thread and its OpenMP team stay in a parallel region, spinning and yielding,
  // until `wake` or `limit`; then libgomp's own spin (GOMP_SPINCOUNT) still holds the team
  // thread when the next batch starts. Otherwise the team thread sleeps between requests,
  // its vCPU halts, and the next lone request first wakes both.
  void StayAwake(int threads, absl::FunctionRef<bool()> wake, absl::Duration limit) override;

 private:
  void SetBlasThreads(int threads);
  const int threads_;
  absl::Mutex blas_mu_;
  int blas_threads_ ABSL_GUARDED_BY(blas_mu_) = 0;
};

}  // namespace careserve
