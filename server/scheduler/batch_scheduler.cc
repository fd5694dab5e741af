#include "server/scheduler/batch_scheduler.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"

namespace careserve {

namespace {

// Estimates come from medians of past batches; one can finish this much sooner. A task is
// shed for its deadline only when even that would be too late.
constexpr double kOptimism = 0.8;
// A batch runs alone on more threads only where that is measured to take at most this
// share of its time on threads_per_batch (small models gain nothing from a second thread
// here, and the wider team then shares the cores with the next batch).
constexpr double kLoneGain = 0.9;

std::string Millis(absl::Duration d) { return absl::StrCat(absl::ToInt64Milliseconds(d), " ms"); }

}  // namespace

const char* ShedName(Shed reason) {
  switch (reason) {
    case Shed::kQueueFull: return "queue_full";
    case Shed::kDeadlinePredicted: return "deadline_predicted";
    case Shed::kDeadlinePassed: return "deadline_passed";
    case Shed::kCancelled: return "cancelled";
  }
  return "unknown";
}

absl::Status QueueOptions::Validate() const {
  if (max_batch_size < 1) {
    return absl::InvalidArgumentError(absl::StrCat("max_batch_size must be >= 1, got ", max_batch_size));
  }
  if (max_batch_size > 1024) {
    return absl::InvalidArgumentError(absl::StrCat("max_batch_size must be at most 1024, got ", max_batch_size));
  }
  if (max_queue_delay < absl::ZeroDuration()) return absl::InvalidArgumentError("max_queue_delay must be >= 0");
  if (queue_capacity < 1) {
    return absl::InvalidArgumentError(absl::StrCat("queue_capacity must be >= 1, got ", queue_capacity));
  }
  if (instances < 0 || instances > 64) {
    return absl::InvalidArgumentError(absl::StrCat("instances must be between 0 and 64, got ", instances));
  }
  return absl::OkStatus();
}

// --- BatchQueue ------------------------------------------------------------------------

BatchQueue::BatchQueue(SharedBatchScheduler* scheduler, QueueOptions options, RunBatchFn run, ShedFn shed)
    : scheduler_(scheduler), options_(std::move(options)), run_(std::move(run)), shed_(std::move(shed)) {}

BatchQueue::~BatchQueue() {
  Stop();
  scheduler_->RemoveQueue(this);
}

absl::Status BatchQueue::Admit() {
  absl::MutexLock lock(&scheduler_->mu_);
  if (stopping_) return absl::UnavailableError("the model is stopping");
  const int queued = static_cast<int>(tasks_.size());
  if (arriving_ + queued >= options_.queue_capacity) {
    if (shed_) shed_(Shed::kQueueFull);
    return absl::ResourceExhaustedError(absl::StrCat("queue full: ", options_.queue_capacity,
                                                     " requests already waiting (", queued, " queued, ", arriving_,
                                                     " being decoded)"));
  }
  ++arriving_;
  return absl::OkStatus();
}

void BatchQueue::Abandon() {
  absl::MutexLock lock(&scheduler_->mu_);
  --arriving_;
  // kFixedDelay waits for arriving requests: this one is not coming.
  if (options_.policy == BatchPolicy::kFixedDelay && !tasks_.empty()) scheduler_->WakeIdle();
}

absl::Status BatchQueue::Submit(std::unique_ptr<BatchTask>* task) {
  SharedBatchScheduler& s = *scheduler_;
  absl::MutexLock lock(&s.mu_);
  --arriving_;
  if (stopping_) return absl::UnavailableError("the model is stopping");
  const absl::Time now = s.clock_->Now();
  const absl::Time deadline = (*task)->deadline();
  if (deadline != absl::InfiniteFuture() && !times_.empty()) {
    const int position = static_cast<int>(tasks_.size()) + 1;
    const absl::Time earliest = EarliestCompletion(position, options_.max_batch_size, now, s.FreeTimes(now, -1, this),
                                                   times_);
    if (now + kOptimism * (earliest - now) > deadline) {
      if (shed_) shed_(Shed::kDeadlinePredicted);
      // kFixedDelay may be waiting for this one.
      if (options_.policy == BatchPolicy::kFixedDelay && !tasks_.empty()) s.WakeIdle();
      return absl::DeadlineExceededError(absl::StrCat(
          "cannot finish by the deadline (", Millis(deadline - now), " from now): ", position - 1,
          " request(s) queued ahead, finishing at the earliest in ", Millis(earliest - now),
          " (batch of 1: ", Millis(times_.Estimate(1)), ")"));
    }
  }
  tasks_.push_back({std::move(*task), now});
  s.submissions_.fetch_add(1, std::memory_order_release);
  s.WakeIdle();
  return absl::OkStatus();
}

void BatchQueue::RecordBatchTime(int batch, absl::Duration took, bool lone) {
  absl::MutexLock lock(&scheduler_->mu_);
  (lone ? lone_times_ : times_).Record(batch, took);
}

absl::Duration BatchQueue::EstimatedBatchTime(int batch, bool lone) const {
  absl::MutexLock lock(&scheduler_->mu_);
  return (lone ? lone_times_ : times_).Estimate(batch);
}

int BatchQueue::QueueDepth() const {
  absl::MutexLock lock(&scheduler_->mu_);
  return static_cast<int>(tasks_.size());
}

void BatchQueue::Stop() {
  absl::MutexLock lock(&scheduler_->mu_);
  stopping_ = true;
  if (!tasks_.empty()) scheduler_->WakeIdle();
  auto drained = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(scheduler_->mu_) { return tasks_.empty() && running_ == 0; };
  while (!drained()) scheduler_->done_cv_.Wait(&scheduler_->mu_);
}

// --- SharedBatchScheduler ---------------------------------------------------------------

SharedBatchScheduler::SharedBatchScheduler(SchedulerOptions options, ThreadPolicy* policy, Clock* clock)
    : options_(options), policy_(policy), clock_(clock), threads_(options.engine_threads) {
  for (int i = 0; i < options_.engine_threads; ++i) {
    workers_.emplace_back([this, i] { Loop(i); });
  }
}

SharedBatchScheduler::~SharedBatchScheduler() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    for (Thread& t : threads_) t.cv.Signal();
  }
  for (std::thread& t : workers_) t.join();
}

