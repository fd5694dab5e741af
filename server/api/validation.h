// Checks of a request's parameters, apart from its image (server/preprocess/image.h):
// pure functions, so that they are unit-tested and fuzzed (tests/fuzz/) without a server.
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "care/vision/v1/vision.pb.h"
#include "server/postprocess/detect.h"

namespace careserve {

// Most detections one request may ask for.
constexpr int kMaxDetectionsLimit = 10000;

// top_k in [0, num_classes] (0: 5, or all classes when fewer); the number to answer.
absl::StatusOr<int> TopKFor(int top_k, int num_classes);

// A request's detection parameters over the model's defaults (0 keeps a default), or
// INVALID_ARGUMENT naming the bad one: thresholds outside [0, 1] or NaN, max_detections
// outside [0, kMaxDetectionsLimit].
absl::StatusOr<DetectOptions> DetectOptionsFor(const care::vision::v1::DetectRequest& request,
                                               const DetectOptions& defaults);

}  // namespace careserve
