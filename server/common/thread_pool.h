// A fixed set of worker threads draining one FIFO of closures. Used for image decoding
// and resizing, so that preprocessing of the next requests overlaps inference.
#pragma once

#include <deque>
#include <string>
#include <thread>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/synchronization/mutex.h"

namespace careserve {

class ThreadPool {
 public:
  // Workers are named `name` (see NameThisThread), unless it is empty.
  explicit ThreadPool(int threads, std::string name = "");
  // Runs what is queued, then joins the workers.
  ~ThreadPool();

  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  void Schedule(absl::AnyInvocable<void() &&> work);
  // Runs `work` on the calling thread, now, if a worker is idle and nothing is queued, and
  // returns true; the idle worker's place is taken for the time (work scheduled meanwhile
  // waits as if that worker were busy), so the pool's concurrency stays `size()`.
  // Otherwise returns false and leaves `work` alone. For short work whose hand-off to a
  // sleeping worker would cost a noticeable part of it.
  bool RunHereIfIdle(absl::AnyInvocable<void() &&>& work);
  int size() const { return size_; }

 private:
  void WorkerLoop();

  mutable absl::Mutex mu_;
  std::deque<absl::AnyInvocable<void() &&>> queue_ ABSL_GUARDED_BY(mu_);
  int running_ ABSL_GUARDED_BY(mu_) = 0;  // closures running, on workers or (borrowed) callers
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  const int size_;
  std::vector<std::thread> workers_;
};

}  // namespace careserve
