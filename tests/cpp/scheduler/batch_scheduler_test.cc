// The shared scheduler with fake tasks, a clock that moves only when told to, and a thread
// policy that records what each batch was given.
#include "server/scheduler/batch_scheduler.h"

#include <map>
#include <memory>
#include <set>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"

namespace careserve {
namespace {

// Long enough that a test waiting for something that should happen never flakes.
constexpr absl::Duration kPatience = absl::Seconds(20);

class FakeTask final : public BatchTask {
 public:
  FakeTask(int id, absl::Status* failure, absl::Time deadline = absl::InfiniteFuture())
      : id_(id), failure_(failure), deadline_(deadline) {}
  absl::Time deadline() const override { return deadline_; }
  bool cancelled() const override { return cancelled_; }
  void Fail(absl::Status status) override { *failure_ = std::move(status); }
  int id() const { return id_; }
  void Cancel() { cancelled_ = true; }

 private:
  int id_;
  absl::Status* failure_;
  absl::Time deadline_;
  bool cancelled_ = false;
};

class RecordingPolicy final : public ThreadPolicy {
 public:
  void StartThread(int index) override {
    absl::MutexLock lock(&mu_);
    index_of_[std::this_thread::get_id()] = index;
  }
  void UseThreads(int threads) override {
    absl::MutexLock lock(&mu_);
    last_threads_[std::this_thread::get_id()] = threads;
  }
  void StayAwake(int threads, absl::FunctionRef<bool()> wake, absl::Duration) override {
    absl::MutexLock lock(&mu_);
    ++stay_awake_;
  }
  // The engine thread index and intra-op threads of the calling thread.
  std::pair<int, int> Here() {
    absl::MutexLock lock(&mu_);
    return {index_of_[std::this_thread::get_id()], last_threads_[std::this_thread::get_id()]};
  }
  int stay_awake() {
    absl::MutexLock lock(&mu_);
    return stay_awake_;
  }

 private:
  absl::Mutex mu_;
  std::map<std::thread::id, int> index_of_;
  std::map<std::thread::id, int> last_threads_;
  int stay_awake_ = 0;
};

struct RanBatch {
  std::vector<int> ids;
  int thread = -1;
  int threads = 0;
};

// Runs a queue's batches: records them, and holds each until released when told to.
class Runner {
 public:
  Runner(RecordingPolicy* policy, FakeClock* clock) : policy_(policy), clock_(clock) {}

  RunBatchFn Fn() {
    return [this](Batch batch) {
      RanBatch ran;
      for (auto& q : batch) ran.ids.push_back(static_cast<FakeTask&>(*q.task).id());
      std::tie(ran.thread, ran.threads) = policy_->Here();
      absl::MutexLock lock(&mu_);
      batches_.push_back(ran);
      ++running_;
      mu_.Await(absl::Condition(+[](Runner* r) { return !r->hold_ || r->release_ > 0; }, this));
      if (hold_) --release_;
      if (advance_ > absl::ZeroDuration()) clock_->Advance(advance_);
      --running_;
    };
  }
  void Hold() {
    absl::MutexLock lock(&mu_);
    hold_ = true;
  }
  void ReleaseOne() {
    absl::MutexLock lock(&mu_);
    ++release_;
  }
  void ReleaseAll() {
    absl::MutexLock lock(&mu_);
    hold_ = false;
  }
  // Each batch moves the fake clock this much (its "compute time").
  void AdvancePerBatch(absl::Duration d) {
    absl::MutexLock lock(&mu_);
    advance_ = d;
  }
  bool AwaitBatches(size_t n) {
    absl::MutexLock lock(&mu_);
    awaited_ = static_cast<int>(n);
    return mu_.AwaitWithTimeout(
        absl::Condition(+[](Runner* r) { return static_cast<int>(r->batches_.size()) >= r->awaited_; }, this),
        kPatience);
  }
  bool AwaitRunning(int n) {
    absl::MutexLock lock(&mu_);
    awaited_ = n;
    return mu_.AwaitWithTimeout(absl::Condition(+[](Runner* r) { return r->running_ >= r->awaited_; }, this),
                                kPatience);
  }
  std::vector<RanBatch> batches() {
    absl::MutexLock lock(&mu_);
    return batches_;
  }

