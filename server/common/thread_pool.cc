#include "server/common/thread_pool.h"

#include <algorithm>
#include <utility>

#include "server/common/thread_name.h"

namespace careserve {

ThreadPool::ThreadPool(int threads, std::string name) : size_(std::max(threads, 1)) {
  for (int i = 0; i < size_; ++i) {
    workers_.emplace_back([this, name] {
      if (!name.empty()) NameThisThread(name);
      WorkerLoop();
    });
  }
}

ThreadPool::~ThreadPool() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  for (std::thread& t : workers_) t.join();
}

void ThreadPool::Schedule(absl::AnyInvocable<void() &&> work) {
  absl::MutexLock lock(&mu_);
  queue_.push_back(std::move(work));
}

bool ThreadPool::RunHereIfIdle(absl::AnyInvocable<void() &&>& work) {
  {
    absl::MutexLock lock(&mu_);
    if (stopping_ || !queue_.empty() || running_ >= size()) return false;
    ++running_;
  }
  std::move(work)();
  absl::MutexLock lock(&mu_);
  --running_;
  return true;
}

void ThreadPool::WorkerLoop() {
  for (;;) {
    absl::AnyInvocable<void() &&> work;
    {
      absl::MutexLock lock(&mu_);
      // A worker whose place a caller has borrowed (RunHereIfIdle) waits, unless stopping.
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return (stopping_ && queue_.empty()) || (!queue_.empty() && (running_ < size() || stopping_));
      };
      mu_.Await(absl::Condition(&ready));
      if (queue_.empty()) return;  // stopping and drained
      work = std::move(queue_.front());
      queue_.pop_front();
      ++running_;
    }
    std::move(work)();
    absl::MutexLock lock(&mu_);
    --running_;
  }
}

}  // namespace careserve
