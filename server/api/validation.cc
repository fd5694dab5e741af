#include "server/api/validation.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace careserve {

absl::StatusOr<int> TopKFor(int top_k, int num_classes) {
  if (top_k < 0 || top_k > num_classes) {
    return absl::InvalidArgumentError(absl::StrCat("top_k must be between 0 and ", num_classes,
                                                   " (the model's classes; 0 means 5), got ", top_k));
  }
  return top_k == 0 ? std::min(5, num_classes) : top_k;
}

absl::StatusOr<DetectOptions> DetectOptionsFor(const care::vision::v1::DetectRequest& request,
                                               const DetectOptions& defaults) {
  DetectOptions options = defaults;
  const float score = request.score_threshold(), iou = request.iou_threshold();
  if (!(score >= 0.0f && score <= 1.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("score_threshold must be in [0, 1] (0: the model's ", defaults.score_threshold, "), got ", score));
  }
  if (!(iou >= 0.0f && iou <= 1.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("iou_threshold must be in [0, 1] (0: the model's ", defaults.iou_threshold, "), got ", iou));
  }
  if (request.max_detections() < 0 || request.max_detections() > kMaxDetectionsLimit) {
    return absl::InvalidArgumentError(absl::StrCat("max_detections must be in [0, ", kMaxDetectionsLimit,
                                                   "] (0: the model's ", defaults.max_detections, "), got ",
                                                   request.max_detections()));
  }
  if (score > 0.0f) options.score_threshold = score;
  if (iou > 0.0f) options.iou_threshold = iou;
  if (request.max_detections() > 0) options.max_detections = request.max_detections();
  return options;
}

}  // namespace careserve