 private:
  RecordingPolicy* policy_;
  FakeClock* clock_;
  absl::Mutex mu_;
  std::vector<RanBatch> batches_;
  int running_ = 0;
  bool hold_ = false;
  int release_ = 0;
  absl::Duration advance_;
  int awaited_ = 0;
};

class SchedulerTest : public ::testing::Test {
 protected:
  void Start(SchedulerOptions options) {
    scheduler_ = std::make_unique<SharedBatchScheduler>(options, &policy_, &clock_);
  }
  // The fixture keeps the queue until TearDown, which releases held batches first.
  BatchQueue* Queue(QueueOptions options, Runner* runner, std::vector<Shed>* shed = nullptr) {
    queues_.push_back(scheduler_->AddQueue(options, runner->Fn(), [this, shed](Shed s) {
      absl::MutexLock lock(&shed_mu_);
      if (shed != nullptr) shed->push_back(s);
    }));
    return queues_.back().get();
  }
  // Admits and submits task `id`; returns Submit's status.
  absl::Status Send(BatchQueue* queue, int id, absl::Time deadline = absl::InfiniteFuture()) {
    absl::Status admitted = queue->Admit();
    if (!admitted.ok()) return admitted;
    std::unique_ptr<BatchTask> task = std::make_unique<FakeTask>(id, &failures_[id], deadline);
    return queue->Submit(&task);
  }
  bool AwaitIdle() {
    for (absl::Time end = absl::Now() + kPatience; absl::Now() < end; absl::SleepFor(absl::Milliseconds(1))) {
      if (scheduler_->Idle()) return true;
    }
    return false;
  }
  void TearDown() override {
    runner_.ReleaseAll();
    other_.ReleaseAll();
    queues_.clear();
    scheduler_.reset();
  }

