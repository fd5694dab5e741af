// Time source of the scheduler, replaceable in tests.
#pragma once

#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace careserve {

class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() = 0;
  // With `mu` held: waits on `cv` until signalled or until `deadline` by this clock.
  // May return early; callers re-check their condition.
  virtual void WaitUntil(absl::Mutex* mu, absl::CondVar* cv, absl::Time deadline) = 0;
};

class RealClock final : public Clock {
 public:
  static Clock* Get();
  absl::Time Now() override { return absl::Now(); }
  void WaitUntil(absl::Mutex* mu, absl::CondVar* cv, absl::Time deadline) override {
    cv->WaitWithDeadline(mu, deadline);
  }
};

// A clock that moves only when told to. Waiters registered through WaitUntil are woken
// by Advance, under their own mutex, so no wake-up is lost.
class FakeClock final : public Clock {
 public:
  explicit FakeClock(absl::Time start = absl::UnixEpoch()) : now_(start) {}
  absl::Time Now() override;
  void WaitUntil(absl::Mutex* mu, absl::CondVar* cv, absl::Time deadline) override;
  void Advance(absl::Duration d);

 private:
  struct Waiter {
    absl::Mutex* mu;
    absl::CondVar* cv;
  };
  absl::Mutex state_mu_;
  absl::Time now_ ABSL_GUARDED_BY(state_mu_);
  std::vector<Waiter> waiters_ ABSL_GUARDED_BY(state_mu_);
};

}  // namespace careserve
