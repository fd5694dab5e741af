// A dynamic batcher in the manner of TensorFlow Serving's BasicBatchScheduler: a small,
// generic mechanism that knows nothing about models. Tasks go into one bounded queue;
// `instances` executor threads each take up to `max_batch_size` tasks, waiting at most
// `max_queue_delay` after the oldest task arrived for a batch to fill, and hand the
// batch to `run_batch`. A full queue answers RESOURCE_EXHAUSTED at once. Tasks whose
// deadline has passed, or that were cancelled, are failed instead of being batched.
//
// Task must provide:
//   absl::Time deadline() const;     // absl::InfiniteFuture() for none
//   bool cancelled() const;
//   void Fail(absl::Status status);  // the batcher drops the task with this status
#pragma once

#include <functional>
#include <memory>
#include <thread>
#include <utility>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/batching/clock.h"
#include "server/common/thread_name.h"

namespace careserve {

struct BatchOptions {
  // Most tasks in one batch.
  int max_batch_size = 16;
  // Longest a task waits for its batch to fill before a partial batch runs.
  absl::Duration max_queue_delay = absl::Microseconds(2000);
  // Most tasks waiting; one more is refused with RESOURCE_EXHAUSTED.
  int queue_capacity = 256;
  // Batches run in parallel (executor threads).
  int instances = 1;

  absl::Status Validate() const {
    if (max_batch_size < 1)
      return absl::InvalidArgumentError(absl::StrCat("max_batch_size must be >= 1, got ", max_batch_size));
    if (max_queue_delay < absl::ZeroDuration())
      return absl::InvalidArgumentError("max_queue_delay must be >= 0");
    if (queue_capacity < 1)
      return absl::InvalidArgumentError(absl::StrCat("queue_capacity must be >= 1, got ", queue_capacity));
    if (instances < 1)
      return absl::InvalidArgumentError(absl::StrCat("instances must be >= 1, got ", instances));
    return absl::OkStatus();
  }
};

template <typename Task>
struct QueuedTask {
  std::unique_ptr<Task> task;
  absl::Time enqueued;
};

template <typename Task>
class Batcher {
 public:
  using Batch = std::vector<QueuedTask<Task>>;
  // Runs one batch on an executor thread; owns the tasks from then on.
  using RunBatch = std::function<void(Batch batch)>;
  // Whether more tasks are on their way (accepted upstream, not submitted yet). When it
  // says no, a partial batch runs at once instead of waiting out max_queue_delay for
  // company that cannot come. Call Wake() when its answer turns to no.
  using MoreComing = std::function<bool()>;

  // `options` must be valid (see BatchOptions::Validate). Without `more_coming`, a
  // partial batch always waits max_queue_delay.
  Batcher(BatchOptions options, RunBatch run_batch, Clock* clock = RealClock::Get(), MoreComing more_coming = nullptr)
      : options_(options), run_batch_(std::move(run_batch)), clock_(clock), more_coming_(std::move(more_coming)) {
    queue_.reserve(options_.queue_capacity);
    for (int i = 0; i < options_.instances; ++i) {
      executors_.emplace_back([this] {
        NameThisThread("care-batch");
        ExecutorLoop();
      });
    }
  }

  // Runs what is queued, then stops the executors.
  ~Batcher() { Stop(); }

  Batcher(const Batcher&) = delete;
  Batcher& operator=(const Batcher&) = delete;

  // Queues *task and takes it. When refused (queue full, or stopped) returns the reason and
  // leaves *task with the caller, so it can answer at once. `on_queued` runs once the task
  // is queued, before any executor can see it (under the batcher's lock): the place to
  // update what MoreComing reads, so that an executor woken by this task does not find it
  // still coming and wait for it.
  absl::Status Submit(std::unique_ptr<Task>* task, absl::FunctionRef<void()> on_queued = [] {}) {
    absl::MutexLock lock(&mu_);
    if (stopping_) return absl::UnavailableError("the batcher is stopping");
    if (static_cast<int>(queue_.size()) >= options_.queue_capacity) {
      return absl::ResourceExhaustedError(
          absl::StrCat("queue full: ", options_.queue_capacity, " requests already waiting"));
    }
    queue_.push_back({std::move(*task), clock_->Now()});
    on_queued();
    cv_.Signal();
    return absl::OkStatus();
  }

  // Makes the executors look at the queue again (see MoreComing).
  void Wake() {
    absl::MutexLock lock(&mu_);
    cv_.SignalAll();
  }

  int QueueDepth() const {
    absl::MutexLock lock(&mu_);
    return static_cast<int>(queue_.size());
  }

  const BatchOptions& options() const { return options_; }

  // Refuses new tasks, runs the queued ones, joins the executors. Idempotent; not to be
  // called from two threads at once.
  void Stop() {
    {
      absl::MutexLock lock(&mu_);
      stopping_ = true;
      cv_.SignalAll();
    }
    for (std::thread& t : executors_) {
      if (t.joinable()) t.join();
    }
  }

 private:
  void ExecutorLoop() {
    for (;;) {
      Batch batch;
      std::vector<std::pair<std::unique_ptr<Task>, absl::Status>> dropped;
      {
        absl::MutexLock lock(&mu_);
        for (;;) {
          if (queue_.empty()) {
            if (stopping_) return;
            cv_.Wait(&mu_);
            continue;
          }
          if (static_cast<int>(queue_.size()) >= options_.max_batch_size || stopping_) break;
          if (more_coming_ && !more_coming_()) break;  // nothing to wait for
          absl::Time flush_at = queue_.front().enqueued + options_.max_queue_delay;
          if (clock_->Now() >= flush_at) break;
          clock_->WaitUntil(&mu_, &cv_, flush_at);
        }
        TakeBatch(&batch, &dropped);
        if (!queue_.empty()) cv_.Signal();  // more for another executor
      }
      for (auto& [task, status] : dropped) task->Fail(std::move(status));
      if (!batch.empty()) run_batch_(std::move(batch));
    }
  }

  // Moves up to max_batch_size live tasks from the front of the queue into *batch.
  void TakeBatch(Batch* batch, std::vector<std::pair<std::unique_ptr<Task>, absl::Status>>* dropped)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const absl::Time now = clock_->Now();
    size_t taken = 0;
    for (; taken < queue_.size() && static_cast<int>(batch->size()) < options_.max_batch_size; ++taken) {
      QueuedTask<Task>& q = queue_[taken];
      // Deadline first: gRPC cancels a call whose deadline passed, and the expiry is the
      // reason worth reporting.
      if (q.task->deadline() <= now) {
        dropped->emplace_back(std::move(q.task), absl::DeadlineExceededError(absl::StrCat(
            "deadline passed after ", absl::FormatDuration(now - q.enqueued),
            " in the queue, before the request's batch ran")));
      } else if (q.task->cancelled()) {
        dropped->emplace_back(std::move(q.task), absl::CancelledError("cancelled before its batch ran"));
      } else {
        batch->push_back(std::move(q));
      }
    }
    queue_.erase(queue_.begin(), queue_.begin() + taken);
  }

  const BatchOptions options_;
  const RunBatch run_batch_;
  Clock* const clock_;
  const MoreComing more_coming_;
  mutable absl::Mutex mu_;
  absl::CondVar cv_;
  std::vector<QueuedTask<Task>> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> executors_;
};

}  // namespace careserve
