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
  explicit ThreadPool(int threads);
  // Runs what is queued, then joins the workers.
  ~ThreadPool();

  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  void Schedule(absl::AnyInvocable<void() &&> work);
  int size() const { return static_cast<int>(workers_.size()); }
  // Closures waiting for a worker.
  int Pending() const;

 private:
  void WorkerLoop();

  mutable absl::Mutex mu_;
  std::deque<absl::AnyInvocable<void() &&>> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> workers_;
};

}  // namespace careserve
