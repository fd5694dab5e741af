// How many CPUs this process may use: the fewest of the CPUs in its affinity mask and its
// cgroup CPU quota (v2 cpu.max, v1 cpu.cfs_quota_us / cpu.cfs_period_us, in its own cgroup
// and every ancestor visible), so that the default thread counts follow a container's CPU
// limit instead of the node's cores (a pod limited to 2 CPUs on a 64-core node would
// otherwise start 64-thread pools and be throttled mid-batch).
#pragma once

#include <optional>
#include <string>

namespace careserve {

struct UsableCpus {
  int count = 0;  // 0: neither the mask nor a quota says (DetectUsableCpus() then uses the hardware)
  // Where the count comes from, for the startup log: e.g. "cgroup v2 cpu.max 200000 100000
  // at /sys/fs/cgroup/kubepods/pod1", "affinity mask", "hardware".
  std::string source;
  std::optional<double> quota_cpus;  // the tightest cgroup quota found, in CPUs
};

// The files read, relative to `root` ("/" on a real system; a fixture directory in tests):
// proc/self/cgroup, proc/self/mountinfo and the cgroup files under the mount points that
// mountinfo names. `affinity`: CPUs in the affinity mask (0: unknown, e.g. in tests).
// A quota of q CPUs allows floor(q) threads, at least one: a thread more than the quota
// is throttled for part of every period.
UsableCpus DetectUsableCpus(const std::string& root, int affinity);

// The real process: root "/", sched_getaffinity, and std::thread::hardware_concurrency
// when neither says anything.
UsableCpus DetectUsableCpus();

// "200000 100000" -> 2.0; "max 100000" -> nullopt (no limit); malformed -> nullopt.
std::optional<double> ParseCpuMax(const std::string& content);
// cfs_quota_us, cfs_period_us contents: "150000", "100000" -> 1.5; quota "-1" -> nullopt.
std::optional<double> ParseCfsQuota(const std::string& quota, const std::string& period);

}  // namespace careserve
