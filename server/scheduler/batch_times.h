// A model's batch-time curve t(b): how long one batch of b images takes on one engine
// thread. Its shape is measured at warm-up, one batch size at a time on an otherwise idle
// engine; at run time every batch that runs scales the whole curve, so that it follows the
// host's speed and the load of the other threads without any one size drifting from the
// rest (sizes that run often would otherwise look slower than the rare ones).
#pragma once

#include <map>

#include "absl/time/time.h"

namespace careserve {

class BatchTimes {
 public:
  // Warm-up: a batch of `batch` took `took`; sets that point of the shape.
  void Record(int batch, absl::Duration took);
  // Run time: a batch of `batch` took `took`; moves the curve's scale a tenth of the way to
  // took / shape(batch) (batch times on a shared host jitter; the curve should not). No
  // effect while nothing was recorded.
  void Observe(int batch, absl::Duration took);
  // t(batch): the shape, linear between measured sizes, proportional beyond the largest,
  // the smallest's below it, times the scale. Zero while nothing is recorded.
  absl::Duration Estimate(int batch) const;
  // The size up to `max_batch_size` with the least time per image (the most throughput):
  // 1 while nothing is measured. Only the shape decides it, so it is kept until Record.
  int MostEfficient(int max_batch_size) const;
  bool empty() const { return points_.empty(); }

 private:
  double Shape(int batch) const;  // seconds, unscaled
  std::map<int, double> points_;  // batch size -> seconds at warm-up
  double scale_ = 1.0;
  mutable int efficient_limit_ = 0;  // MostEfficient's last argument (0: none), and its answer
  mutable int efficient_ = 1;
};

}  // namespace careserve
