// care-preprocess-bench: the stages a request's image goes through before inference, one
// at a time, on one thread (Google Benchmark): decode (JPEG straight to RGB, at reduced
// size where the input allows), resize for the network input, normalise into the batch
// buffer. JPEGs are made from Debian's skimage photos (quality 90) at the sizes
// care-bench sends.
//
//   build/care-preprocess-bench --photo=build/samples/astronaut.jpg
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "benchmark/benchmark.h"
#include "opencv2/imgcodecs.hpp"
#include "opencv2/imgproc.hpp"
#include "server/preprocess/image.h"
#include "server/preprocess/resize.h"

ABSL_FLAG(std::string, photo, "", "A photo (any format OpenCV reads) to make the test JPEGs from.");

namespace {

cv::Mat& Photo() {
  static cv::Mat photo;
  return photo;
}

// The photo as a quality-90 JPEG of width x height.
std::string Jpeg(int width, int height) {
  cv::Mat resized;
  cv::resize(Photo(), resized, cv::Size(width, height), 0, 0, cv::INTER_AREA);
  std::vector<uchar> bytes;
  cv::imencode(".jpg", resized, bytes, {cv::IMWRITE_JPEG_QUALITY, 90});
  return std::string(bytes.begin(), bytes.end());
}

careserve::InputSpec Classification() { return careserve::InputSpec{}; }  // CARE ImageNet: 224, center_crop, bicubic

careserve::InputSpec Letterbox512() {
  careserve::InputSpec spec;
  spec.height = spec.width = 512;
  spec.resize = careserve::ResizeMode::kLetterbox;
  spec.interpolation = cv::INTER_LINEAR;
  return spec;
}

void Decode(benchmark::State& state, int width, int height, careserve::InputSpec spec) {
  care::vision::v1::Image image;
  image.set_encoded(Jpeg(width, height));
  for (auto _ : state) {
    auto decoded = careserve::DecodeForInput(image, careserve::DecodeLimits{}, spec);
    if (!decoded.ok()) state.SkipWithError(std::string(decoded.status().message()).c_str());
    benchmark::DoNotOptimize(decoded);
  }
}

void Resize(benchmark::State& state, int width, int height, careserve::InputSpec spec) {
  care::vision::v1::Image image;
  image.set_encoded(Jpeg(width, height));
  auto decoded = careserve::DecodeForInput(image, careserve::DecodeLimits{}, spec);
  for (auto _ : state) {
    auto resized = careserve::ResizeForInput(decoded->rgb, spec, decoded->source_width, decoded->source_height);
    benchmark::DoNotOptimize(resized);
  }
}

void Normalize(benchmark::State& state, careserve::InputSpec spec) {
  care::vision::v1::Image image;
  image.set_encoded(Jpeg(spec.width, spec.height));
  auto decoded = careserve::DecodeForInput(image, careserve::DecodeLimits{}, spec);
  auto resized = careserve::ResizeForInput(decoded->rgb, spec, decoded->source_width, decoded->source_height);
  std::vector<float> chw(3 * spec.height * spec.width);
  for (auto _ : state) {
    careserve::NormalizeInto(resized, spec, chw.data());
    benchmark::DoNotOptimize(chw.data());
  }
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  absl::ParseCommandLine(argc, argv);
  Photo() = cv::imread(absl::GetFlag(FLAGS_photo), cv::IMREAD_COLOR);
  if (Photo().empty()) {
    std::fprintf(stderr, "error: --photo=%s: not an image OpenCV reads\n", absl::GetFlag(FLAGS_photo).c_str());
    return 64;
  }
  benchmark::RegisterBenchmark("decode/224x224_jpeg/for_224_center_crop", Decode, 224, 224, Classification());
  benchmark::RegisterBenchmark("decode/640x480_jpeg/for_224_center_crop", Decode, 640, 480, Classification());
  benchmark::RegisterBenchmark("decode/640x480_jpeg/for_512_letterbox", Decode, 640, 480, Letterbox512());
  benchmark::RegisterBenchmark("resize/224x224/to_224_center_crop_bicubic", Resize, 224, 224, Classification());
  benchmark::RegisterBenchmark("resize/640x480/to_224_center_crop_bicubic", Resize, 640, 480, Classification());
  benchmark::RegisterBenchmark("resize/640x480/to_512_letterbox_bilinear", Resize, 640, 480, Letterbox512());
  benchmark::RegisterBenchmark("normalize/224x224/into_float_CHW_batch_row", Normalize, Classification());
  benchmark::RegisterBenchmark("normalize/512x512/into_float_CHW_batch_row", Normalize, Letterbox512());
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
