// Instance masks of a Mask R-CNN detection: the model's [M, M] mask probabilities on the
// box, pasted into the original image and encoded as COCO's compressed RLE (the `counts`
// string and `size` [h, w] that pycocotools' mask.encode writes).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "server/postprocess/coco_rle.h"
#include "server/postprocess/detect.h"

namespace careserve {

struct CocoRle {
  int height = 0;
  int width = 0;
  std::string counts;  // compressed: run lengths in column-major order, zeros first
};

// Pixel (x, y) of a width x height image belongs to the instance when the mask, sampled
// bilinearly (zero outside) at the pixel's centre mapped into the box, is >= threshold:
// mmdetection's paste (grid_sample, align_corners=False) at the original image's size.
// A box of no width or height has an empty mask.
CocoRle PasteMask(const float* probabilities, int mask_size, const BoxDetection& box, int width, int height,
                  float threshold = 0.5f);


}  // namespace careserve
