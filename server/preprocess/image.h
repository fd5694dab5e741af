// Turning a request's Image (encoded bytes or raw pixels) into 8-bit RGB pixels.
#pragma once

#include <cstdint>

#include "absl/status/statusor.h"
#include "care/vision/v1/vision.pb.h"
#include "opencv2/core.hpp"
#include "server/preprocess/resize.h"

namespace careserve {

struct DecodeLimits {
  // Most pixels (width x height) an image may have; larger ones are refused before their
  // pixels are decoded where the format allows.
  int64_t max_pixels = 40'000'000;
  // DecodeForInput may decode large JPEGs at 1/2, 1/4 or 1/8 of their size.
  bool reduced_jpeg_decode = true;
};

// Decodes JPEG, PNG, BMP, WebP or TIFF (EXIF orientation applied; grayscale expanded to
// three channels; alpha dropped, as PIL's convert("RGB") does; 16-bit scaled to 8-bit), or
// copies raw RGB8/BGR8/GRAY8 pixels. Returns an 8-bit, 3-channel RGB image.
// Errors are INVALID_ARGUMENT and say what was wrong with the image.
absl::StatusOr<cv::Mat> DecodeImage(const care::vision::v1::Image& image, const DecodeLimits& limits);

// An image decoded for a network input: `rgb` shows the source_width x source_height
// image, `reduction` times smaller along each axis (1: full size).
struct DecodedImage {
  cv::Mat rgb;
  int source_width = 0;
  int source_height = 0;
  int reduction = 1;
};

// The largest of 8, 4, 2 (else 1) at which a width x height JPEG, or its 90-degree rotation
// (EXIF orientation is not known before decoding), still has at least kReducedDecodeMargin
// times the pixels along each axis that the resize for `spec` keeps.
constexpr int kReducedDecodeMargin = 2;
int DecodeReduction(int width, int height, const InputSpec& spec);

// DecodeImage for a network input: a JPEG much larger than the input is decoded at a
// reduced size by libjpeg-turbo's DCT scaling (`limits.reduced_jpeg_decode`), which is
// 2-10x faster than decoding every pixel and then throwing most away. The reduced image
// still has twice the resized image's pixels along each axis; it differs from the
// full-size path by about one grey level on average (tests/cpp/preprocess/image_test.cc),
// less than that path's own difference from PIL's antialiased resize of the reference
// pipeline, which the reduced path comes closer to.
absl::StatusOr<DecodedImage> DecodeForInput(const care::vision::v1::Image& image, const DecodeLimits& limits,
                                            const InputSpec& spec);

// Width and height from a JPEG's frame header (before EXIF orientation), or false.
bool JpegFrameSize(const std::string& bytes, int* width, int* height);

}  // namespace careserve
