// Usable CPUs from fixture /proc and cgroup trees (v1, v2, nested, none); the real process
// under an affinity mask and a cgroup quota: tests/cpp/integration/runtime_test.cc.
#include "server/common/cpus.h"

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "gtest/gtest.h"

namespace careserve {
namespace {

namespace fs = std::filesystem;

class Fixture {
 public:
  Fixture() {
    root_ = fs::temp_directory_path() / ("cpus_test_" + std::to_string(getpid()) + "_" + std::to_string(counter_++));
    fs::remove_all(root_);
    fs::create_directories(root_);
  }
  ~Fixture() { fs::remove_all(root_); }
  void Write(const std::string& path, const std::string& content) {
    const fs::path p = root_ / path.substr(1);
    fs::create_directories(p.parent_path());
    std::ofstream(p) << content;
  }
  std::string root() const { return root_.string(); }

 private:
  static inline int counter_ = 0;
  fs::path root_;
};

constexpr char kV2Mountinfo[] =
    "22 1 0:21 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate\n";
constexpr char kV1Mountinfo[] =
    "30 22 0:27 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
    "31 30 0:28 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct\n"
    "33 30 0:30 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset\n";

TEST(ParseCpuMax, QuotaPeriodAndNoLimit) {
  EXPECT_DOUBLE_EQ(*ParseCpuMax("200000 100000\n"), 2.0);
  EXPECT_DOUBLE_EQ(*ParseCpuMax("150000 100000"), 1.5);
  EXPECT_FALSE(ParseCpuMax("max 100000\n").has_value());
  EXPECT_FALSE(ParseCpuMax("").has_value());
  EXPECT_FALSE(ParseCpuMax("abc 100000").has_value());
}

TEST(ParseCfsQuota, QuotaPeriodAndNoLimit) {
  EXPECT_DOUBLE_EQ(*ParseCfsQuota("400000\n", "100000\n"), 4.0);
  EXPECT_FALSE(ParseCfsQuota("-1\n", "100000\n").has_value());
  EXPECT_FALSE(ParseCfsQuota("x", "100000").has_value());
}

TEST(DetectUsableCpus, CgroupV2QuotaBelowAffinity) {
  Fixture f;
  f.Write("/proc/self/mountinfo", kV2Mountinfo);
  f.Write("/proc/self/cgroup", "0::/kubepods/pod1/c1\n");
  f.Write("/sys/fs/cgroup/kubepods/pod1/c1/cpu.max", "200000 100000\n");
  const UsableCpus cpus = DetectUsableCpus(f.root(), 64);
  EXPECT_EQ(cpus.count, 2);
  EXPECT_NE(cpus.source.find("cgroup v2"), std::string::npos) << cpus.source;
  EXPECT_NE(cpus.source.find("kubepods/pod1/c1/cpu.max"), std::string::npos) << cpus.source;
}

TEST(DetectUsableCpus, TightestAncestorWins) {
  // A pod-level limit above the container's own "max".
  Fixture f;
  f.Write("/proc/self/mountinfo", kV2Mountinfo);
  f.Write("/proc/self/cgroup", "0::/kubepods/pod1/c1\n");
  f.Write("/sys/fs/cgroup/kubepods/pod1/c1/cpu.max", "max 100000\n");
  f.Write("/sys/fs/cgroup/kubepods/pod1/cpu.max", "300000 100000\n");
  f.Write("/sys/fs/cgroup/kubepods/cpu.max", "800000 100000\n");
  EXPECT_EQ(DetectUsableCpus(f.root(), 64).count, 3);
}

TEST(DetectUsableCpus, FractionalQuotaRoundsDownToAtLeastOne) {
  Fixture f;
  f.Write("/proc/self/mountinfo", kV2Mountinfo);
  f.Write("/proc/self/cgroup", "0::/\n");
  f.Write("/sys/fs/cgroup/cpu.max", "250000 100000\n");
  UsableCpus cpus = DetectUsableCpus(f.root(), 8);
  EXPECT_EQ(cpus.count, 2);
  EXPECT_DOUBLE_EQ(*cpus.quota_cpus, 2.5);
  f.Write("/sys/fs/cgroup/cpu.max", "50000 100000\n");
  EXPECT_EQ(DetectUsableCpus(f.root(), 8).count, 1);
}

TEST(DetectUsableCpus, AffinityBelowQuotaWins) {
  Fixture f;
  f.Write("/proc/self/mountinfo", kV2Mountinfo);
  f.Write("/proc/self/cgroup", "0::/\n");
  f.Write("/sys/fs/cgroup/cpu.max", "800000 100000\n");
  const UsableCpus cpus = DetectUsableCpus(f.root(), 2);
  EXPECT_EQ(cpus.count, 2);
  EXPECT_EQ(cpus.source, "affinity mask");
}

TEST(DetectUsableCpus, CgroupV1CfsQuota) {
  Fixture f;
  f.Write("/proc/self/mountinfo", kV1Mountinfo);
  f.Write("/proc/self/cgroup", "4:cpu,cpuacct:/docker/abc\n3:cpuset:/docker/abc\n0::/\n");
  f.Write("/sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "300000\n");
  f.Write("/sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us", "100000\n");
  f.Write("/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "-1\n");
  f.Write("/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us", "100000\n");
  const UsableCpus cpus = DetectUsableCpus(f.root(), 16);
  EXPECT_EQ(cpus.count, 3);
  EXPECT_NE(cpus.source.find("cgroup v1"), std::string::npos) << cpus.source;
}

TEST(DetectUsableCpus, CgroupNamespaceRootMount) {
  // Inside a container with its own cgroup namespace the mount's root is the container's
  // cgroup and /proc/self/cgroup says "/".
  Fixture f;
  f.Write("/proc/self/mountinfo",
          "22 1 0:21 /kubepods/pod1/c1 /sys/fs/cgroup ro,nosuid - cgroup2 cgroup2 rw\n");
  f.Write("/proc/self/cgroup", "0::/kubepods/pod1/c1\n");
  f.Write("/sys/fs/cgroup/cpu.max", "100000 100000\n");
  EXPECT_EQ(DetectUsableCpus(f.root(), 32).count, 1);
}

TEST(DetectUsableCpus, NoLimitAnywhere) {
  Fixture f;
  f.Write("/proc/self/mountinfo", kV2Mountinfo);
  f.Write("/proc/self/cgroup", "0::/user.slice\n");
  f.Write("/sys/fs/cgroup/user.slice/cpu.max", "max 100000\n");
  UsableCpus cpus = DetectUsableCpus(f.root(), 12);
  EXPECT_EQ(cpus.count, 12);
  EXPECT_FALSE(cpus.quota_cpus.has_value());
  // Nothing readable at all: the caller decides (0).
  Fixture empty;
  EXPECT_EQ(DetectUsableCpus(empty.root(), 0).count, 0);
}

}  // namespace
}  // namespace careserve
