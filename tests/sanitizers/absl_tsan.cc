// ThreadSanitizer builds only (CARE_SANITIZE=thread). Debian's libabsl is built without
// ThreadSanitizer, so absl::Mutex, CondVar and Notification synchronise through futexes and
// atomics TSan never sees, and every access they guard would be reported as a race. The
// linker (-Wl,--wrap, CMakeLists.txt) routes the project's calls into them through these
// wrappers, which tell TSan the happens-before edges each call creates: unlocking releases
// the mutex, locking acquires it; Notify releases the notification, a wait that saw it
// acquires it.
//
// Conditional waits (Await, LockWhen and their timed forms) are re-implemented here on
// plain Lock/Unlock: absl evaluates a waiter's Condition inside the library, sometimes on
// the unlocking thread, where no annotation can reach. Here the waiting thread evaluates it
// itself after a visible acquire, and polls (100 us) while it is false: the same semantics
// (return with the mutex held once the condition holds, or false at the deadline).
#include <sanitizer/tsan_interface.h>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

using absl::CondVar;
using absl::Condition;
using absl::Duration;
using absl::Mutex;
using absl::Notification;
using absl::Time;

#define CARE_REAL(ret, sym, params) extern "C" ret __real_##sym params;
#define CARE_WRAP(ret, sym, params) extern "C" ret __wrap_##sym params

CARE_REAL(void, _ZN4absl7debian35Mutex4LockEv, (Mutex*))
CARE_REAL(void, _ZN4absl7debian35Mutex6UnlockEv, (Mutex*))
CARE_REAL(void, _ZN4absl7debian35Mutex10ReaderLockEv, (Mutex*))
CARE_REAL(void, _ZN4absl7debian35Mutex12ReaderUnlockEv, (Mutex*))
CARE_REAL(bool, _ZN4absl7debian35Mutex7TryLockEv, (Mutex*))
CARE_REAL(void, _ZN4absl7debian37CondVar4WaitEPNS0_5MutexE, (CondVar*, Mutex*))
CARE_REAL(bool, _ZN4absl7debian37CondVar15WaitWithTimeoutEPNS0_5MutexENS0_8DurationE, (CondVar*, Mutex*, Duration))
CARE_REAL(bool, _ZN4absl7debian37CondVar16WaitWithDeadlineEPNS0_5MutexENS0_4TimeE, (CondVar*, Mutex*, Time))
CARE_REAL(void, _ZN4absl7debian312Notification6NotifyEv, (Notification*))
CARE_REAL(void, _ZNK4absl7debian312Notification19WaitForNotificationEv, (const Notification*))
CARE_REAL(bool, _ZNK4absl7debian312Notification30WaitForNotificationWithTimeoutENS0_8DurationE,
          (const Notification*, Duration))

namespace {

void Lock(Mutex* mu) {
  __real__ZN4absl7debian35Mutex4LockEv(mu);
  __tsan_acquire(mu);
}

void Unlock(Mutex* mu) {
  __tsan_release(mu);
  __real__ZN4absl7debian35Mutex6UnlockEv(mu);
}

// Called with `mu` held; returns with it held.
bool AwaitUntil(Mutex* mu, const Condition& condition, Time deadline) {
  while (!condition.Eval()) {
    if (absl::Now() >= deadline) return false;
    Unlock(mu);
    absl::SleepFor(absl::Microseconds(100));
    Lock(mu);
  }
  return true;
}

// Runs `wait`, which unlocks `mu` and locks it again before returning (a CondVar wait):
// releases before, acquires after.
template <typename Wait>
auto WhileUnlocked(Mutex* mu, Wait wait) {
  __tsan_release(mu);
  struct Reacquire {
    Mutex* mu;
    ~Reacquire() { __tsan_acquire(mu); }
  } reacquire{mu};
  return wait();
}

}  // namespace

