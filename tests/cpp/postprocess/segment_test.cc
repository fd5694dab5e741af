// The class map from low-resolution logits, against a brute-force evaluation of the same
// definition, and the mask encoding.
#include "server/postprocess/segment.h"

#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "opencv2/imgcodecs.hpp"

namespace careserve {
namespace {

// Every class evaluated at every pixel: the definition in segment.h, written plainly.
cv::Mat BruteForce(const std::vector<float>& logits, int classes, int h, int w, double scale, double stride,
                   int out_w, int out_h) {
  cv::Mat mask(out_h, out_w, CV_16UC1);
  auto coord = [&](int x, int size) {
    return std::clamp((x + 0.5) * scale / stride - 0.5, 0.0, static_cast<double>(size - 1));
  };
  for (int y = 0; y < out_h; ++y) {
    const double v = coord(y, h);
    const int y0 = static_cast<int>(std::floor(v)), y1 = std::min(y0 + 1, h - 1);
    const float wy = static_cast<float>(v - y0);
    for (int x = 0; x < out_w; ++x) {
      const double u = coord(x, w);
      const int x0 = static_cast<int>(std::floor(u)), x1 = std::min(x0 + 1, w - 1);
      const float wx = static_cast<float>(u - x0);
      float best = -INFINITY;
      int best_c = 0;
      for (int c = 0; c < classes; ++c) {
        const float* p = logits.data() + static_cast<size_t>(c) * h * w;
        const float left = p[y0 * w + x0] * (1 - wy) + p[y1 * w + x0] * wy;
        const float right = p[y0 * w + x1] * (1 - wy) + p[y1 * w + x1] * wy;
        const float value = left * (1 - wx) + right * wx;
        if (value > best) {
          best = value;
          best_c = c;
        }
      }
      mask.at<uint16_t>(y, x) = static_cast<uint16_t>(best_c);
    }
  }
  return mask;
}

TEST(ArgmaxResize, EqualsEvaluatingEveryClassAtEveryPixel) {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal;
  const int classes = 20, h = 12, w = 18;
  std::vector<float> logits(static_cast<size_t>(classes) * h * w);
  for (float& v : logits) v = normal(rng);
  // A 48x72 input (stride 4) holding a letterboxed 300x200 photo: scale 0.24.
  for (auto [out_w, out_h, scale] : {std::tuple{300, 200, 0.24}, std::tuple{72, 48, 1.0}, std::tuple{31, 17, 2.3}}) {
    const ClassMap fast = ArgmaxResize(logits.data(), classes, h, w, scale, 4.0, out_w, out_h);
    cv::Mat slow = BruteForce(logits, classes, h, w, scale, 4.0, out_w, out_h);
    ASSERT_EQ(fast.mask.size(), cv::Size(out_w, out_h));
    ASSERT_EQ(fast.mask.type(), CV_8UC1);
    slow.convertTo(slow, CV_8UC1);
    EXPECT_EQ(cv::countNonZero(fast.mask != slow), 0) << out_w << "x" << out_h;
    for (int c = 0; c < classes; ++c) EXPECT_EQ(fast.pixels[c], cv::countNonZero(slow == c)) << c;
  }
}

TEST(ArgmaxResize, ConstantRegionsKeepTheirClassAndTiesGoToTheLowerClass) {
  // 2 classes on a 2x2 map: class 1 wins the left column, class 0 the right.
  const std::vector<float> logits = {0, 1, 0, 1,   // class 0
                                     1, 0, 1, 0};  // class 1
  const cv::Mat mask = ArgmaxResize(logits.data(), 2, 2, 2, 1.0, 2.0, 4, 2).mask;
  // Columns map to u = -0.25, 0.25, 0.75, 1.25 (clamped): class 1, 1, 0, 0; u = 0.5 would tie.
  EXPECT_EQ(mask.at<uint8_t>(0, 0), 1);
  EXPECT_EQ(mask.at<uint8_t>(0, 1), 1);
  EXPECT_EQ(mask.at<uint8_t>(1, 2), 0);
  EXPECT_EQ(mask.at<uint8_t>(1, 3), 0);
  const cv::Mat tie = ArgmaxResize(logits.data(), 2, 2, 2, 1.0, 0.5, 1, 1).mask;  // u = 0.5 exactly
  EXPECT_EQ(tie.at<uint8_t>(0, 0), 0);
}

TEST(ArgmaxResize, SixteenBitMapAbove255Classes) {
  std::vector<float> logits(300 * 2 * 2, 0.0f);
  for (int i = 0; i < 4; ++i) logits[299 * 4 + i] = 1.0f;  // class 299 everywhere
  const ClassMap map = ArgmaxResize(logits.data(), 300, 2, 2, 1.0, 1.0, 3, 3);
  ASSERT_EQ(map.mask.type(), CV_16UC1);
  EXPECT_EQ(map.mask.at<uint16_t>(1, 1), 299);
  EXPECT_EQ(map.pixels[299], 9);
}

TEST(Mask, CoverageOrderAndPngRoundTrip) {
  const auto present = ClassesPresent({0, 0, 1, 0, 5});
  ASSERT_EQ(present.size(), 2u);
  EXPECT_EQ(present[0].class_index, 4);
  EXPECT_EQ(present[0].pixels, 5);
  EXPECT_EQ(present[1].class_index, 2);

  cv::Mat mask8(2, 3, CV_8UC1, cv::Scalar(4));
  mask8.at<uint8_t>(0, 0) = 2;
  auto png = EncodeMaskPng(mask8);
  ASSERT_TRUE(png.ok());
  cv::Mat decoded = cv::imdecode(std::vector<uchar>(png->begin(), png->end()), cv::IMREAD_UNCHANGED);
  EXPECT_EQ(decoded.type(), CV_8UC1);
  EXPECT_EQ(cv::countNonZero(decoded != mask8), 0);

  cv::Mat mask16(2, 3, CV_16UC1, cv::Scalar(300));
  png = EncodeMaskPng(mask16);
  decoded = cv::imdecode(std::vector<uchar>(png->begin(), png->end()), cv::IMREAD_UNCHANGED);
  EXPECT_EQ(decoded.type(), CV_16UC1);
  EXPECT_EQ(decoded.at<uint16_t>(1, 1), 300);
}

}  // namespace
}  // namespace careserve
