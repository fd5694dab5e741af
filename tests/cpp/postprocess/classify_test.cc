#include "server/postprocess/classify.h"

#include <cmath>
#include <vector>

#include "gtest/gtest.h"

namespace careserve {
namespace {

TEST(SoftmaxTopK, ProbabilitiesOfTheBestClassesInOrder) {
  const std::vector<float> logits = {1.0f, 3.0f, 2.0f, 0.0f};
  const double sum = std::exp(1.0) + std::exp(3.0) + std::exp(2.0) + std::exp(0.0);
  const auto top = SoftmaxTopK(logits.data(), 4, 3);
  ASSERT_EQ(top.size(), 3u);
  EXPECT_EQ(top[0].index, 1);
  EXPECT_EQ(top[1].index, 2);
  EXPECT_EQ(top[2].index, 0);
  EXPECT_NEAR(top[0].score, std::exp(3.0) / sum, 1e-7);
  EXPECT_NEAR(top[1].score, std::exp(2.0) / sum, 1e-7);
  EXPECT_NEAR(top[2].score, std::exp(1.0) / sum, 1e-7);
}

TEST(SoftmaxTopK, AllClassesSumToOneEvenForHugeLogits) {
  const std::vector<float> logits = {1000.0f, 999.0f, -1000.0f};
  const auto top = SoftmaxTopK(logits.data(), 3, 3);
  double total = 0;
  for (const auto& c : top) total += c.score;
  EXPECT_NEAR(total, 1.0, 1e-6);
  EXPECT_NEAR(top[0].score, 1.0 / (1.0 + std::exp(-1.0)), 1e-6);
  EXPECT_EQ(top[2].score, 0.0f);
}

TEST(SoftmaxTopK, TiesKeepClassOrder) {
  const std::vector<float> logits = {0.5f, 0.5f, 0.5f};
  const auto top = SoftmaxTopK(logits.data(), 3, 2);
  EXPECT_EQ(top[0].index, 0);
  EXPECT_EQ(top[1].index, 1);
  EXPECT_NEAR(top[0].score, 1.0 / 3, 1e-7);
}

}  // namespace
}  // namespace careserve
