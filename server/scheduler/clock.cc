#include "server/scheduler/clock.h"

#include <algorithm>

namespace careserve {

Clock* RealClock::Get() {
  static RealClock* clock = new RealClock();
  return clock;
}

absl::Time FakeClock::Now() {
  absl::MutexLock lock(&state_mu_);
  return now_;
}

void FakeClock::WaitUntil(absl::Mutex* mu, absl::CondVar* cv, absl::Time deadline) {
  {
    absl::MutexLock lock(&state_mu_);
    if (now_ >= deadline) return;
    waiters_.push_back({mu, cv});
  }
  cv->Wait(mu);  // woken by Advance or by the waiter's own signals
  absl::MutexLock lock(&state_mu_);
  auto it = std::find_if(waiters_.begin(), waiters_.end(),
                         [&](const Waiter& w) { return w.cv == cv && w.mu == mu; });
  if (it != waiters_.end()) waiters_.erase(it);
}

void FakeClock::Advance(absl::Duration d) {
  std::vector<Waiter> waiters;
  {
    absl::MutexLock lock(&state_mu_);
    now_ += d;
    waiters = waiters_;
  }
  for (const Waiter& w : waiters) {
    // Taking the waiter's mutex orders this wake-up after its check of Now().
    absl::MutexLock lock(w.mu);
    w.cv->SignalAll();
  }
}

}  // namespace careserve