std::unique_ptr<BatchQueue> SharedBatchScheduler::AddQueue(QueueOptions options, RunBatchFn run, ShedFn shed) {
  std::unique_ptr<BatchQueue> queue(new BatchQueue(this, std::move(options), std::move(run), std::move(shed)));
  absl::MutexLock lock(&mu_);
  queues_.push_back(queue.get());
  return queue;
}

void SharedBatchScheduler::RemoveQueue(BatchQueue* queue) {
  absl::MutexLock lock(&mu_);
  queues_.erase(std::remove(queues_.begin(), queues_.end(), queue), queues_.end());
  next_queue_ = 0;
}

void SharedBatchScheduler::RunOnEngineThread(absl::FunctionRef<void()> f, int threads) {
  bool done = false;
  absl::MutexLock lock(&mu_);
  jobs_.push_back({&f, threads > 0 ? threads : options_.threads_per_batch, &done});
  submissions_.fetch_add(1, std::memory_order_release);
  // Every idle thread looks: one of them may run it (only thread 0 a wide job).
  for (int i : idle_) {
    threads_[i].busy = true;
    threads_[i].cv.Signal();
  }
  idle_.clear();
  while (!done) done_cv_.Wait(&mu_);
}

bool SharedBatchScheduler::TakeJob(int index, Job* job) {
  for (auto it = jobs_.begin(); it != jobs_.end(); ++it) {
    if (it->threads <= options_.threads_per_batch || index == 0) {
      *job = *it;
      jobs_.erase(it);
      return true;
    }
  }
  return false;
}

bool SharedBatchScheduler::Idle() const {
  absl::MutexLock lock(&mu_);
  if (!jobs_.empty() || BusyThreads() > 0 || static_cast<int>(idle_.size()) != options_.engine_threads) return false;
  for (const BatchQueue* q : queues_) {
    if (!q->tasks_.empty() || q->running_ > 0) return false;
  }
  return true;
}

int SharedBatchScheduler::BusyThreads() const {
  int busy = 0;
  for (const Thread& t : threads_) busy += t.busy;
  return busy;
}

