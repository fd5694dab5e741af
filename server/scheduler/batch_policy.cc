#include "server/scheduler/batch_policy.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace careserve {

const char* BatchPolicyName(BatchPolicy policy) {
  return policy == BatchPolicy::kAdaptive ? "adaptive" : "fixed_delay";
}

absl::StatusOr<BatchPolicy> ParseBatchPolicy(const std::string& name) {
  if (name == "adaptive") return BatchPolicy::kAdaptive;
  if (name == "fixed_delay") return BatchPolicy::kFixedDelay;
  return absl::InvalidArgumentError(absl::StrCat("batch policy must be adaptive or fixed_delay, got \"", name, "\""));
}

namespace {

// Cuts `count` requests into batches of `batch`, each to the earliest free thread of
// `free_at` (times in seconds after now, updated); returns when the last batch ends.
double Drain(int count, int batch, std::vector<double>* free_at, const BatchTimes& times) {
  double last = 0;
  while (count > 0) {
    const int b = std::min(batch, count);
    auto thread = std::min_element(free_at->begin(), free_at->end());
    *thread += absl::ToDoubleSeconds(times.Estimate(b));
    last = std::max(last, *thread);
    count -= b;
  }
  return last;
}

std::vector<double> SecondsFromNow(absl::Time now, const std::vector<absl::Time>& times) {
  std::vector<double> out;
  out.reserve(times.size());
  for (absl::Time t : times) out.push_back(std::max(0.0, absl::ToDoubleSeconds(t - now)));
  return out;
}

}  // namespace

int AdaptiveBatchSize(int queued, int limit, absl::Time now, const std::vector<absl::Time>& others_free,
                      const BatchTimes& times) {
  const int most = std::min(queued, limit);
  if (most <= 1 || times.empty()) return std::max(1, most);
  // Past a few rounds of full batches on every thread the choice no longer changes: the
  // most efficient size drains a long queue soonest. The cap bounds the work under the lock.
  const int horizon = std::min(queued, 4 * limit * static_cast<int>(others_free.size() + 1));
  std::vector<double> start = SecondsFromNow(now, others_free);
  start.push_back(0);  // this thread
  int best = 1;
  double best_end = 0;
  for (int b = 1; b <= most; ++b) {
    std::vector<double> free_at = start;
    const double end = Drain(horizon, b, &free_at, times);
    // Strictly sooner (beyond rounding) to take a bigger batch: on ties the smaller batch
    // answers its first requests sooner.
    if (b == 1 || end < best_end * (1 - 1e-6)) {
      best = b;
      best_end = end;
    }
  }
  return best;
}

absl::Time EarliestCompletion(int position, int limit, absl::Time now, const std::vector<absl::Time>& free_at,
                              const BatchTimes& times) {
  if (free_at.empty() || times.empty()) return now;
  std::vector<double> threads = SecondsFromNow(now, free_at);
  const int batch = times.MostEfficient(limit);
  // The ones ahead, then this request's own batch (at best it goes with the last of them).
  const int ahead = position - 1;
  const int full = ahead / batch;
  Drain(full * batch, batch, &threads, times);
  const double end = Drain(ahead - full * batch + 1, batch, &threads, times);
  return now + absl::Seconds(end);
}

}  // namespace careserve
