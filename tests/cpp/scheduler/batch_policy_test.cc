// The batch-time curve and the adaptive policy's arithmetic, alone.
#include "server/scheduler/batch_policy.h"

#include <vector>

#include "gtest/gtest.h"

namespace careserve {
namespace {

const absl::Time kNow = absl::UnixEpoch() + absl::Hours(1);

BatchTimes Curve(std::vector<std::pair<int, double>> points_ms) {
  BatchTimes t;
  for (auto [b, ms] : points_ms) t.Record(b, absl::Milliseconds(ms));
  return t;
}

// CARE-S0 224 on one core of this machine (docs/benchmarks.md): batching buys ~15%.
double Ms(absl::Duration d) { return absl::ToDoubleMilliseconds(d); }
double MsAfterNow(absl::Time t) { return Ms(t - kNow); }

BatchTimes ThisCpu() { return Curve({{1, 18}, {4, 62}, {8, 126}, {16, 260}}); }

TEST(BatchTimesTest, InterpolatesBetweenMeasuredSizesAndExtrapolatesPerImage) {
  const BatchTimes t = Curve({{1, 10}, {4, 40}});
  EXPECT_NEAR(Ms(t.Estimate(1)), 10, 1e-6);
  EXPECT_NEAR(Ms(t.Estimate(2)), 20, 1e-6);
  EXPECT_NEAR(Ms(t.Estimate(8)), 80, 1e-6);  // 10 per image beyond 4
  EXPECT_EQ(BatchTimes().Estimate(3), absl::ZeroDuration());
}

TEST(BatchTimesTest, BatchesThatRunScaleTheWholeCurveATenthOfTheWay) {
  BatchTimes t = Curve({{1, 10}, {4, 40}});
  t.Observe(4, absl::Milliseconds(80));  // twice as slow as measured: scale 1 -> 1.1
  EXPECT_NEAR(Ms(t.Estimate(4)), 44, 1e-6);
  EXPECT_NEAR(Ms(t.Estimate(1)), 11, 1e-6);  // sizes that did not run move with it
  for (int i = 0; i < 200; ++i) t.Observe(2, absl::Milliseconds(10));  // half as slow
  EXPECT_NEAR(Ms(t.Estimate(2)), 10, 1e-3);
  EXPECT_NEAR(Ms(t.Estimate(4)), 20, 1e-3);
  EXPECT_EQ(t.MostEfficient(4), 1);  // the shape is the warm-up's
  t.Record(4, absl::Milliseconds(8));  // a new warm-up point changes the shape, and the answer
  EXPECT_EQ(t.MostEfficient(4), 4);
  BatchTimes none;
  none.Observe(1, absl::Milliseconds(5));
  EXPECT_TRUE(none.empty());
}

TEST(BatchTimesTest, MostEfficientIsTheLeastTimePerImage) {
  EXPECT_EQ(ThisCpu().MostEfficient(16), 4);
  EXPECT_EQ(ThisCpu().MostEfficient(2), 2);
  EXPECT_EQ(Curve({{1, 10}, {8, 80}}).MostEfficient(8), 1);  // no gain: the smallest
}

TEST(AdaptiveBatchSizeTest, LightLoadRunsEachRequestAloneAtOnce) {
  EXPECT_EQ(AdaptiveBatchSize(1, 16, kNow, {kNow}, ThisCpu()), 1);
  // Two queued and the other thread free: one each.
  EXPECT_EQ(AdaptiveBatchSize(2, 16, kNow, {kNow}, ThisCpu()), 1);
}

TEST(AdaptiveBatchSizeTest, WhenBatchingBuysNothingBatchesStayAtOne) {
  const BatchTimes linear = Curve({{1, 10}, {16, 160}});
  for (int queued : {1, 2, 5, 32, 200}) EXPECT_EQ(AdaptiveBatchSize(queued, 16, kNow, {kNow}, linear), 1) << queued;
}

TEST(AdaptiveBatchSizeTest, ABacklogGetsBiggerBatchesUpToTheLimit) {
  const BatchTimes overhead = Curve({{1, 11}, {16, 26}});  // 10 ms fixed + 1 ms per image
  EXPECT_EQ(AdaptiveBatchSize(32, 16, kNow, {kNow}, overhead), 16);
  EXPECT_EQ(AdaptiveBatchSize(32, 8, kNow, {kNow}, overhead), 8);
  // With this CPU's curve a long queue drains soonest in the most efficient batches.
  EXPECT_EQ(AdaptiveBatchSize(64, 16, kNow, {kNow}, ThisCpu()), 4);
}

TEST(AdaptiveBatchSizeTest, AnotherThreadBusyForLongMakesThisOneTakeMore) {
  // The other thread frees in 100 ms: two in one batch (33 ms) beat two in a row (36 ms).
  EXPECT_EQ(AdaptiveBatchSize(2, 16, kNow, {kNow + absl::Milliseconds(100)}, ThisCpu()), 2);
}

TEST(EarliestCompletionTest, CountsTheQueueAheadInTheMostEfficientBatches) {
  const BatchTimes t = ThisCpu();
  EXPECT_NEAR(MsAfterNow(EarliestCompletion(1, 16, kNow, {kNow}, t)), 18, 1e-6);
  // One thread, busy 10 ms more: four ahead in one batch of 4, then this one alone.
  EXPECT_NEAR(MsAfterNow(EarliestCompletion(5, 16, kNow, {kNow + absl::Milliseconds(10)}, t)), 10 + 62 + 18, 1e-6);
  // Two threads share the work ahead.
  EXPECT_NEAR(MsAfterNow(EarliestCompletion(5, 16, kNow, {kNow, kNow}, t)), 18, 1e-6);
}

TEST(BatchPolicyTest, NamesParseBackAndUnknownOnesAreRefused) {
  for (BatchPolicy p : {BatchPolicy::kAdaptive, BatchPolicy::kFixedDelay}) EXPECT_EQ(*ParseBatchPolicy(BatchPolicyName(p)), p);
  EXPECT_EQ(ParseBatchPolicy("greedy").status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace careserve
