// TurnOffAbseilDeadlockDetection: Debian's Abseil is a debug build, whose Mutex checks every
// lock against a process-wide lock-order graph (and aborts on an inversion). care-server,
// care-bench and care-engine-bench turn that off at start; CARE_ABSL_DEADLOCK_DETECTION=1
// keeps it.
#include "server/common/startup_env.h"

#include <stdlib.h>

#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"

namespace careserve {
namespace {

// Takes a then b, then b then a: a lock-order inversion (no deadlock: one thread).
void InvertLockOrder() {
  absl::Mutex a, b;
  {
    absl::MutexLock la(&a);
    absl::MutexLock lb(&b);
  }
  absl::MutexLock lb(&b);
  absl::MutexLock la(&a);
}

TEST(AbseilDeadlockDetection, KeptOnByTheEnvironmentALockOrderInversionAborts) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        setenv("CARE_ABSL_DEADLOCK_DETECTION", "1", 1);
        absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kAbort);
        TurnOffAbseilDeadlockDetection();
        InvertLockOrder();
      },
      "deadlock");
}

TEST(AbseilDeadlockDetection, TurnedOffALockOrderInversionPasses) {
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "sanitizer builds keep Abseil's deadlock detection on";
#endif
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  // In a child process: the detection mode is process-wide.
  EXPECT_EXIT(
      {
        unsetenv("CARE_ABSL_DEADLOCK_DETECTION");
        absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kAbort);
        TurnOffAbseilDeadlockDetection();
        InvertLockOrder();
        exit(0);
      },
      testing::ExitedWithCode(0), "");
}

}  // namespace
}  // namespace careserve
