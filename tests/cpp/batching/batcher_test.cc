// The batcher alone, with fake tasks and a clock that moves only when told to.
#include "server/batching/batcher.h"

#include <atomic>
#include <memory>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace careserve {
namespace {

// Long enough that a test waiting for something that should happen never flakes.
constexpr absl::Duration kPatience = absl::Seconds(20);

struct FakeTask {
  int id = 0;
  absl::Time deadline_at = absl::InfiniteFuture();
  bool is_cancelled = false;
  absl::Status* failure = nullptr;  // where Fail reports

  absl::Time deadline() const { return deadline_at; }
  bool cancelled() const { return is_cancelled; }
  void Fail(absl::Status status) { *failure = std::move(status); }
};

// Records every batch run; can hold batches back until released.
class Recorder {
 public:
  void Run(Batcher<FakeTask>::Batch batch) {
    absl::MutexLock lock(&mu_);
    std::vector<int> ids;
    for (auto& q : batch) ids.push_back(q.task->id);
    batches_.push_back(ids);
    ++running_;
    max_running_ = std::max(max_running_, running_);
    if (running_ >= release_when_running_) hold_ = false;  // latches: all held batches go
    mu_.Await(absl::Condition(+[](bool* hold) { return !*hold; }, &hold_));
    --running_;
  }
  void Hold(int release_when_running = 1 << 30) {
    absl::MutexLock lock(&mu_);
    hold_ = true;
    release_when_running_ = release_when_running;
  }
  void Release() {
    absl::MutexLock lock(&mu_);
    hold_ = false;
  }
  // Waits (real time) until `n` batches have started.
  bool AwaitBatches(size_t n) {
    absl::MutexLock lock(&mu_);
    awaited_batches_ = n;
    return mu_.AwaitWithTimeout(absl::Condition(this, &Recorder::EnoughBatches), kPatience);
  }
  std::vector<std::vector<int>> batches() {
    absl::MutexLock lock(&mu_);
    return batches_;
  }
  int max_running() {
    absl::MutexLock lock(&mu_);
    return max_running_;
  }