void SharedBatchScheduler::WakeIdle() {
  if (idle_.empty()) return;
  auto pick = idle_.end() - 1;
  if (BusyThreads() == 0) {
    if (auto zero = std::find(idle_.begin(), idle_.end(), 0); zero != idle_.end()) pick = zero;
  }
  Thread& t = threads_[*pick];
  idle_.erase(pick);
  t.busy = true;
  t.busy_until = clock_->Now();
  t.cv.Signal();
}

std::vector<absl::Time> SharedBatchScheduler::FreeTimes(absl::Time now, int except, const BatchQueue* queue) const {
  std::vector<absl::Time> out;
  for (int i = 0; i < static_cast<int>(threads_.size()); ++i) {
    if (i != except) out.push_back(std::max(now, threads_[i].busy_until));
  }
  // A queue limited to fewer instances than threads can use only that many at once: the
  // ones that free first.
  const int limit = queue->options_.instances;
  if (limit > 0) {
    std::sort(out.begin(), out.end());
    const int keep = std::max(0, limit - (except >= 0 ? 1 : 0));
    if (static_cast<int>(out.size()) > keep) out.resize(keep);
  }
  return out;
}

bool SharedBatchScheduler::Ready(const BatchQueue& q, absl::Time now, absl::Time* wake_at) const {
  if (q.tasks_.empty()) return false;
  if (q.options_.instances > 0 && q.running_ >= q.options_.instances) return false;
  if (q.options_.policy == BatchPolicy::kAdaptive) return true;
  if (static_cast<int>(q.tasks_.size()) >= q.options_.max_batch_size || q.stopping_ || stopping_ ||
      q.arriving_ == 0) {
    return true;
  }
  const absl::Time flush = q.tasks_.front().enqueued + q.options_.max_queue_delay;
  if (now >= flush) return true;
  *wake_at = std::min(*wake_at, flush);
  return false;
}

bool SharedBatchScheduler::AnyReady(absl::Time now) const {
  absl::Time ignored = absl::InfiniteFuture();
  for (const BatchQueue* q : queues_) {
    if (Ready(*q, now, &ignored)) return true;
  }
  return false;
}

SharedBatchScheduler::Work SharedBatchScheduler::TakeWork(int index, absl::Time now) {
  Work work;
  const size_t n = queues_.size();
  for (size_t k = 0; k < n; ++k) {
    const size_t at = (next_queue_ + k) % n;
    BatchQueue& q = *queues_[at];
    if (!Ready(q, now, &work.wake_at)) continue;
    const int limit = q.options_.max_batch_size;
    const int queued = static_cast<int>(q.tasks_.size());
    const int size = q.options_.policy == BatchPolicy::kAdaptive
                         ? AdaptiveBatchSize(queued, limit, now, FreeTimes(now, index, &q), q.times_)
                         : std::min(queued, limit);
    const absl::Duration estimate = q.times_.Estimate(size);
    while (static_cast<int>(work.batch.size()) < size && !q.tasks_.empty()) {
      QueuedTask t = std::move(q.tasks_.front());
      q.tasks_.pop_front();
      const absl::Time deadline = t.task->deadline();
      // Deadline first: gRPC cancels a call whose deadline passed, and the expiry is the
      // reason worth reporting.
      if (deadline <= now) {
        work.shed.push_back(Shed::kDeadlinePassed);
        work.dropped.emplace_back(std::move(t.task), absl::DeadlineExceededError(absl::StrCat(
            "deadline passed after ", absl::FormatDuration(now - t.enqueued), " in the queue, before its batch ran")));
      } else if (t.task->cancelled()) {
        work.shed.push_back(Shed::kCancelled);
        work.dropped.emplace_back(std::move(t.task), absl::CancelledError("cancelled before its batch ran"));
      } else if (now + kOptimism * estimate > deadline) {
        work.shed.push_back(Shed::kDeadlinePredicted);
        work.dropped.emplace_back(std::move(t.task), absl::DeadlineExceededError(absl::StrCat(
            "cannot finish by the deadline (", Millis(deadline - now), " from now) after ",
            absl::FormatDuration(now - t.enqueued), " in the queue: its batch of ", size, " takes about ",
            Millis(estimate))));
      } else {
        work.batch.push_back(std::move(t));
      }
    }
    // The queue counts its tasks as running until they are answered, so that Stop (and
    // the queue's owner) waits for those dropped here too.
    ++q.running_;
    work.queue = &q;
    if (work.batch.empty()) return work;  // only dropped tasks: answer them, then look again
    next_queue_ = (at + 1) % n;
    const int taken = static_cast<int>(work.batch.size());
    const bool lone = index == 0 && options_.lone_batch_threads > options_.threads_per_batch && BusyThreads() == 1 &&
                      !AnyReady(now) &&
                      (!options_.lone_batch_where_faster ||
                       (!q.lone_times_.empty() && q.lone_times_.Estimate(taken) < kLoneGain * q.times_.Estimate(taken)));
    work.threads = lone ? options_.lone_batch_threads : options_.threads_per_batch;
    threads_[index].busy_until = now + (lone ? q.lone_times_ : q.times_).Estimate(taken);
    return work;
  }
  return work;
}

