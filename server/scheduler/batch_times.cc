#include "server/scheduler/batch_times.h"

#include <iterator>

namespace careserve {

void BatchTimes::Record(int batch, absl::Duration took) {
  if (batch < 1) return;
  points_[batch] = absl::ToDoubleSeconds(took) / scale_;
  efficient_limit_ = 0;
}

void BatchTimes::Observe(int batch, absl::Duration took) {
  const double shape = Shape(batch);
  if (batch < 1 || shape <= 0) return;
  scale_ += 0.1 * (absl::ToDoubleSeconds(took) / shape - scale_);
}

double BatchTimes::Shape(int batch) const {
  if (points_.empty()) return 0;
  auto above = points_.lower_bound(batch);
  if (above != points_.end() && above->first == batch) return above->second;
  if (above == points_.begin()) return above->second;
  if (above == points_.end()) {
    const auto& [size, seconds] = *points_.rbegin();
    return seconds * batch / size;
  }
  const auto below = std::prev(above);
  const double f = static_cast<double>(batch - below->first) / (above->first - below->first);
  return below->second + f * (above->second - below->second);
}

absl::Duration BatchTimes::Estimate(int batch) const { return absl::Seconds(Shape(batch) * scale_); }

int BatchTimes::MostEfficient(int max_batch_size) const {
  if (max_batch_size == efficient_limit_) return efficient_;
  int best = 1;
  double best_per_image = 0;
  for (int b = 1; b <= max_batch_size && !points_.empty(); ++b) {
    const double per_image = Shape(b) / b;
    if (b == 1 || per_image < best_per_image * (1 - 1e-9)) {  // strictly: the smaller on ties
      best = b;
      best_per_image = per_image;
    }
  }
  efficient_limit_ = max_batch_size;
  efficient_ = best;
  return best;
}

}  // namespace careserve
