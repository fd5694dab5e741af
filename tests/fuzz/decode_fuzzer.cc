// Fuzzes what every request's image goes through before inference: DecodeForInput (format
// sniffing, header size checks, JPEG end check, reduced JPEG decode, OpenCV's decoders),
// ResizeForInput and NormalizeInto, for a center-crop and a letterbox input. Invariants:
// an accepted image is 8-bit RGB within the pixel limit; the resize fits the input; and
// the direct libjpeg-turbo decode, where it takes a file, gives cv::imdecode's pixels
// exactly (at full size and 1/2).
//
// Input: the encoded image bytes; or, after a leading 'R', a raw image: width and height
// (one byte each), a format byte, then the pixel bytes.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "opencv2/imgcodecs.hpp"
#include "opencv2/imgproc.hpp"
#include "server/common/startup_env.h"
#include "server/preprocess/image.h"
#include "server/preprocess/jpeg_decode.h"
#include "server/preprocess/resize.h"

namespace {

using careserve::DecodeLimits;
using careserve::InputSpec;

constexpr int64_t kMaxPixels = 4'000'000;

void Check(bool ok) {
  if (!ok) std::abort();
}

// Where DecodeJpegRgb takes the file, OpenCV must decode it to the same pixels.
void CheckJpegDecodeMatchesOpenCv(const uint8_t* data, size_t size) {
  if (size < 2 || data[0] != 0xFF || data[1] != 0xD8) return;  // DecodeJpegRgb must refuse FF D8 00 itself
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  for (const auto& [reduction, flag] : {std::pair<int, int>{1, cv::IMREAD_COLOR}, {2, cv::IMREAD_REDUCED_COLOR_2}}) {
    cv::Mat direct;
    if (careserve::DecodeJpegRgb(bytes, reduction, kMaxPixels, &direct).outcome !=
        careserve::JpegDecodeOutcome::kDecoded) {
      continue;
    }
    cv::Mat bgr;
    try {
      bgr = cv::imdecode(cv::Mat(1, static_cast<int>(size), CV_8UC1, const_cast<uint8_t*>(data)), flag);
    } catch (const cv::Exception&) {
    }
    Check(!bgr.empty());
    cv::Mat rgb;
    cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
    Check(rgb.size() == direct.size() && rgb.type() == direct.type() && cv::norm(rgb, direct, cv::NORM_INF) == 0);
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char*** argv) {
  // OpenCV reads its cap when it is loaded: the fuzzer re-executes itself with it set.
  careserve::ReexecWith(*argv, {careserve::OpenCvPixelCap(kMaxPixels)});
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  CheckJpegDecodeMatchesOpenCv(data, size);
  care::vision::v1::Image image;
  if (size >= 4 && data[0] == 'R') {
    auto* raw = image.mutable_raw();
    raw->set_width(data[1] - 8);  // a few negative and zero sizes too
    raw->set_height(data[2] - 8);
    raw->set_format(static_cast<care::vision::v1::PixelFormat>(data[3] % 5));
    raw->set_data(reinterpret_cast<const char*>(data + 4), size - 4);
  } else {
    image.set_encoded(reinterpret_cast<const char*>(data), size);
  }
  DecodeLimits limits;
  limits.max_pixels = kMaxPixels;
  InputSpec specs[2];
  specs[0].height = specs[0].width = 64;
  specs[1].height = 64, specs[1].width = 96;
  specs[1].resize = careserve::ResizeMode::kLetterbox;
  specs[1].interpolation = cv::INTER_LINEAR;
  for (const InputSpec& spec : specs) {
    absl::StatusOr<careserve::DecodedImage> decoded = careserve::DecodeForInput(image, limits, spec);
    if (!decoded.ok()) {
      Check(decoded.status().code() == absl::StatusCode::kInvalidArgument && !decoded.status().message().empty());
      return 0;
    }
    Check(decoded->rgb.type() == CV_8UC3 && !decoded->rgb.empty());
    Check(static_cast<int64_t>(decoded->source_width) * decoded->source_height <= kMaxPixels);
    careserve::ResizedImage resized =
        careserve::ResizeForInput(decoded->rgb, spec, decoded->source_width, decoded->source_height);
    Check(resized.pixels.rows <= spec.height && resized.pixels.cols <= spec.width);
    std::vector<float> input(3 * spec.height * spec.width);
    careserve::NormalizeInto(resized, spec, input.data());
  }
  return 0;
}
