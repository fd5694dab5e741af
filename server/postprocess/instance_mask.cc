#include "server/postprocess/instance_mask.h"

#include <algorithm>
#include <cmath>

namespace careserve {

namespace {

// Run lengths of a binary sequence, zeros first (a leading run of ones starts with 0).
class Runs {
 public:
  void Add(bool bit, uint32_t count) {
    if (count == 0) return;
    if (bit != current_) {
      runs_.push_back(length_);
      current_ = bit;
      length_ = 0;
    }
    length_ += count;
  }
  std::vector<uint32_t> Finish() {
    runs_.push_back(length_);
    return std::move(runs_);
  }

 private:
  std::vector<uint32_t> runs_;
  bool current_ = false;
  uint32_t length_ = 0;
};

}  // namespace

CocoRle PasteMask(const float* probabilities, int mask_size, const BoxDetection& box, int width, int height,
                  float threshold) {
  CocoRle rle;
  rle.width = width;
  rle.height = height;
  Runs runs;
  const float x0 = box.x_min, y0 = box.y_min, x1 = box.x_max, y1 = box.y_max;
  const bool empty = !(x1 > x0) || !(y1 > y0);
  // Outside the box (and one pixel around it) the sampled value stays below half of the
  // mask's edge, so below any threshold >= 0.5: only this window is evaluated.
  const int xa = empty ? 0 : std::max(static_cast<int>(std::floor(x0)) - 1, 0);
  const int xb = empty ? 0 : std::min(static_cast<int>(std::ceil(x1)) + 1, width);
  const int ya = empty ? 0 : std::max(static_cast<int>(std::floor(y0)) - 1, 0);
  const int yb = empty ? 0 : std::min(static_cast<int>(std::ceil(y1)) + 1, height);
  const int m = mask_size;
  // Mask coordinate of pixel centres, in float as grid_sample computes it.
  auto coordinate = [m](int pixel, float lo, float hi) {
    const float g = (static_cast<float>(pixel) + 0.5f - lo) / (hi - lo) * 2.0f - 1.0f;
    return ((g + 1.0f) * static_cast<float>(m) - 1.0f) / 2.0f;
  };
  std::vector<float> row_weight(std::max(yb - ya, 0) * 2);
  std::vector<int> row_index(std::max(yb - ya, 0));
  for (int y = ya; y < yb; ++y) {
    const float v = coordinate(y, y0, y1);
    const float fy = std::floor(v);
    row_index[y - ya] = static_cast<int>(fy);
    row_weight[2 * (y - ya) + 1] = v - fy;
    row_weight[2 * (y - ya)] = 1.0f - (v - fy);
  }
  auto at = [&](int r, int c) -> float {
    return r >= 0 && r < m && c >= 0 && c < m ? probabilities[static_cast<int64_t>(r) * m + c] : 0.0f;
  };
  for (int x = 0; x < width; ++x) {
    if (x < xa || x >= xb || ya >= yb) {
      runs.Add(false, height);
      continue;
    }
    const float u = coordinate(x, x0, x1);
    const float fx = std::floor(u);
    const int c0 = static_cast<int>(fx);
    const float wx1 = u - fx, wx0 = 1.0f - wx1;
    runs.Add(false, ya);
    for (int y = ya; y < yb; ++y) {
      const int r0 = row_index[y - ya];
      const float wy0 = row_weight[2 * (y - ya)], wy1 = row_weight[2 * (y - ya) + 1];
      const float value = wy0 * (wx0 * at(r0, c0) + wx1 * at(r0, c0 + 1)) +
                          wy1 * (wx0 * at(r0 + 1, c0) + wx1 * at(r0 + 1, c0 + 1));
      runs.Add(value >= threshold, 1);
    }
    runs.Add(false, height - yb);
  }
  rle.counts = EncodeRleCounts(runs.Finish());
  return rle;
}

}  // namespace careserve