  FakeClock clock_{absl::UnixEpoch() + absl::Hours(1)};
  RecordingPolicy policy_;
  Runner runner_{&policy_, &clock_};
  Runner other_{&policy_, &clock_};
  std::vector<std::unique_ptr<BatchQueue>> queues_;
  std::unique_ptr<SharedBatchScheduler> scheduler_;
  std::map<int, absl::Status> failures_;
  absl::Mutex shed_mu_;
};

void Measure(BatchQueue* q, std::vector<std::pair<int, double>> ms, bool lone = false) {
  for (auto [b, t] : ms) q->RecordBatchTime(b, absl::Milliseconds(t), lone);
}

TEST_F(SchedulerTest, AdaptiveRunsALoneRequestAtOnceWhateverTheQueueDelay) {
  Start({.engine_threads = 2});
  QueueOptions o;
  o.max_queue_delay = absl::Hours(1);  // the fake clock never gets there
  BatchQueue* queue = Queue(o, &runner_);
  Measure(queue, {{1, 18}, {4, 62}, {8, 126}, {16, 260}});
  ASSERT_TRUE(Send(queue, 1).ok());
  ASSERT_TRUE(runner_.AwaitBatches(1));
  EXPECT_EQ(runner_.batches()[0].ids, std::vector<int>{1});
}

TEST_F(SchedulerTest, FixedDelayWaitsForItsBatchToFillUntilTheDelayPasses) {
  Start({.engine_threads = 1});
  QueueOptions o;
  o.policy = BatchPolicy::kFixedDelay;
  o.max_batch_size = 4;
  o.max_queue_delay = absl::Milliseconds(5);
  BatchQueue* queue = Queue(o, &runner_);
  ASSERT_TRUE(queue->Admit().ok());  // a second request is on its way: worth waiting for
  ASSERT_TRUE(Send(queue, 1).ok());
  absl::SleepFor(absl::Milliseconds(50));
  EXPECT_TRUE(runner_.batches().empty());
  clock_.Advance(absl::Milliseconds(5));
  ASSERT_TRUE(runner_.AwaitBatches(1));
  EXPECT_EQ(runner_.batches()[0].ids, std::vector<int>{1});
  queue->Abandon();
}

TEST_F(SchedulerTest, FixedDelayRunsAFullBatchAtOnce) {
  Start({.engine_threads = 1});
  QueueOptions o;
  o.policy = BatchPolicy::kFixedDelay;
  o.max_batch_size = 3;
  o.max_queue_delay = absl::Hours(1);
  BatchQueue* queue = Queue(o, &runner_);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(queue->Admit().ok());
  for (int i = 1; i <= 3; ++i) {
    std::unique_ptr<BatchTask> task = std::make_unique<FakeTask>(i, &failures_[i]);
    ASSERT_TRUE(queue->Submit(&task).ok());
  }
  ASSERT_TRUE(runner_.AwaitBatches(1));
  EXPECT_EQ(runner_.batches()[0].ids, (std::vector<int>{1, 2, 3}));
}

TEST_F(SchedulerTest, ABacklogIsDrainedInBiggerBatchesThanLightLoadGets) {
  Start({.engine_threads = 1});
  QueueOptions o;
  o.max_batch_size = 16;
  BatchQueue* queue = Queue(o, &runner_);
  Measure(queue, {{1, 11}, {16, 26}});  // 10 ms fixed + 1 ms per image
  runner_.Hold();
  ASSERT_TRUE(Send(queue, 0).ok());
  ASSERT_TRUE(runner_.AwaitRunning(1));
  for (int i = 1; i <= 32; ++i) ASSERT_TRUE(Send(queue, i).ok());
  runner_.ReleaseAll();
  ASSERT_TRUE(runner_.AwaitBatches(3));
  const auto batches = runner_.batches();
  EXPECT_EQ(batches[0].ids.size(), 1u);
  EXPECT_EQ(batches[1].ids.size(), 16u);  // the backlog, as big as allowed
  EXPECT_EQ(batches[1].ids.front(), 1);   // in arrival order
  EXPECT_EQ(batches[2].ids.size(), 16u);
}

TEST_F(SchedulerTest, AFullQueueIsRefusedAtAdmissionAndCounted) {
  Start({.engine_threads = 1});
  QueueOptions o;
  o.queue_capacity = 2;
  std::vector<Shed> shed;
  BatchQueue* queue = Queue(o, &runner_, &shed);
  runner_.Hold();
  ASSERT_TRUE(Send(queue, 1).ok());
  ASSERT_TRUE(runner_.AwaitRunning(1));  // 1 runs; capacity counts those waiting
  ASSERT_TRUE(Send(queue, 2).ok());
  ASSERT_TRUE(queue->Admit().ok());  // being decoded: counts too
  const absl::Status refused = queue->Admit();
  EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(refused.message().find("1 queued, 1 being decoded"), std::string::npos) << refused;
  EXPECT_EQ(shed, std::vector<Shed>{Shed::kQueueFull});
  queue->Abandon();
}

TEST_F(SchedulerTest, ARequestThatCannotMeetItsDeadlineIsRefusedAtOnceAndLeftWithTheCaller) {
  Start({.engine_threads = 1});
  std::vector<Shed> shed;
  BatchQueue* queue = Queue({}, &runner_, &shed);
  Measure(queue, {{1, 100}, {16, 1600}});
  runner_.Hold();
  ASSERT_TRUE(Send(queue, 1).ok());
  ASSERT_TRUE(runner_.AwaitRunning(1));
  ASSERT_TRUE(queue->Admit().ok());
  std::unique_ptr<BatchTask> task =
      std::make_unique<FakeTask>(2, &failures_[2], clock_.Now() + absl::Milliseconds(150));
  const absl::Status status = queue->Submit(&task);
  EXPECT_EQ(status.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_NE(status.message().find("cannot finish by the deadline"), std::string::npos) << status;
  EXPECT_NE(task, nullptr);
  EXPECT_EQ(shed, std::vector<Shed>{Shed::kDeadlinePredicted});
  // One that can make it is queued.
  EXPECT_TRUE(Send(queue, 3, clock_.Now() + absl::Milliseconds(400)).ok());
}

TEST_F(SchedulerTest, ExpiredAndCancelledRequestsAreAnsweredNotRun) {
  Start({.engine_threads = 1});
  std::vector<Shed> shed;
  BatchQueue* queue = Queue({}, &runner_, &shed);
  runner_.Hold();
  ASSERT_TRUE(Send(queue, 1).ok());
  ASSERT_TRUE(runner_.AwaitRunning(1));
  ASSERT_TRUE(Send(queue, 2, clock_.Now() + absl::Milliseconds(10)).ok());
  ASSERT_TRUE(queue->Admit().ok());
  auto cancelled = std::make_unique<FakeTask>(3, &failures_[3]);
  cancelled->Cancel();
  std::unique_ptr<BatchTask> task = std::move(cancelled);
  ASSERT_TRUE(queue->Submit(&task).ok());
  ASSERT_TRUE(Send(queue, 4).ok());
  clock_.Advance(absl::Milliseconds(20));
  runner_.ReleaseAll();
  ASSERT_TRUE(runner_.AwaitBatches(2));
  queue->Stop();
  EXPECT_EQ(runner_.batches()[1].ids, std::vector<int>{4});
  EXPECT_EQ(failures_[2].code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(failures_[3].code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(shed, (std::vector<Shed>{Shed::kDeadlinePassed, Shed::kCancelled}));
}

TEST_F(SchedulerTest, QueuesTakeTurnsOnTheSharedThreads) {
  Start({.engine_threads = 1});
  QueueOptions o;
  o.max_batch_size = 1;
  Runner& other = other_;
  BatchQueue* a = Queue(o, &runner_);
  BatchQueue* b = Queue(o, &other);
  runner_.Hold();
  ASSERT_TRUE(Send(a, 1).ok());
  ASSERT_TRUE(runner_.AwaitRunning(1));
  for (int i = 2; i <= 3; ++i) ASSERT_TRUE(Send(a, i).ok());
  for (int i = 11; i <= 12; ++i) ASSERT_TRUE(Send(b, i).ok());
  // From here a's batches wait for a release each, b's run: the order shows the turns.
  runner_.ReleaseOne();
  ASSERT_TRUE(other.AwaitBatches(1));
  EXPECT_EQ(other.batches()[0].ids, std::vector<int>{11});
  runner_.ReleaseAll();
  ASSERT_TRUE(runner_.AwaitBatches(3));
  ASSERT_TRUE(other.AwaitBatches(2));
}

TEST_F(SchedulerTest, InstancesCapAQueuesBatchesAtOnce) {
  Start({.engine_threads = 2});
  QueueOptions o;
  o.max_batch_size = 1;
  o.instances = 1;
  BatchQueue* queue = Queue(o, &runner_);
  runner_.Hold();
  ASSERT_TRUE(Send(queue, 1).ok());
  ASSERT_TRUE(Send(queue, 2).ok());
  ASSERT_TRUE(runner_.AwaitRunning(1));
  absl::SleepFor(absl::Milliseconds(50));
  EXPECT_EQ(runner_.batches().size(), 1u);  // the second thread is free, but the model's one instance is not
  runner_.ReleaseAll();
  ASSERT_TRUE(runner_.AwaitBatches(2));
}

TEST_F(SchedulerTest, ALoneBatchGetsMoreThreadsOnlyWhereThatWasMeasuredFaster) {
  Start({.engine_threads = 2, .threads_per_batch = 1, .lone_batch_threads = 2, .lone_batch_spin = absl::Milliseconds(5)});
  QueueOptions o;
  o.max_batch_size = 1;
  BatchQueue* slow = Queue(o, &runner_);
  Measure(slow, {{1, 18}});
  Measure(slow, {{1, 19}}, /*lone=*/true);  // a second thread does not help
  Runner& fast_runner = other_;
  BatchQueue* fast = Queue(o, &fast_runner);
  Measure(fast, {{1, 330}});
  Measure(fast, {{1, 180}}, /*lone=*/true);

  ASSERT_TRUE(AwaitIdle());  // both engine threads started
  ASSERT_TRUE(Send(slow, 1).ok());
  ASSERT_TRUE(runner_.AwaitBatches(1));
  EXPECT_EQ(runner_.batches()[0].threads, 1);
  EXPECT_EQ(runner_.batches()[0].thread, 0);  // an idle server's next request goes to thread 0
  ASSERT_TRUE(AwaitIdle());
  ASSERT_TRUE(Send(fast, 2).ok());
  ASSERT_TRUE(fast_runner.AwaitBatches(1));
  EXPECT_EQ(fast_runner.batches()[0].thread, 0);  // only engine thread 0 runs wide batches
  EXPECT_EQ(fast_runner.batches()[0].threads, 2);
  ASSERT_TRUE(AwaitIdle());
  EXPECT_EQ(policy_.stay_awake(), 2);  // thread 0 stayed awake after each batch it ran alone

  // Two at once: each on one thread.
  fast_runner.Hold();
  ASSERT_TRUE(Send(fast, 3).ok());
  ASSERT_TRUE(fast_runner.AwaitRunning(1));
  ASSERT_TRUE(Send(fast, 4).ok());
  ASSERT_TRUE(fast_runner.AwaitRunning(2));
  fast_runner.ReleaseAll();
  ASSERT_TRUE(fast_runner.AwaitBatches(3));
  EXPECT_EQ(fast_runner.batches()[2].threads, 1);
}

TEST_F(SchedulerTest, JobsRunOnEngineThreadsWithTheThreadsAskedFor) {
  Start({.engine_threads = 2, .threads_per_batch = 1, .lone_batch_threads = 2});
  std::pair<int, int> where{-1, -1};
  scheduler_->RunOnEngineThread([&] { where = policy_.Here(); });
  EXPECT_EQ(where.second, 1);
  EXPECT_GE(where.first, 0);
  scheduler_->RunOnEngineThread([&] { where = policy_.Here(); }, 2);
  EXPECT_EQ(where, std::make_pair(0, 2));
}

TEST_F(SchedulerTest, StopRunsWhatIsQueuedAndRefusesMore) {
  Start({.engine_threads = 1});
  QueueOptions o;
  o.max_batch_size = 1;
  BatchQueue* queue = Queue(o, &runner_);
  runner_.Hold();
  for (int i = 1; i <= 3; ++i) ASSERT_TRUE(Send(queue, i).ok());
  ASSERT_TRUE(runner_.AwaitRunning(1));
  std::thread stopper([&] { queue->Stop(); });
  absl::SleepFor(absl::Milliseconds(20));
  EXPECT_EQ(queue->Admit().code(), absl::StatusCode::kUnavailable);
  runner_.ReleaseAll();
  stopper.join();
  EXPECT_EQ(runner_.batches().size(), 3u);
}

TEST(QueueOptionsTest, OutOfRangeValuesAreNamed) {
  QueueOptions o;
  o.max_batch_size = 0;
  EXPECT_NE(o.Validate().message().find("max_batch_size"), std::string::npos);
  o = {};
  o.queue_capacity = 0;
  EXPECT_NE(o.Validate().message().find("queue_capacity"), std::string::npos);
  o = {};
  o.instances = 65;
  EXPECT_NE(o.Validate().message().find("instances"), std::string::npos);
  EXPECT_TRUE(QueueOptions{}.Validate().ok());
}

}  // namespace
}  // namespace careserve
