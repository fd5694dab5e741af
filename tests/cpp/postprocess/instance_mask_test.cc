// COCO RLE strings and mask pasting (server/postprocess/instance_mask.h).
#include "server/postprocess/instance_mask.h"

#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace careserve {
namespace {

// Pixels of a decoded RLE, column-major (index x * height + y).
std::vector<bool> Pixels(const CocoRle& rle) {
  std::vector<uint32_t> runs;
  EXPECT_TRUE(DecodeRleCounts(rle.counts, &runs)) << rle.counts;
  std::vector<bool> pixels;
  for (size_t i = 0; i < runs.size(); ++i) pixels.insert(pixels.end(), runs[i], i % 2 == 1);
  EXPECT_EQ(pixels.size(), static_cast<size_t>(rle.width) * rle.height);
  return pixels;
}

TEST(RleCounts, EncodesAsPycocotoolsDoes) {
  // Worked by hand from the format: 5 bits per char + 48, 0x20 continues, runs from the
  // third on are differences to the run two before.
  EXPECT_EQ(EncodeRleCounts({0, 1}), "01");
  EXPECT_EQ(EncodeRleCounts({5, 3, 8}), "538");
  EXPECT_EQ(EncodeRleCounts({1, 2, 3, 40}), "123V1");   // 40 - 2 = 38: 'V' (6 | 0x20), '1'
  // 20 has bit 0x10 (the sign bit of a chunk): a 0 chunk follows. 5 - 10 = -5: 27, 'K'.
  EXPECT_EQ(EncodeRleCounts({10, 10, 20, 5}), "::d0K");
}

TEST(RleCounts, RoundTripsLongAndFallingRuns) {
  std::mt19937 rng(7);
  std::vector<uint32_t> runs;
  for (int i = 0; i < 500; ++i) runs.push_back(i % 7 == 0 ? rng() % 5'000'000 : rng() % 40);
  std::vector<uint32_t> back;
  ASSERT_TRUE(DecodeRleCounts(EncodeRleCounts(runs), &back));
  EXPECT_EQ(back, runs);
  EXPECT_FALSE(DecodeRleCounts("0 1", &back));  // outside the alphabet
  EXPECT_FALSE(DecodeRleCounts("P", &back));    // a continuation with nothing after it
}

TEST(PasteMask, AFullMaskCoversExactlyTheBoxAtIntegerEdges) {
  std::vector<float> ones(28 * 28, 1.0f);
  BoxDetection box{3, 2, 13, 7, 0, 0.9f};
  const CocoRle rle = PasteMask(ones.data(), 28, box, 20, 10);
  EXPECT_EQ(rle.width, 20);
  EXPECT_EQ(rle.height, 10);
  const std::vector<bool> pixels = Pixels(rle);
  for (int x = 0; x < 20; ++x) {
    for (int y = 0; y < 10; ++y) {
      EXPECT_EQ(pixels[x * 10 + y], x >= 3 && x < 13 && y >= 2 && y < 7) << x << "," << y;
    }
  }
}

TEST(PasteMask, FollowsTheMaskInsideTheBoxAndIsColumnMajor) {
  // Left half of the mask on: the left half of the box's columns, all its rows.
  std::vector<float> mask(28 * 28, 0.0f);
  for (int r = 0; r < 28; ++r) {
    for (int c = 0; c < 14; ++c) mask[r * 28 + c] = 1.0f;
  }
  BoxDetection box{0, 0, 8, 4, 0, 0.9f};
  const std::vector<bool> pixels = Pixels(PasteMask(mask.data(), 28, box, 8, 4));
  for (int x = 0; x < 8; ++x) {
    for (int y = 0; y < 4; ++y) EXPECT_EQ(pixels[x * 4 + y], x < 4) << x << "," << y;
  }
}

TEST(PasteMask, ADegenerateBoxOrAFaintMaskIsEmpty) {
  std::vector<float> ones(28 * 28, 1.0f), faint(28 * 28, 0.49f);
  EXPECT_EQ(PasteMask(ones.data(), 28, BoxDetection{5, 5, 5, 9, 0, 1}, 10, 12).counts, EncodeRleCounts({120}));
  EXPECT_EQ(PasteMask(faint.data(), 28, BoxDetection{0, 0, 10, 12, 0, 1}, 10, 12).counts, EncodeRleCounts({120}));
}

}  // namespace
}  // namespace careserve
