// ThreadPool::RunHereIfIdle: short work runs on the caller's thread when a worker is free,
// without letting the pool run more closures at once than it has workers.
#include "server/common/thread_pool.h"

#include <atomic>
#include <thread>

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace careserve {
namespace {

TEST(ThreadPool, IdlePoolRunsTheWorkOnTheCallersThread) {
  ThreadPool pool(2);
  std::thread::id ran_on;
  absl::AnyInvocable<void() &&> work = [&] { ran_on = std::this_thread::get_id(); };
  EXPECT_TRUE(pool.RunHereIfIdle(work));
  EXPECT_EQ(ran_on, std::this_thread::get_id());
}

TEST(ThreadPool, BusyPoolLeavesTheWorkToTheCaller) {
  ThreadPool pool(1);
  absl::Notification started, release;
  pool.Schedule([&] {
    started.Notify();
    release.WaitForNotification();
  });
  started.WaitForNotification();
  bool ran = false;
  absl::AnyInvocable<void() &&> work = [&] { ran = true; };
  EXPECT_FALSE(pool.RunHereIfIdle(work));
  EXPECT_FALSE(ran);
  // Still whole: the caller can schedule it.
  absl::Notification done;
  pool.Schedule([&, work = std::move(work)]() mutable {
    std::move(work)();
    done.Notify();
  });
  release.Notify();
  done.WaitForNotification();
  EXPECT_TRUE(ran);
}

TEST(ThreadPool, WorkScheduledWhileACallerHoldsTheOnlyPlaceWaitsForIt) {
  ThreadPool pool(1);
  std::atomic<int> running{0}, most{0};
  absl::Notification second_done;
  auto track = [&] {
    const int now = running.fetch_add(1) + 1;
    int seen = most.load();
    while (now > seen && !most.compare_exchange_weak(seen, now)) {
    }
  };
  absl::AnyInvocable<void() &&> first = [&] {
    track();
    pool.Schedule([&] {
      track();
      running.fetch_sub(1);
      second_done.Notify();
    });
    // The pool's worker is idle, but its place is taken: it must not start the second.
    EXPECT_FALSE(second_done.WaitForNotificationWithTimeout(absl::Milliseconds(100)));
    running.fetch_sub(1);
  };
  ASSERT_TRUE(pool.RunHereIfIdle(first));
  EXPECT_TRUE(second_done.WaitForNotificationWithTimeout(absl::Seconds(10)));
  EXPECT_EQ(most.load(), 1);
}

}  // namespace
}  // namespace careserve