void SharedBatchScheduler::Loop(int index) {
  policy_->StartThread(index);
  Thread& me = threads_[index];
  absl::MutexLock lock(&mu_);
  me.busy = true;
  for (;;) {
    Job job;
    if (TakeJob(index, &job)) {
      mu_.Unlock();
      policy_->UseThreads(job.threads);
      (*job.f)();
      mu_.Lock();
      *job.done = true;
      done_cv_.SignalAll();
      continue;
    }
    const absl::Time now = clock_->Now();
    Work work = TakeWork(index, now);
    if (work.queue == nullptr) {
      if (stopping_) return;
      me.busy = false;
      me.busy_until = now;
      idle_.push_back(index);
      clock_->WaitUntil(&mu_, &me.cv, work.wake_at);
      // Woken by WakeIdle (which took it off idle_ and marked it busy), by its own timed
      // wait, or spuriously.
      idle_.erase(std::remove(idle_.begin(), idle_.end(), index), idle_.end());
      me.busy = true;
      continue;
    }
    // More ready than this thread takes: another idle thread can start on it now.
    if (!work.batch.empty() && AnyReady(now)) WakeIdle();
    mu_.Unlock();
    for (Shed reason : work.shed) {
      if (work.queue->shed_) work.queue->shed_(reason);
    }
    for (auto& [task, status] : work.dropped) task->Fail(std::move(status));
    if (work.batch.empty()) {
      mu_.Lock();
      if (--work.queue->running_ == 0 && work.queue->stopping_ && work.queue->tasks_.empty()) done_cv_.SignalAll();
      continue;
    }
    const int size = static_cast<int>(work.batch.size());
    policy_->UseThreads(work.threads);
    const absl::Time start = clock_->Now();
    work.queue->run_(std::move(work.batch));
    const absl::Duration took = clock_->Now() - start;
    const uint64_t submissions = submissions_.load(std::memory_order_acquire);
    mu_.Lock();
    BatchQueue& q = *work.queue;
    // Each curve from its own kind of batch: lone ones ran on more threads.
    (work.threads == options_.threads_per_batch ? q.times_ : q.lone_times_).Observe(size, took);
    --q.running_;
    me.busy_until = clock_->Now();
    if (q.stopping_ && q.tasks_.empty() && q.running_ == 0) done_cv_.SignalAll();
    // Thread 0 after a batch that ran alone, with nothing else to do (one request at a time).
    const bool stay_awake = index == 0 && options_.lone_batch_spin > absl::ZeroDuration() && jobs_.empty() &&
                            !AnyReady(clock_->Now()) && BusyThreads() == 1 && !stopping_;
    if (stay_awake) {
      // Idle while it spins, so that the next request is handed to it (WakeIdle prefers
      // thread 0 for a lone batch) and the spin ends.
      me.busy = false;
      idle_.push_back(index);
      mu_.Unlock();
      policy_->StayAwake(
          work.threads,
          [this, submissions] { return submissions_.load(std::memory_order_acquire) != submissions; },
          options_.lone_batch_spin);
      mu_.Lock();
      idle_.erase(std::remove(idle_.begin(), idle_.end(), index), idle_.end());
      me.busy = true;
    }
  }
}

}  // namespace careserve
