#include "server/postprocess/segment.h"

#include <algorithm>
#include <cmath>

#include "absl/status/status.h"
#include "opencv2/imgcodecs.hpp"

namespace careserve {
namespace {

// Source index pair and weight of each output coordinate along one axis.
struct Tap {
  int i0, i1;
  float w;  // weight of i1
};

std::vector<Tap> Taps(int out_size, int in_size, double scale, double stride) {
  std::vector<Tap> taps(out_size);
  const double step = scale / stride;
  for (int x = 0; x < out_size; ++x) {
    double u = (x + 0.5) * step - 0.5;
    u = std::clamp(u, 0.0, static_cast<double>(in_size - 1));
    const int i0 = std::min(static_cast<int>(std::floor(u)), in_size - 1);
    const int i1 = std::min(i0 + 1, in_size - 1);
    taps[x] = {i0, i1, static_cast<float>(u - i0)};
  }
  return taps;
}

}  // namespace

cv::Mat ArgmaxResize(const float* logits, int num_classes, int height, int width, double scale, double stride,
                     int out_width, int out_height) {
  const std::vector<Tap> xs = Taps(out_width, width, scale, stride);
  const std::vector<Tap> ys = Taps(out_height, height, scale, stride);
  const size_t plane = static_cast<size_t>(height) * width;
  // Candidate classes per cell (y0, x0), computed on first use.
  std::vector<std::vector<uint16_t>> candidates(plane);
  std::vector<bool> known(plane, false);
  std::vector<float> lo(num_classes), hi(num_classes);
  auto cell_candidates = [&](int y0, int y1, int x0, int x1) -> const std::vector<uint16_t>& {
    const size_t cell = static_cast<size_t>(y0) * width + x0;
    if (!known[cell]) {
      float best_lo = -INFINITY;
      for (int c = 0; c < num_classes; ++c) {
        const float* p = logits + c * plane;
        const float a = p[y0 * width + x0], b = p[y0 * width + x1], d = p[y1 * width + x0], e = p[y1 * width + x1];
        lo[c] = std::min(std::min(a, b), std::min(d, e));
        hi[c] = std::max(std::max(a, b), std::max(d, e));
        best_lo = std::max(best_lo, lo[c]);
      }
      for (int c = 0; c < num_classes; ++c) {
        if (hi[c] >= best_lo) candidates[cell].push_back(static_cast<uint16_t>(c));
      }
      known[cell] = true;
    }
    return candidates[cell];
  };

  cv::Mat mask(out_height, out_width, CV_16UC1);
  for (int y = 0; y < out_height; ++y) {
    const Tap ty = ys[y];
    uint16_t* row = mask.ptr<uint16_t>(y);
    for (int x = 0; x < out_width; ++x) {
      const Tap tx = xs[x];
      const std::vector<uint16_t>& cands = cell_candidates(ty.i0, ty.i1, tx.i0, tx.i1);
      if (cands.size() == 1) {
        row[x] = cands[0];
        continue;
      }
      float best = -INFINITY;
      uint16_t best_class = cands[0];
      for (uint16_t c : cands) {
        const float* p = logits + c * plane;
        const float top = p[ty.i0 * width + tx.i0] * (1 - tx.w) + p[ty.i0 * width + tx.i1] * tx.w;
        const float bottom = p[ty.i1 * width + tx.i0] * (1 - tx.w) + p[ty.i1 * width + tx.i1] * tx.w;
        const float v = top * (1 - ty.w) + bottom * ty.w;
        if (v > best) {
          best = v;
          best_class = c;
        }
      }
      row[x] = best_class;
    }
  }
  return mask;
}

std::vector<ClassPixels> CountClasses(const cv::Mat& mask, int num_classes) {
  std::vector<int64_t> counts(num_classes, 0);
  for (int y = 0; y < mask.rows; ++y) {
    const uint16_t* row = mask.ptr<uint16_t>(y);
    for (int x = 0; x < mask.cols; ++x) ++counts[row[x]];
  }
  std::vector<ClassPixels> present;
  for (int c = 0; c < num_classes; ++c) {
    if (counts[c] > 0) present.push_back({c, counts[c]});
  }
  std::stable_sort(present.begin(), present.end(),
                   [](const ClassPixels& a, const ClassPixels& b) { return a.pixels > b.pixels; });
  return present;
}

absl::StatusOr<std::string> EncodeMaskPng(const cv::Mat& mask, int num_classes) {
  cv::Mat out = mask;
  if (num_classes <= 255) mask.convertTo(out, CV_8UC1);
  std::vector<uchar> bytes;
  // Level 1: masks compress well anyway; encoding time matters more on large photos.
  if (!cv::imencode(".png", out, bytes, {cv::IMWRITE_PNG_COMPRESSION, 1})) {
    return absl::InternalError("cannot encode the mask as PNG");
  }
  return std::string(bytes.begin(), bytes.end());
}

}  // namespace careserve
