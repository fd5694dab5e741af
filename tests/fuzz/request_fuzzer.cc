// Fuzzes request validation: any bytes parsed as a DetectRequest and as a ClassifyRequest
// (as gRPC would), then the parameter checks and the image check. Invariants: accepted
// parameters are in range; refusals are INVALID_ARGUMENT with a message.
#include <cmath>
#include <cstdint>
#include <cstdlib>

#include "server/api/validation.h"
#include "server/common/startup_env.h"
#include "server/preprocess/image.h"

namespace {

void Check(bool ok) {
  if (!ok) std::abort();
}

void CheckRefusal(const absl::Status& status) {
  Check(status.code() == absl::StatusCode::kInvalidArgument && !status.message().empty());
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char*** argv) {
  // OpenCV reads its cap when it is loaded: the fuzzer re-executes itself with it set.
  careserve::ReexecWith(*argv, {careserve::OpenCvPixelCap(1'000'000)});
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  careserve::DecodeLimits limits;
  limits.max_pixels = 1'000'000;
  care::vision::v1::DetectRequest detect;
  if (detect.ParseFromArray(data, static_cast<int>(size))) {
    absl::StatusOr<careserve::DetectOptions> options = careserve::DetectOptionsFor(detect, careserve::DetectOptions{});
    if (options.ok()) {
      Check(options->score_threshold >= 0 && options->score_threshold <= 1);
      Check(options->iou_threshold >= 0 && options->iou_threshold <= 1);
      Check(options->max_detections >= 1 && options->max_detections <= careserve::kMaxDetectionsLimit);
    } else {
      CheckRefusal(options.status());
    }
    absl::StatusOr<cv::Mat> rgb = careserve::DecodeImage(detect.image(), limits);
    if (rgb.ok()) {
      Check(rgb->type() == CV_8UC3 && static_cast<int64_t>(rgb->cols) * rgb->rows <= limits.max_pixels);
    } else {
      CheckRefusal(rgb.status());
    }
  }
  care::vision::v1::ClassifyRequest classify;
  if (classify.ParseFromArray(data, static_cast<int>(size))) {
    for (int classes : {1, 10, 1000}) {
      absl::StatusOr<int> k = careserve::TopKFor(classify.top_k(), classes);
      if (k.ok()) {
        Check(*k >= 1 && *k <= classes);
      } else {
        CheckRefusal(k.status());
      }
    }
  }
  return 0;
}
