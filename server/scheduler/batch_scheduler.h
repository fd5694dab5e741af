// The shared batch scheduler, shaped like TensorFlow Serving's SharedBatchScheduler: one
// pool of engine threads serves every model version's queue in turn. It owns admission
// (queue capacity, deadlines, cancellation), batch formation (batch_policy.h), which
// thread runs a batch and how many intra-op threads that batch gets (ThreadPolicy).
// Every LibTorch computation of the process runs on its engine threads: batches, and
// loading and warm-up through RunOnEngineThread.
//
// Why one pool: with one thread pool per model, models oversubscribe the cores against
// each other, and GNU OpenMP keeps one thread team per thread that starts parallel work;
// past the core count its teams stop spinning between parallel regions and every batch
// gets ~30% slower here. A fixed set of engine threads bounds both.
#pragma once

#include <atomic>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/scheduler/batch_policy.h"
#include "server/scheduler/batch_times.h"
#include "server/scheduler/clock.h"

namespace careserve {

// One request waiting for a batch.
class BatchTask {
 public:
  virtual ~BatchTask() = default;
  virtual absl::Time deadline() const = 0;  // absl::InfiniteFuture() for none
  virtual bool cancelled() const = 0;
  // The scheduler drops the task with this reason instead of running it.
  virtual void Fail(absl::Status status) = 0;
};

struct QueuedTask {
  std::unique_ptr<BatchTask> task;
  absl::Time enqueued;
};
using Batch = std::vector<QueuedTask>;

// Sets how many intra-op threads the calling engine thread computes with. The server's
// (openmp_thread_policy.h) sets OpenMP's and OpenBLAS's counts; tests use their own.
class ThreadPolicy {
 public:
  virtual ~ThreadPolicy() = default;
  // On each engine thread as it starts (name it, set per-thread state).
  virtual void StartThread(int index) = 0;
  // Before each batch or job, on the thread that runs it.
  virtual void UseThreads(int threads) = 0;
  // After a batch that ran alone on `threads` threads, with nothing else to do: may keep
  // those threads awake until `wake` is true or `limit` passes, so that the next lone
  // request starts on awake cores. Default: return at once.
  virtual void StayAwake(int threads, absl::FunctionRef<bool()> wake, absl::Duration limit) {}
};

struct SchedulerOptions {
  // Engine threads: batches computed at once, across all models.
  int engine_threads = 1;
  // Intra-op threads of each batch.
  int threads_per_batch = 1;
  // Intra-op threads of a batch that runs alone (no other batch running or waiting), on
  // engine thread 0 only, so that the teams' threads stay within the cores. At most
  // threads_per_batch means no difference.
  int lone_batch_threads = 1;
  // Only for models whose lone batches were measured faster on lone_batch_threads (the
  // default); false: every lone batch.
  bool lone_batch_where_faster = true;
  // How long engine thread 0 (and a lone batch's team) may stay awake after a batch that
  // ran alone (ThreadPolicy::StayAwake).
  absl::Duration lone_batch_spin = absl::ZeroDuration();
};

struct QueueOptions {
  std::string name;  // for messages
  BatchPolicy policy = BatchPolicy::kAdaptive;
  // Most tasks in one batch.
  int max_batch_size = 16;
  // kFixedDelay: the longest a task waits for its batch to fill. kAdaptive never holds a
  // task while a thread is free, so it stays within any value.
  absl::Duration max_queue_delay = absl::Microseconds(2000);
  // Most tasks admitted and not yet in a batch (being preprocessed, or queued).
  int queue_capacity = 256;
  // Most batches of this queue running at once (0: one per engine thread).
  int instances = 0;

  absl::Status Validate() const;
};

// Why a task was answered without running, for metrics.
enum class Shed {
  kQueueFull,        // refused at admission
  kDeadlinePredicted,  // could not finish by its deadline given the queue ahead and t(b)
  kDeadlinePassed,   // its deadline passed while it waited
  kCancelled,        // its client cancelled it while it waited
};

// queue_full, deadline_predicted, deadline_passed, cancelled.
const char* ShedName(Shed reason);

// Called on an engine thread with the batch to compute; owns the tasks from then on.
using RunBatchFn = std::function<void(Batch batch)>;
using ShedFn = std::function<void(Shed reason)>;

class SharedBatchScheduler;

// One model version's queue. Requests go Admit -> (decode) -> Submit; the scheduler runs
// them in batches on its engine threads.
class BatchQueue {
 public:
  // Runs what is queued, then removes the queue from the scheduler.
  ~BatchQueue();
  BatchQueue(const BatchQueue&) = delete;
  BatchQueue& operator=(const BatchQueue&) = delete;

  // Counts a request against queue_capacity before it is decoded, so that overload is
  // refused before the work: RESOURCE_EXHAUSTED when full, UNAVAILABLE when stopping.
  // An admitted request must end with exactly one Submit or Abandon.
  absl::Status Admit();
  // An admitted request that will not be submitted (answered early).
  void Abandon();
  // Queues an admitted request and takes it; on refusal (it cannot meet its deadline:
  // DEADLINE_EXCEEDED; stopping: UNAVAILABLE) returns the reason and leaves it with the
  // caller, to answer at once.
  absl::Status Submit(std::unique_ptr<BatchTask>* task);

