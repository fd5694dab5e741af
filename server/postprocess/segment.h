// Segmentation answers: the class of every original-image pixel from the network's
// stride-4 logits, without materialising the C x H x W resized logits (150 classes on a
// 12-megapixel photo would be 7 GB).
//
// Definition: the logits are bilinearly resized (align_corners = false, border
// replicated) from the letterboxed input's logit map to the original image, and each
// pixel takes the argmax (lowest class on ties). Original pixel x maps to logit column
//   u = (x + 0.5) * scale / stride - 0.5
// which is exactly "crop the letterbox's valid region, resize to the original size".
// Computed exactly but cheaply: for each 2x2 cell of logits, only the classes whose
// largest corner value reaches the best smallest corner value can win anywhere inside
// the cell (an interpolated value lies between its corners), so each pixel evaluates
// those few classes only.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "opencv2/core.hpp"

namespace careserve {

struct ClassMap {
  // Class per original pixel: CV_8UC1 when num_classes <= 255, else CV_16UC1 (the PNG
  // depth of the contract).
  cv::Mat mask;
  // Pixels per class.
  std::vector<int64_t> pixels;
};

// `logits`: num_classes x height x width (one image, stride `stride` in the network
// input). `scale`: network-input pixels per original pixel. The class map is
// out_height x out_width.
ClassMap ArgmaxResize(const float* logits, int num_classes, int height, int width, double scale, double stride,
                      int out_width, int out_height);

struct ClassPixels {
  int class_index;
  int64_t pixels;
};

// The classes present, most pixels first (ties: lower class first).
std::vector<ClassPixels> ClassesPresent(const std::vector<int64_t>& pixels);

// The mask as a grayscale PNG, pixel = class index, of the mask's depth (8 or 16 bits).
absl::StatusOr<std::string> EncodeMaskPng(const cv::Mat& mask);

}  // namespace careserve
