// The two resizes of the service contract, and normalisation into the network input.
//
// center_crop (classification, as timm/torchvision evaluate ImageNet): the image is scaled,
//   keeping its aspect ratio, so that it covers floor(H / crop_pct) x floor(W / crop_pct)
//   (for a square input: shorter side to floor(H / crop_pct), longer side truncated as
//   torchvision does), then the centre H x W is cut out (offsets rounded half to even,
//   as Python's round()).
// letterbox (detection, segmentation): scale = min(H / h, W / w), the image resized to
//   round(w * scale) x round(h * scale) at the top-left; the rest is zero after
//   normalisation.
#pragma once

#include <array>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "opencv2/core.hpp"
#include "opencv2/imgproc.hpp"

namespace careserve {

enum class ResizeMode { kCenterCrop, kLetterbox };

struct InputSpec {
  int height = 224;
  int width = 224;
  ResizeMode resize = ResizeMode::kCenterCrop;
  double crop_pct = 0.875;
  int interpolation = cv::INTER_CUBIC;  // an OpenCV InterpolationFlags value
  std::array<float, 3> mean = {0.485f, 0.456f, 0.406f};
  std::array<float, 3> std = {0.229f, 0.224f, 0.225f};

  // Checks ranges; the message names the bad field.
  absl::Status Validate() const;
};

absl::StatusOr<ResizeMode> ParseResizeMode(const std::string& name);
// bicubic | bilinear | nearest | area -> OpenCV flag.
absl::StatusOr<int> ParseInterpolation(const std::string& name);

// An image resized for the network, with what it takes to map results back.
struct ResizedImage {
  // 8-bit RGB. center_crop: exactly height x width. letterbox: the resized image, at most
  // height x width, to sit at the top-left of the input.
  cv::Mat pixels;
  int source_width = 0;
  int source_height = 0;
  // Extent of `pixels` (kept when the pixels are released).
  int width = 0;
  int height = 0;
  // Network-input pixels per source pixel (letterbox: one scale for both axes).
  double scale_x = 1.0;
  double scale_y = 1.0;
};

// `rgb`: 8-bit, 3 channels, non-empty. With `source_width` and `source_height`, `rgb` is
// that image decoded at a reduced size (DecodeForInput): sizes, crop and the mapping back
// are those of the source image, and `rgb` is resized straight to the network's size.
ResizedImage ResizeForInput(const cv::Mat& rgb, const InputSpec& spec, int source_width = 0,
                            int source_height = 0);

// The size a width x height image is resized to (center_crop: before the cut).
cv::Size ResizedSize(int width, int height, const InputSpec& spec);

// Writes the planar float input of one image, (pixel / 255 - mean) / std per channel, to
// `chw` (3 x spec.height x spec.width floats), zeros where the letterbox pads.
void NormalizeInto(const ResizedImage& image, const InputSpec& spec, float* chw);

}  // namespace careserve
