// How the shared scheduler sizes a batch: pure functions of the queue, the engine threads'
// state and the model's batch-time curve, so that they are tested alone.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/scheduler/batch_times.h"

namespace careserve {

enum class BatchPolicy {
  // A free engine thread never waits: it takes the batch size with which everything
  // queued is done soonest, given t(b) and when the other threads free up. Light load
  // gives batches of 1 (lowest latency); a backlog gives bigger, more efficient batches,
  // which drains it. No per-model delay to tune.
  kAdaptive,
  // TensorFlow Serving's and Triton's classic dynamic batching: wait up to
  // max_queue_delay for max_batch_size requests (not for requests that are not on their
  // way). Kept for comparison (make bench).
  kFixedDelay,
};

const char* BatchPolicyName(BatchPolicy policy);
absl::StatusOr<BatchPolicy> ParseBatchPolicy(const std::string& name);

// The adaptive batch size, 1..min(queued, limit): with the `queued` requests cut into
// batches of that size and each batch given to whichever engine thread frees first (this
// one now; the others at `others_free`, or now if earlier), the size whose last batch ends
// soonest; the smallest on ties.
int AdaptiveBatchSize(int queued, int limit, absl::Time now, const std::vector<absl::Time>& others_free,
                      const BatchTimes& times);

// The earliest the `position`-th queued request (1: the next to go) can finish: the ones
// ahead of it in batches of the most efficient size (at most `limit`), each batch on the
// thread that frees first (`free_at`: one entry per thread the queue may use, clamped to
// now). A request with a deadline before this cannot meet it.
absl::Time EarliestCompletion(int position, int limit, absl::Time now, const std::vector<absl::Time>& free_at,
                              const BatchTimes& times);

}  // namespace careserve
