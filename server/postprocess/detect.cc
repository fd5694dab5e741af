#include "server/postprocess/detect.h"

#include <algorithm>
#include <map>
#include <numeric>

namespace careserve {

float IoU(const BoxDetection& a, const BoxDetection& b) {
  const float iw = std::min(a.x_max, b.x_max) - std::max(a.x_min, b.x_min);
  const float ih = std::min(a.y_max, b.y_max) - std::max(a.y_min, b.y_min);
  if (iw <= 0 || ih <= 0) return 0.0f;
  const float inter = iw * ih;
  const float uni = (a.x_max - a.x_min) * (a.y_max - a.y_min) + (b.x_max - b.x_min) * (b.y_max - b.y_min) - inter;
  return uni > 0 ? inter / uni : 0.0f;
}

std::vector<int> ClassAwareNms(const std::vector<BoxDetection>& boxes, float iou_threshold) {
  // NMS within each class; boxes of different classes never suppress each other.
  std::map<int, std::vector<int>> by_class;
  for (int i = 0; i < static_cast<int>(boxes.size()); ++i) by_class[boxes[i].label].push_back(i);
  std::vector<int> kept;
  for (auto& [label, members] : by_class) {
    std::vector<int> survivors;
    for (int i : members) {
      bool suppressed = false;
      for (int s : survivors) {
        if (IoU(boxes[s], boxes[i]) > iou_threshold) {
          suppressed = true;
          break;
        }
      }
      if (!suppressed) survivors.push_back(i);
    }
    kept.insert(kept.end(), survivors.begin(), survivors.end());
  }
  std::sort(kept.begin(), kept.end());  // input order = score order
  return kept;
}

std::vector<BoxDetection> SelectDetections(const float* boxes, const float* scores, const int64_t* labels, int64_t k,
                                           const DetectOptions& options, const LetterboxGeometry& geometry) {
  std::vector<BoxDetection> candidates;
  for (int64_t i = 0; i < k; ++i) {
    if (!(scores[i] > options.score_threshold) || labels[i] < 0) continue;
    const float* b = boxes + 4 * i;
    candidates.push_back({std::clamp(b[0], 0.0f, geometry.valid_width), std::clamp(b[1], 0.0f, geometry.valid_height),
                          std::clamp(b[2], 0.0f, geometry.valid_width), std::clamp(b[3], 0.0f, geometry.valid_height),
                          static_cast<int>(labels[i]), scores[i], static_cast<int>(i)});
  }
  // Best first; equal scores keep the model's order.
  std::stable_sort(candidates.begin(), candidates.end(),
                   [](const BoxDetection& a, const BoxDetection& b) { return a.score > b.score; });
  std::vector<int> kept = ClassAwareNms(candidates, options.iou_threshold);
  if (static_cast<int>(kept.size()) > options.max_detections) kept.resize(options.max_detections);
  std::vector<BoxDetection> out;
  out.reserve(kept.size());
  const float w = static_cast<float>(geometry.image_width), h = static_cast<float>(geometry.image_height);
  const double inv = 1.0 / geometry.scale;
  for (int i : kept) {
    BoxDetection d = candidates[i];
    d.x_min = std::clamp(static_cast<float>(d.x_min * inv), 0.0f, w);
    d.y_min = std::clamp(static_cast<float>(d.y_min * inv), 0.0f, h);
    d.x_max = std::clamp(static_cast<float>(d.x_max * inv), 0.0f, w);
    d.y_max = std::clamp(static_cast<float>(d.y_max * inv), 0.0f, h);
    out.push_back(d);
  }
  return out;
}

}  // namespace careserve
