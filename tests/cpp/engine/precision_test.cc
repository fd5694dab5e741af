#include "server/engine/precision.h"

#include "gtest/gtest.h"

namespace careserve {
namespace {

TEST(ServedPrecision, WithoutADeclarationTheGraphsMajorityTypeIsServed) {
  EXPECT_EQ(*ServedPrecision("", "fp32", {"fp32"}), "fp32");
  EXPECT_EQ(*ServedPrecision("", "bf16", {"bf16", "fp32"}), "bf16");
}

TEST(ServedPrecision, ADeclaredLowerPrecisionNeedsSuchWeightsInTheGraph) {
  // A bf16 detector: bf16 backbone, fp32 heads (more fp32 weights than bf16 ones).
  EXPECT_EQ(*ServedPrecision("bf16", "fp32", {"bf16", "fp32"}), "bf16");
  absl::StatusOr<std::string> lie = ServedPrecision("bf16", "fp32", {"fp32"});
  ASSERT_FALSE(lie.ok());
  EXPECT_EQ(lie.status().message(),
            "config.json says precision bf16 but model.pt holds no bf16 weights (found: fp32)");
}

TEST(ServedPrecision, ADeclaredFp32GraphHoldsNoLowerPrecisionWeights) {
  EXPECT_EQ(*ServedPrecision("fp32", "fp32", {"fp32"}), "fp32");
  absl::StatusOr<std::string> lie = ServedPrecision("fp32", "fp32", {"bf16", "fp32"});
  ASSERT_FALSE(lie.ok());
  EXPECT_NE(lie.status().message().find("holds bf16 weights"), absl::string_view::npos) << lie.status();
}

TEST(PrecisionNote, SaysWhenTheCpuLacksTheInstructions) {
  EXPECT_EQ(PrecisionNote("fp32", {}), "");
  EXPECT_EQ(PrecisionNote("bf16", {"avx512f", "avx512_bf16"}), "");
  EXPECT_EQ(PrecisionNote("bf16", {"amx_bf16"}), "");
  EXPECT_EQ(PrecisionNote("bf16", {"avx512f", "avx2"}),
            "this CPU lacks avx512_bf16 and amx_bf16: bf16 is emulated, likely slower than fp32");
  EXPECT_EQ(PrecisionNote("int8", {"avx512_vnni"}), "");
  EXPECT_NE(PrecisionNote("int8", {"avx2"}), "");
}

TEST(CpuFlags, ReadsThisMachinesFlags) {
  // Every x86-64 CPU has SSE2; an empty set would make every bf16 model look emulated.
  EXPECT_TRUE(CpuFlags().count("sse2")) << "no flags read from /proc/cpuinfo";
}

}  // namespace
}  // namespace careserve