  // The batch-time curves' shapes, from the warm-up (batch_times.h), on threads_per_batch
  // threads or (`lone`) alone on lone_batch_threads; every batch that runs then scales its
  // curve. A batch runs alone on more threads only where that is estimated to be faster.
  void RecordBatchTime(int batch, absl::Duration took, bool lone = false);
  absl::Duration EstimatedBatchTime(int batch, bool lone = false) const;

  int QueueDepth() const;
  const QueueOptions& options() const { return options_; }

  // Refuses new requests and waits until every queued one has run. Idempotent.
  void Stop();

 private:
  friend class SharedBatchScheduler;
  BatchQueue(SharedBatchScheduler* scheduler, QueueOptions options, RunBatchFn run, ShedFn shed);

  SharedBatchScheduler* const scheduler_;
  const QueueOptions options_;
  const RunBatchFn run_;
  const ShedFn shed_;
  // Guarded by scheduler_->mu_.
  std::deque<QueuedTask> tasks_;
  int arriving_ = 0;  // admitted, not yet submitted
  int running_ = 0;   // batches running
  bool stopping_ = false;
  BatchTimes times_;
  BatchTimes lone_times_;
};

class SharedBatchScheduler {
 public:
  // `policy` and `clock` must outlive the scheduler; options must be valid.
  SharedBatchScheduler(SchedulerOptions options, ThreadPolicy* policy, Clock* clock = RealClock::Get());
  // Every queue must be gone first.
  ~SharedBatchScheduler();
  SharedBatchScheduler(const SharedBatchScheduler&) = delete;
  SharedBatchScheduler& operator=(const SharedBatchScheduler&) = delete;

  std::unique_ptr<BatchQueue> AddQueue(QueueOptions options, RunBatchFn run, ShedFn shed = nullptr);

  // Runs `f` on an engine thread (before any queued batch) with `threads` intra-op threads
  // (0: threads_per_batch; more than that: on engine thread 0, like a lone batch) and
  // returns when it has.
  void RunOnEngineThread(absl::FunctionRef<void()> f, int threads = 0);

  const SchedulerOptions& options() const { return options_; }
  // No batch or job running or waiting, every engine thread idle.
  bool Idle() const;

 private:
  friend class BatchQueue;
  struct Job {
    absl::FunctionRef<void()>* f;
    int threads;
    bool* done;
  };
  struct Thread {
    absl::CondVar cv;
    bool busy = false;          // running a batch or job, or woken to look for one
    absl::Time busy_until;      // expected end of its batch (now when unknown)
  };
  // What an engine thread takes next.
  struct Work {
    BatchQueue* queue = nullptr;  // whose tasks these are
    Batch batch;                  // to run (may be empty: only dropped ones)
    std::vector<std::pair<std::unique_ptr<BatchTask>, absl::Status>> dropped;
    std::vector<Shed> shed;
    int threads = 1;
    absl::Time wake_at = absl::InfiniteFuture();  // nothing ready: look again then
  };

  void Loop(int index);
  // Forms the next batch for thread `index`, if any queue has one ready.
  Work TakeWork(int index, absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A batch of `queue` is ready now; or else when it will be (kFixedDelay), in *wake_at.
  bool Ready(const BatchQueue& queue, absl::Time now, absl::Time* wake_at) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool AnyReady(absl::Time now) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The job thread `index` may run next, if any.
  bool TakeJob(int index, Job* job) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Wakes an idle thread for new work: engine thread 0 when no thread is busy (a lone batch
  // may use more threads there, and it may still be awake), otherwise the one idle the
  // shortest (its caches are the warmest).
  void WakeIdle() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  int BusyThreads() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // When each engine thread frees up (now at the earliest), thread `except` left out; for a
  // queue with fewer instances than threads, only the ones it can use, the first free.
  std::vector<absl::Time> FreeTimes(absl::Time now, int except, const BatchQueue* queue) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RemoveQueue(BatchQueue* queue);

  const SchedulerOptions options_;
  ThreadPolicy* const policy_;
  Clock* const clock_;
  std::atomic<uint64_t> submissions_{0};  // work ever handed in (StayAwake watches it)
  mutable absl::Mutex mu_;
  absl::CondVar done_cv_;  // a job or a queue's last batch finished
  std::vector<Thread> threads_ ABSL_GUARDED_BY(mu_);
  std::vector<int> idle_ ABSL_GUARDED_BY(mu_);  // idle threads, the last one idle last
  std::deque<Job> jobs_ ABSL_GUARDED_BY(mu_);
  std::vector<BatchQueue*> queues_ ABSL_GUARDED_BY(mu_);
  size_t next_queue_ ABSL_GUARDED_BY(mu_) = 0;  // round robin among queues
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> workers_;
};

}  // namespace careserve