 private:
  bool EnoughBatches() const ABSL_SHARED_LOCKS_REQUIRED(mu_) { return batches_.size() >= awaited_batches_; }
  absl::Mutex mu_;
  std::vector<std::vector<int>> batches_;
  int running_ = 0, max_running_ = 0;
  bool hold_ = false;
  int release_when_running_ = 0;
  size_t awaited_batches_ = 0;
};

std::unique_ptr<FakeTask> Task(int id, absl::Status* failure) {
  auto t = std::make_unique<FakeTask>();
  t->id = id;
  t->failure = failure;
  return t;
}

BatchOptions Options(int max_batch, absl::Duration delay, int capacity = 64, int instances = 1) {
  BatchOptions o;
  o.max_batch_size = max_batch;
  o.max_queue_delay = delay;
  o.queue_capacity = capacity;
  o.instances = instances;
  return o;
}

TEST(BatcherTest, FullBatchesRunWithoutWaitingForTheDelay) {
  FakeClock clock;
  Recorder rec;
  absl::Status failure;
  Batcher<FakeTask> batcher(Options(4, absl::Hours(1)), [&](auto b) { rec.Run(std::move(b)); }, &clock);
  for (int i = 0; i < 8; ++i) {
    auto t = Task(i, &failure);
    ASSERT_TRUE(batcher.Submit(&t).ok());
  }
  ASSERT_TRUE(rec.AwaitBatches(2));  // the clock never moved
  EXPECT_EQ(rec.batches(), (std::vector<std::vector<int>>{{0, 1, 2, 3}, {4, 5, 6, 7}}));
  EXPECT_TRUE(failure.ok());
}

TEST(BatcherTest, PartialBatchRunsWhenTheOldestTaskHasWaitedTheDelay) {
  FakeClock clock;
  Recorder rec;
  absl::Status failure;
  Batcher<FakeTask> batcher(Options(4, absl::Milliseconds(10)), [&](auto b) { rec.Run(std::move(b)); },
                            &clock);
  for (int i = 0; i < 2; ++i) {
    auto t = Task(i, &failure);
    ASSERT_TRUE(batcher.Submit(&t).ok());
  }
  clock.Advance(absl::Milliseconds(9));
  absl::SleepFor(absl::Milliseconds(50));  // give a wrong executor the chance to run early
  EXPECT_TRUE(rec.batches().empty());
  EXPECT_EQ(batcher.QueueDepth(), 2);
  clock.Advance(absl::Milliseconds(1));
  ASSERT_TRUE(rec.AwaitBatches(1));
  EXPECT_EQ(rec.batches(), (std::vector<std::vector<int>>{{0, 1}}));
  EXPECT_EQ(batcher.QueueDepth(), 0);
}

TEST(BatcherTest, PartialBatchRunsAtOnceWhenNothingMoreIsComing) {
  FakeClock clock;
  Recorder rec;
  absl::Status failure;
  std::atomic<int> arriving{2};  // two tasks accepted upstream, still being prepared
  Batcher<FakeTask> batcher(
      Options(4, absl::Hours(1)), [&](auto b) { rec.Run(std::move(b)); }, &clock,
      [&] { return arriving.load() > 0; });
  auto first = Task(0, &failure);
  --arriving;
  ASSERT_TRUE(batcher.Submit(&first).ok());
  absl::SleepFor(absl::Milliseconds(50));  // one more is on its way: the batch waits for it
  EXPECT_TRUE(rec.batches().empty());
  auto second = Task(1, &failure);
  --arriving;
  ASSERT_TRUE(batcher.Submit(&second).ok());
  ASSERT_TRUE(rec.AwaitBatches(1));  // none coming now: runs with two, the clock never moved
  EXPECT_EQ(rec.batches(), (std::vector<std::vector<int>>{{0, 1}}));

  // An arrival that never comes (its preprocessing failed) wakes the executor too.
  arriving = 1;
  auto third = Task(2, &failure);
  ASSERT_TRUE(batcher.Submit(&third).ok());
  absl::SleepFor(absl::Milliseconds(50));
  EXPECT_EQ(rec.batches().size(), 1u);
  arriving = 0;
  batcher.Wake();
  ASSERT_TRUE(rec.AwaitBatches(2));
  EXPECT_EQ(rec.batches()[1], std::vector<int>{2});
}

TEST(BatcherTest, ATaskThatStopsArrivingAsItIsQueuedRunsWithoutAWake) {
  // The last task on its way is queued and stops arriving in one step (Submit's on_queued,
  // under the batcher's lock): an executor must not see it queued but still coming, which
  // would leave the partial batch waiting out the delay (here an hour the clock never
  // reaches) unless someone called Wake.
  FakeClock clock;
  Recorder rec;
  absl::Status failure;
  std::atomic<int> arriving{1};
  Batcher<FakeTask> batcher(
      Options(4, absl::Hours(1)), [&](auto b) { rec.Run(std::move(b)); }, &clock,
      [&] { return arriving.load() > 0; });
  auto task = Task(0, &failure);
  ASSERT_TRUE(batcher
                  .Submit(&task,
                          [&] {
                            absl::SleepFor(absl::Milliseconds(50));  // time for an executor to look
                            --arriving;
                          })
                  .ok());
  ASSERT_TRUE(rec.AwaitBatches(1));
  EXPECT_EQ(rec.batches(), (std::vector<std::vector<int>>{{0}}));

  // Refused (queue full), the task is not queued and on_queued does not run.
  Batcher<FakeTask> full(
      Options(4, absl::Hours(1), /*capacity=*/1), [&](auto b) { rec.Run(std::move(b)); }, &clock,
      [] { return true; });
  auto first = Task(1, &failure), second = Task(2, &failure);
  ASSERT_TRUE(full.Submit(&first).ok());
  bool ran = false;
  EXPECT_EQ(full.Submit(&second, [&] { ran = true; }).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_FALSE(ran);
  EXPECT_NE(second, nullptr);
}

TEST(BatcherTest, FullQueueIsRefusedAtOnceAndTheTaskStaysWithTheCaller) {
  FakeClock clock;
  Recorder rec;
  rec.Hold();
  absl::Status failure;
  Batcher<FakeTask> batcher(Options(2, absl::Hours(1), /*capacity=*/3),
                            [&](auto b) { rec.Run(std::move(b)); }, &clock);
  for (int i = 0; i < 2; ++i) {  // one batch, now running and held
    auto t = Task(i, &failure);
    ASSERT_TRUE(batcher.Submit(&t).ok());
  }
  ASSERT_TRUE(rec.AwaitBatches(1));
  for (int i = 2; i < 5; ++i) {  // fill the queue
    auto t = Task(i, &failure);
    ASSERT_TRUE(batcher.Submit(&t).ok());
  }
  auto extra = Task(5, &failure);
  absl::Status refused = batcher.Submit(&extra);
  EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(refused.message().find("queue full"), std::string::npos);
  ASSERT_NE(extra, nullptr);
  EXPECT_EQ(extra->id, 5);
  rec.Release();
  ASSERT_TRUE(rec.AwaitBatches(2));
  batcher.Stop();  // drains the last partial batch
  EXPECT_EQ(rec.batches(), (std::vector<std::vector<int>>{{0, 1}, {2, 3}, {4}}));
}

TEST(BatcherTest, ExpiredAndCancelledTasksAreFailedNotRun) {
  FakeClock clock;
  Recorder rec;
  absl::Status expired_status, cancelled_status, ok_status;
  Batcher<FakeTask> batcher(Options(8, absl::Milliseconds(10)), [&](auto b) { rec.Run(std::move(b)); },
                            &clock);
  auto live = Task(1, &ok_status);
  auto expiring = Task(2, &expired_status);
  expiring->deadline_at = clock.Now() + absl::Milliseconds(5);
  auto cancelled = Task(3, &cancelled_status);
  cancelled->is_cancelled = true;
  ASSERT_TRUE(batcher.Submit(&live).ok());
  ASSERT_TRUE(batcher.Submit(&expiring).ok());
  ASSERT_TRUE(batcher.Submit(&cancelled).ok());
  clock.Advance(absl::Milliseconds(10));
  ASSERT_TRUE(rec.AwaitBatches(1));
  EXPECT_EQ(rec.batches(), (std::vector<std::vector<int>>{{1}}));
  EXPECT_EQ(expired_status.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_NE(expired_status.message().find("deadline passed"), std::string::npos);
  EXPECT_EQ(cancelled_status.code(), absl::StatusCode::kCancelled);
  EXPECT_TRUE(ok_status.ok());
}

TEST(BatcherTest, InstancesRunBatchesInParallel) {
  FakeClock clock;
  Recorder rec;
  rec.Hold(/*release_when_running=*/2);  // each batch waits until two run at once
  absl::Status failure;
  Batcher<FakeTask> batcher(Options(2, absl::Hours(1), 64, /*instances=*/2),
                            [&](auto b) { rec.Run(std::move(b)); }, &clock);
  for (int i = 0; i < 4; ++i) {
    auto t = Task(i, &failure);
    ASSERT_TRUE(batcher.Submit(&t).ok());
  }
  ASSERT_TRUE(rec.AwaitBatches(2));
  batcher.Stop();
  EXPECT_EQ(rec.max_running(), 2);
  EXPECT_EQ(rec.batches().size(), 2u);
}

TEST(BatcherTest, StopRunsWhatIsQueuedThenRefuses) {
  FakeClock clock;
  Recorder rec;
  absl::Status failure;
  Batcher<FakeTask> batcher(Options(8, absl::Hours(1)), [&](auto b) { rec.Run(std::move(b)); }, &clock);
  for (int i = 0; i < 3; ++i) {
    auto t = Task(i, &failure);
    ASSERT_TRUE(batcher.Submit(&t).ok());
  }
  batcher.Stop();
  EXPECT_EQ(rec.batches(), (std::vector<std::vector<int>>{{0, 1, 2}}));
  auto late = Task(9, &failure);
  EXPECT_EQ(batcher.Submit(&late).code(), absl::StatusCode::kUnavailable);
}

TEST(BatcherTest, RealClockFlushesAPartialBatch) {
  Recorder rec;
  Batcher<FakeTask> batcher(Options(16, absl::Milliseconds(1)), [&](auto b) { rec.Run(std::move(b)); });
  absl::Status failure;
  auto t = Task(7, &failure);
  ASSERT_TRUE(batcher.Submit(&t).ok());
  ASSERT_TRUE(rec.AwaitBatches(1));
  EXPECT_EQ(rec.batches(), (std::vector<std::vector<int>>{{7}}));
}

TEST(BatchOptionsTest, InvalidOptionsNameTheField) {
  EXPECT_NE(Options(0, absl::Milliseconds(1)).Validate().message().find("max_batch_size"), std::string::npos);
  EXPECT_NE(Options(1, absl::Milliseconds(1), 0).Validate().message().find("queue_capacity"), std::string::npos);
  EXPECT_NE(Options(1, absl::Milliseconds(1), 1, 0).Validate().message().find("instances"), std::string::npos);
  EXPECT_FALSE(Options(1, -absl::Milliseconds(1)).Validate().ok());
  EXPECT_TRUE(Options(16, absl::Milliseconds(2)).Validate().ok());
}

}  // namespace
}  // namespace careserve
