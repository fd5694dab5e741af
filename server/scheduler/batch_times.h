// A model's batch-time curve t(b): how long one batch of b images takes on one engine
// thread. Measured at warm-up, then kept current from the batches that run, so that it
// follows the host's speed. The adaptive batch policy sizes batches from it.
#pragma once

#include <map>

#include "absl/time/time.h"

namespace careserve {

class BatchTimes {
 public:
  // A batch of `batch` took `took`: the first time sets t(batch), later ones move it a
  // tenth of the way (batch times on a shared host jitter; the curve should not).
  void Record(int batch, absl::Duration took);
  // t(batch): linear between measured sizes, proportional beyond the largest, the
  // smallest's below it. Zero while nothing is measured.
  absl::Duration Estimate(int batch) const;
  // The size up to `max_batch_size` with the least time per image (the most throughput):
  // 1 while nothing is measured.
  int MostEfficient(int max_batch_size) const;
  bool empty() const { return points_.empty(); }

 private:
  std::map<int, double> points_;  // batch size -> seconds
};

}  // namespace careserve
