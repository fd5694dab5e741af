// Turning a request's Image (encoded bytes or raw pixels) into 8-bit RGB pixels.
#pragma once

#include <cstdint>

#include "absl/status/statusor.h"
#include "care/vision/v1/vision.pb.h"
#include "opencv2/core.hpp"

namespace careserve {

struct DecodeLimits {
  // Most pixels (width x height) an image may have; larger ones are refused before their
  // pixels are decoded where the format allows.
  int64_t max_pixels = 40'000'000;
};

// Decodes JPEG, PNG, BMP, WebP or TIFF (EXIF orientation applied; grayscale expanded to
// three channels; alpha dropped, as PIL's convert("RGB") does; 16-bit scaled to 8-bit), or
// copies raw RGB8/BGR8/GRAY8 pixels. Returns an 8-bit, 3-channel RGB image.
// Errors are INVALID_ARGUMENT and say what was wrong with the image.
absl::StatusOr<cv::Mat> DecodeImage(const care::vision::v1::Image& image, const DecodeLimits& limits);

// Applies the OpenCV-wide pixel cap that guards against decompression bombs; call once at
// startup, before any decoding.
void SetDecoderPixelCap(int64_t max_pixels);

}  // namespace careserve
