// Detection answers from the RetinaNet candidates of one image: score threshold,
// class-aware NMS (torchvision's batched_nms semantics), the detection cap, and the boxes
// mapped back through the letterbox to original-image pixels.
#pragma once

#include <cstdint>
#include <vector>

namespace careserve {

struct DetectOptions {
  float score_threshold = 0.05f;  // kept: score > threshold (as mmdet)
  float iou_threshold = 0.5f;     // suppressed: IoU > threshold with a better box of its class
  int max_detections = 100;
};

struct BoxDetection {
  float x_min, y_min, x_max, y_max;
  int label;
  float score;
  int index = -1;  // the candidate's row in the model's output
};

// Intersection over union of two xyxy boxes (0 when the union is empty).
float IoU(const BoxDetection& a, const BoxDetection& b);

// Class-aware NMS over `boxes`, which must be sorted by score, best first. Returns the
// indices kept, in that order.
std::vector<int> ClassAwareNms(const std::vector<BoxDetection>& boxes, float iou_threshold);

// The letterbox between the original image and the network input.
struct LetterboxGeometry {
  double scale = 1.0;     // network-input pixels per original pixel
  float valid_width = 0;  // extent of the resized image in the input (the rest is padding)
  float valid_height = 0;
  int image_width = 0;    // the original image
  int image_height = 0;
};

// `boxes` [k, 4] xyxy in network-input pixels, `scores` [k], `labels` [k]: the model's
// candidates. Boxes are clipped to the valid (unpadded) region before NMS, as mmdet
// clips to the resized image, then scaled to original pixels and clipped to the image.
// Sorted by score, best first; at most options.max_detections. Candidates of a negative
// label (a Mask R-CNN's padding rows) are skipped.
std::vector<BoxDetection> SelectDetections(const float* boxes, const float* scores, const int64_t* labels, int64_t k,
                                           const DetectOptions& options, const LetterboxGeometry& geometry);

}  // namespace careserve
