// ResizeCubicCut against OpenCV itself: the cut of cv::resize(INTER_CUBIC), byte for byte.
#include "server/preprocess/cubic_cut.h"

#include <random>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "opencv2/imgproc.hpp"

namespace careserve {
namespace {

cv::Mat RandomImage(int width, int height, int channels, std::mt19937* rng) {
  cv::Mat image(height, width, CV_8UC(channels));
  cv::randu(image, 0, 256);
  // Half the images smooth, half noise: smooth ones exercise exact ties and mid values,
  // noise the overshoot that saturates at 0 and 255.
  if ((*rng)() % 2) cv::GaussianBlur(image, image, cv::Size(0, 0), 2.0);
  return image;
}

// Checks every kept byte; the message says where the first difference is.
void ExpectSameAsOpenCv(const cv::Mat& src, cv::Size full, cv::Rect cut) {
  cv::Mat resized;
  cv::resize(src, resized, full, 0, 0, cv::INTER_CUBIC);
  cv::Mat expected = resized(cut);
  // Every instruction-set path this CPU can run (AVX2, SSSE3, SSE2); the best is put back
  // at once, as the server uses it.
  const int best = internal::CubicCutBestSimdLevel();
  for (int level = 0; level <= best; ++level) {
    internal::cubic_cut_simd_level = level;
    cv::Mat got;
    ResizeCubicCut(src, full, cut, &got);
    internal::cubic_cut_simd_level = best;
    const std::string where =
        absl::StrCat(src.cols, "x", src.rows, "x", src.channels(), " -> ", full.width, "x", full.height, " cut ",
                     cut.x, ",", cut.y, " ", cut.width, "x", cut.height, " (SIMD level ", level, ")");
    ASSERT_EQ(got.type(), expected.type()) << where;
    ASSERT_EQ(got.size(), expected.size()) << where;
    cv::Mat diff;
    cv::absdiff(got.reshape(1), expected.reshape(1), diff);
    if (cv::countNonZero(diff) > 0) {
      cv::Point at;
      double worst;
      cv::minMaxLoc(diff, nullptr, &worst, nullptr, &at);
      FAIL() << where << ": " << cv::countNonZero(diff) << " bytes differ, by up to " << worst << ", e.g. at row "
             << at.y << " byte " << at.x;
    }
  }
}

TEST(CubicCut, CenterCropOfTheServiceSizes) {
  std::mt19937 rng(1);
  // 224x224 and 640x480 photos to the 224 and 256 center_crop covers; 512 letterbox sizes.
  const std::vector<std::pair<cv::Size, cv::Size>> cases = {
      {{224, 224}, {256, 256}}, {{640, 480}, {341, 256}}, {{480, 640}, {256, 341}},
      {{320, 240}, {292, 219}}, {{100, 100}, {256, 256}}, {{1000, 37}, {6918, 256}}};
  for (const auto& [source, full] : cases) {
    const cv::Mat src = RandomImage(source.width, source.height, 3, &rng);
    const int w = std::min(224, full.width), h = std::min(224, full.height);
    ExpectSameAsOpenCv(src, full, cv::Rect((full.width - w) / 2, (full.height - h) / 2, w, h));
    ExpectSameAsOpenCv(src, full, cv::Rect(0, 0, full.width, full.height));
  }
}

TEST(CubicCut, ManySizesChannelsAndCuts) {
  std::mt19937 rng(2);
  std::uniform_int_distribution<int> side(1, 120), channels(1, 4);
  for (int n = 0; n < 400; ++n) {
    const int cn = channels(rng);
    const cv::Mat src = RandomImage(side(rng), side(rng), cn, &rng);
    const cv::Size full(side(rng), side(rng));  // up, down, and one axis each way
    std::uniform_int_distribution<int> x(0, full.width - 1), y(0, full.height - 1);
    const int left = x(rng), top = y(rng);
    const int width = std::uniform_int_distribution<int>(1, full.width - left)(rng);
    const int height = std::uniform_int_distribution<int>(1, full.height - top)(rng);
    ExpectSameAsOpenCv(src, full, cv::Rect(left, top, width, height));
    if (HasFatalFailure()) return;
  }
}

TEST(CubicCut, ThinImagesReplicateTheirEdges) {
  std::mt19937 rng(3);
  for (const cv::Size source : {cv::Size(1, 1), cv::Size(1, 50), cv::Size(50, 1), cv::Size(2, 3)}) {
    for (const cv::Size full : {cv::Size(7, 9), cv::Size(64, 64), cv::Size(1, 1)}) {
      const cv::Mat src = RandomImage(source.width, source.height, 3, &rng);
      ExpectSameAsOpenCv(src, full, cv::Rect(0, 0, full.width, full.height));
    }
  }
}

}  // namespace
}  // namespace careserve
