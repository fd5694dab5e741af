#include "server/scheduler/batch_times.h"

#include <iterator>

namespace careserve {

void BatchTimes::Record(int batch, absl::Duration took) {
  if (batch < 1) return;
  const double seconds = absl::ToDoubleSeconds(took);
  auto [it, inserted] = points_.emplace(batch, seconds);
  if (!inserted) it->second += 0.1 * (seconds - it->second);
}

absl::Duration BatchTimes::Estimate(int batch) const {
  if (points_.empty()) return absl::ZeroDuration();
  auto above = points_.lower_bound(batch);
  if (above != points_.end() && above->first == batch) return absl::Seconds(above->second);
  if (above == points_.begin()) return absl::Seconds(above->second);
  if (above == points_.end()) {
    const auto& [size, seconds] = *points_.rbegin();
    return absl::Seconds(seconds * batch / size);
  }
  const auto below = std::prev(above);
  const double f = static_cast<double>(batch - below->first) / (above->first - below->first);
  return absl::Seconds(below->second + f * (above->second - below->second));
}

int BatchTimes::MostEfficient(int max_batch_size) const {
  int best = 1;
  double best_per_image = 0;
  for (int b = 1; b <= max_batch_size && !points_.empty(); ++b) {
    const double per_image = absl::ToDoubleSeconds(Estimate(b)) / b;
    if (b == 1 || per_image < best_per_image) {
      best = b;
      best_per_image = per_image;
    }
  }
  return best;
}

}  // namespace careserve
