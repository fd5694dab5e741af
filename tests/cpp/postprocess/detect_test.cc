// Detection postprocessing on hand-computed cases.
#include "server/postprocess/detect.h"

#include <vector>

#include "gtest/gtest.h"

namespace careserve {
namespace {

struct Candidates {
  std::vector<float> boxes;
  std::vector<float> scores;
  std::vector<int64_t> labels;
  void Add(float x1, float y1, float x2, float y2, float score, int label) {
    boxes.insert(boxes.end(), {x1, y1, x2, y2});
    scores.push_back(score);
    labels.push_back(label);
  }
  std::vector<BoxDetection> Select(const DetectOptions& options, const LetterboxGeometry& geometry) const {
    return SelectDetections(boxes.data(), scores.data(), labels.data(), static_cast<int64_t>(scores.size()), options,
                            geometry);
  }
};

// No letterbox: a 100x100 image in a 100x100 input.
const LetterboxGeometry kIdentity{1.0, 100, 100, 100, 100};

TEST(IoU, HandComputed) {
  const BoxDetection a{0, 0, 10, 10, 0, 1}, b{5, 0, 15, 10, 0, 1}, c{20, 20, 30, 30, 0, 1};
  EXPECT_FLOAT_EQ(IoU(a, b), 50.0f / 150.0f);  // overlap 5x10, union 100 + 100 - 50
  EXPECT_FLOAT_EQ(IoU(a, a), 1.0f);
  EXPECT_FLOAT_EQ(IoU(a, c), 0.0f);
  const BoxDetection empty{3, 3, 3, 3, 0, 1};
  EXPECT_FLOAT_EQ(IoU(empty, empty), 0.0f);
}

TEST(SelectDetections, OverlappingBoxesOfOneClassAreSuppressed) {
  Candidates c;
  c.Add(0, 0, 10, 10, 0.9f, 3);
  c.Add(1, 0, 11, 10, 0.8f, 3);   // IoU with the first 90/110 = 0.82 > 0.5: suppressed
  c.Add(5, 0, 15, 10, 0.7f, 3);   // IoU with the first 1/3: kept
  c.Add(50, 50, 60, 60, 0.6f, 3);  // elsewhere: kept
  const auto kept = c.Select({0.05f, 0.5f, 100}, kIdentity);
  ASSERT_EQ(kept.size(), 3u);
  EXPECT_FLOAT_EQ(kept[0].score, 0.9f);
  EXPECT_FLOAT_EQ(kept[1].score, 0.7f);
  EXPECT_FLOAT_EQ(kept[2].score, 0.6f);
}

TEST(SelectDetections, OverlappingBoxesOfTwoClassesAreBothKept) {
  Candidates c;
  c.Add(0, 0, 10, 10, 0.9f, 1);
  c.Add(0, 0, 10, 10, 0.8f, 2);  // the same box, another class
  const auto kept = c.Select({0.05f, 0.5f, 100}, kIdentity);
  ASSERT_EQ(kept.size(), 2u);
  EXPECT_EQ(kept[0].label, 1);
  EXPECT_EQ(kept[1].label, 2);
}

TEST(SelectDetections, SuppressionOnlyAboveTheIouThreshold) {
  Candidates c;
  c.Add(0, 0, 10, 10, 0.9f, 0);
  c.Add(5, 0, 15, 10, 0.8f, 0);  // IoU exactly 1/3
  EXPECT_EQ(c.Select({0.05f, 1.0f / 3.0f, 100}, kIdentity).size(), 2u);  // not > threshold
  EXPECT_EQ(c.Select({0.05f, 0.3f, 100}, kIdentity).size(), 1u);
}

TEST(SelectDetections, ScoreThresholdIsStrictAndTheCapKeepsTheBest) {
  Candidates c;
  for (int i = 0; i < 5; ++i) c.Add(20.0f * i, 0, 20.0f * i + 10, 10, 0.1f * (i + 1), 0);  // 0.1 .. 0.5
  auto kept = c.Select({0.3f, 0.5f, 100}, kIdentity);
  ASSERT_EQ(kept.size(), 2u);  // 0.4 and 0.5; 0.3 is not > 0.3
  EXPECT_FLOAT_EQ(kept[0].score, 0.5f);
  kept = c.Select({0.0f, 0.5f, 3}, kIdentity);
  ASSERT_EQ(kept.size(), 3u);
  EXPECT_FLOAT_EQ(kept[2].score, 0.3f);
}

TEST(SelectDetections, LetterboxIsUndoneOnANonSquareImage) {
  // A 400x200 image letterboxed into 128x128: scale 0.32, the image is 128x64 at the top.
  const LetterboxGeometry geometry{0.32, 128, 64, 400, 200};
  Candidates c;
  c.Add(16, 8, 48, 40, 0.9f, 7);
  const auto kept = c.Select({0.05f, 0.5f, 100}, geometry);
  ASSERT_EQ(kept.size(), 1u);
  EXPECT_NEAR(kept[0].x_min, 50.0f, 1e-4);  // 16 / 0.32
  EXPECT_NEAR(kept[0].y_min, 25.0f, 1e-4);
  EXPECT_NEAR(kept[0].x_max, 150.0f, 1e-4);
  EXPECT_NEAR(kept[0].y_max, 125.0f, 1e-4);
  EXPECT_EQ(kept[0].label, 7);
}

TEST(SelectDetections, BoxesAreClippedToTheImageNotThePadding) {
  // Same letterbox; a box reaching into the padding below the image (y > 64) and past the
  // right edge is clipped to the image: y_max 200, x_max 400.
  const LetterboxGeometry geometry{0.32, 128, 64, 400, 200};
  Candidates c;
  c.Add(-5, 32, 140, 100, 0.9f, 0);
  const auto kept = c.Select({0.05f, 0.5f, 100}, geometry);
  ASSERT_EQ(kept.size(), 1u);
  EXPECT_FLOAT_EQ(kept[0].x_min, 0.0f);
  EXPECT_NEAR(kept[0].y_min, 100.0f, 1e-4);
  EXPECT_FLOAT_EQ(kept[0].x_max, 400.0f);
  EXPECT_FLOAT_EQ(kept[0].y_max, 200.0f);
}

TEST(SelectDetections, ClippingToTheImageHappensBeforeNms) {
  // Two boxes that overlap only in the padding: after clipping to the 128x64 image region
  // they no longer overlap enough to suppress each other.
  const LetterboxGeometry geometry{0.32, 128, 64, 400, 200};
  Candidates c;
  c.Add(0, 54, 20, 128, 0.9f, 0);   // clipped to (0, 54, 20, 64)
  c.Add(10, 54, 30, 128, 0.8f, 0);  // clipped to (10, 54, 30, 64): IoU 100/300
  EXPECT_EQ(c.Select({0.05f, 0.5f, 100}, geometry).size(), 2u);
}

}  // namespace
}  // namespace careserve
