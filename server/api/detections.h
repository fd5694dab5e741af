// One image's Detect answer from its rows of a detection or Mask R-CNN model's outputs,
// shared by care.vision.v1 and the Open Inference Protocol.
#pragma once

#include <vector>

#include "absl/status/statusor.h"
#include "server/engine/torch_model.h"
#include "server/postprocess/detect.h"
#include "server/postprocess/instance_mask.h"
#include "server/preprocess/resize.h"
#include "server/repository/model_config.h"

namespace careserve {

struct ImageDetections {
  std::vector<BoxDetection> boxes;  // in original-image pixels, best first
  std::vector<CocoRle> masks;       // one per box from a Mask R-CNN model, else none
};

// Checks the model's classes (Mask R-CNN pads with -1), selects the detections
// (postprocess/detect.h) and, for Mask R-CNN, pastes each one's mask at the image's size
// unless `paste_masks` is false (a caller that will not answer them skips that work).
absl::StatusOr<ImageDetections> SelectImageDetections(const ModelSpec& spec, const RowOutputs& outputs,
                                                      const ResizedImage& image, const DetectOptions& options,
                                                      bool paste_masks = true);

}  // namespace careserve