CARE_WRAP(void, _ZN4absl7debian35Mutex4LockEv, (Mutex * mu)) { Lock(mu); }
CARE_WRAP(void, _ZN4absl7debian35Mutex6UnlockEv, (Mutex * mu)) { Unlock(mu); }
CARE_WRAP(void, _ZN4absl7debian35Mutex10ReaderLockEv, (Mutex * mu)) {
  __real__ZN4absl7debian35Mutex10ReaderLockEv(mu);
  __tsan_acquire(mu);
}
CARE_WRAP(void, _ZN4absl7debian35Mutex12ReaderUnlockEv, (Mutex * mu)) {
  __tsan_release(mu);
  __real__ZN4absl7debian35Mutex12ReaderUnlockEv(mu);
}
CARE_WRAP(bool, _ZN4absl7debian35Mutex7TryLockEv, (Mutex * mu)) {
  const bool locked = __real__ZN4absl7debian35Mutex7TryLockEv(mu);
  if (locked) __tsan_acquire(mu);
  return locked;
}

CARE_WRAP(void, _ZN4absl7debian35Mutex5AwaitERKNS0_9ConditionE, (Mutex * mu, const Condition& c)) {
  AwaitUntil(mu, c, absl::InfiniteFuture());
}
CARE_WRAP(bool, _ZN4absl7debian35Mutex16AwaitWithTimeoutERKNS0_9ConditionENS0_8DurationE,
          (Mutex * mu, const Condition& c, Duration timeout)) {
  return AwaitUntil(mu, c, absl::Now() + timeout);
}
CARE_WRAP(bool, _ZN4absl7debian35Mutex17AwaitWithDeadlineERKNS0_9ConditionENS0_4TimeE,
          (Mutex * mu, const Condition& c, Time deadline)) {
  return AwaitUntil(mu, c, deadline);
}
CARE_WRAP(void, _ZN4absl7debian35Mutex8LockWhenERKNS0_9ConditionE, (Mutex * mu, const Condition& c)) {
  Lock(mu);
  AwaitUntil(mu, c, absl::InfiniteFuture());
}
CARE_WRAP(bool, _ZN4absl7debian35Mutex19LockWhenWithTimeoutERKNS0_9ConditionENS0_8DurationE,
          (Mutex * mu, const Condition& c, Duration timeout)) {
  Lock(mu);
  return AwaitUntil(mu, c, absl::Now() + timeout);
}
CARE_WRAP(bool, _ZN4absl7debian35Mutex20LockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE,
          (Mutex * mu, const Condition& c, Time deadline)) {
  Lock(mu);
  return AwaitUntil(mu, c, deadline);
}

// CondVar waits unlock the mutex and lock it again before returning.
CARE_WRAP(void, _ZN4absl7debian37CondVar4WaitEPNS0_5MutexE, (CondVar * cv, Mutex* mu)) {
  WhileUnlocked(mu, [&] { __real__ZN4absl7debian37CondVar4WaitEPNS0_5MutexE(cv, mu); });
}
CARE_WRAP(bool, _ZN4absl7debian37CondVar15WaitWithTimeoutEPNS0_5MutexENS0_8DurationE,
          (CondVar * cv, Mutex* mu, Duration timeout)) {
  return WhileUnlocked(
      mu, [&] { return __real__ZN4absl7debian37CondVar15WaitWithTimeoutEPNS0_5MutexENS0_8DurationE(cv, mu, timeout); });
}
CARE_WRAP(bool, _ZN4absl7debian37CondVar16WaitWithDeadlineEPNS0_5MutexENS0_4TimeE,
          (CondVar * cv, Mutex* mu, Time deadline)) {
  return WhileUnlocked(
      mu, [&] { return __real__ZN4absl7debian37CondVar16WaitWithDeadlineEPNS0_5MutexENS0_4TimeE(cv, mu, deadline); });
}

CARE_WRAP(void, _ZN4absl7debian312Notification6NotifyEv, (Notification * n)) {
  __tsan_release(n);
  __real__ZN4absl7debian312Notification6NotifyEv(n);
}
CARE_WRAP(void, _ZNK4absl7debian312Notification19WaitForNotificationEv, (const Notification* n)) {
  __real__ZNK4absl7debian312Notification19WaitForNotificationEv(n);
  __tsan_acquire(const_cast<Notification*>(n));
}
CARE_WRAP(bool, _ZNK4absl7debian312Notification30WaitForNotificationWithTimeoutENS0_8DurationE,
          (const Notification* n, Duration timeout)) {
  const bool notified = __real__ZNK4absl7debian312Notification30WaitForNotificationWithTimeoutENS0_8DurationE(n, timeout);
  if (notified) __tsan_acquire(const_cast<Notification*>(n));
  return notified;
}
