#include "server/common/cpus.h"

#include <sched.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace careserve {

namespace {

std::optional<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return std::nullopt;
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string Join(const std::string& root, const std::string& path) {
  if (root.empty() || root == "/") return path;
  return absl::StrCat(absl::StripSuffix(root, "/"), path);
}

struct Mount {
  std::string root;         // the cgroup path mounted there
  std::string mount_point;  // where
};

// The cgroup v2 mount and the v1 mount holding the cpu controller, from mountinfo.
void FindMounts(const std::string& mountinfo, std::optional<Mount>* v2, std::optional<Mount>* v1_cpu) {
  for (absl::string_view line : absl::StrSplit(mountinfo, '\n', absl::SkipEmpty())) {
    // "36 25 0:30 / /sys/fs/cgroup/cpu rw,nosuid - cgroup cgroup rw,cpu,cpuacct"
    const std::vector<absl::string_view> halves = absl::StrSplit(line, absl::MaxSplits(" - ", 1));
    if (halves.size() != 2) continue;
    const std::vector<absl::string_view> left = absl::StrSplit(halves[0], ' ', absl::SkipEmpty());
    const std::vector<absl::string_view> right = absl::StrSplit(halves[1], ' ', absl::SkipEmpty());
    if (left.size() < 5 || right.size() < 3) continue;
    Mount m{std::string(left[3]), std::string(left[4])};
    if (right[0] == "cgroup2") {
      if (!v2->has_value()) *v2 = m;
    } else if (right[0] == "cgroup") {
      for (absl::string_view option : absl::StrSplit(right[2], ',')) {
        if (option == "cpu" && !v1_cpu->has_value()) *v1_cpu = m;
      }
    }
  }
}

// The process's cgroup path for v2 ("0::/path") and for the v1 cpu controller
// ("4:cpu,cpuacct:/path").
void FindPaths(const std::string& cgroup, std::optional<std::string>* v2, std::optional<std::string>* v1_cpu) {
  for (absl::string_view line : absl::StrSplit(cgroup, '\n', absl::SkipEmpty())) {
    const std::vector<absl::string_view> parts = absl::StrSplit(line, absl::MaxSplits(':', 2));
    if (parts.size() != 3) continue;
    if (parts[0] == "0" && parts[1].empty()) {
      *v2 = std::string(parts[2]);
      continue;
    }
    for (absl::string_view controller : absl::StrSplit(parts[1], ',')) {
      if (controller == "cpu") *v1_cpu = std::string(parts[2]);
    }
  }
}

// The directory of `path` under `mount`, then each ancestor up to the mount point.
std::vector<std::string> Directories(const std::string& root, const Mount& mount, const std::string& path) {
  std::string relative = path;
  if (mount.root != "/" && absl::StartsWith(relative, mount.root)) {
    relative = relative.substr(mount.root.size());
  } else if (mount.root != "/") {
    relative = "";  // another namespace's path: only the mount point itself is known
  }
  std::vector<std::string> dirs;
  std::string rel(absl::StripSuffix(relative, "/"));
  for (;;) {
    dirs.push_back(Join(root, absl::StrCat(absl::StripSuffix(mount.mount_point, "/"), rel)));
    if (rel.empty()) break;
    const size_t slash = rel.rfind('/');
    rel = slash == std::string::npos ? "" : rel.substr(0, slash);
  }
  return dirs;
}

}  // namespace

std::optional<double> ParseCpuMax(const std::string& content) {
  const std::vector<absl::string_view> parts = absl::StrSplit(absl::StripAsciiWhitespace(content), ' ',
                                                              absl::SkipEmpty());
  if (parts.size() != 2 || parts[0] == "max") return std::nullopt;
  double quota = 0, period = 0;
  if (!absl::SimpleAtod(parts[0], &quota) || !absl::SimpleAtod(parts[1], &period)) return std::nullopt;
  if (quota <= 0 || period <= 0) return std::nullopt;
  return quota / period;
}

std::optional<double> ParseCfsQuota(const std::string& quota, const std::string& period) {
  double q = 0, p = 0;
  if (!absl::SimpleAtod(absl::StripAsciiWhitespace(quota), &q) ||
      !absl::SimpleAtod(absl::StripAsciiWhitespace(period), &p)) {
    return std::nullopt;
  }
  if (q <= 0 || p <= 0) return std::nullopt;  // -1: no quota
  return q / p;
}

UsableCpus DetectUsableCpus(const std::string& root, int affinity) {
  UsableCpus out;
  std::optional<Mount> v2_mount, v1_mount;
  std::optional<std::string> v2_path, v1_path;
  if (auto mountinfo = ReadFile(Join(root, "/proc/self/mountinfo"))) FindMounts(*mountinfo, &v2_mount, &v1_mount);
  if (auto cgroup = ReadFile(Join(root, "/proc/self/cgroup"))) FindPaths(*cgroup, &v2_path, &v1_path);

  std::string quota_source;
  auto consider = [&](double cpus, const std::string& source) {
    if (!out.quota_cpus.has_value() || cpus < *out.quota_cpus) {
      out.quota_cpus = cpus;
      quota_source = source;
    }
  };
  if (v2_mount && v2_path) {
    for (const std::string& dir : Directories(root, *v2_mount, *v2_path)) {
      const std::string file = absl::StrCat(dir, "/cpu.max");
      if (auto content = ReadFile(file)) {
        if (auto cpus = ParseCpuMax(*content)) {
          consider(*cpus, absl::StrCat("cgroup v2 ", file, " \"", absl::StripAsciiWhitespace(*content), "\""));
        }
      }
    }
  }
  if (v1_mount && v1_path) {
    for (const std::string& dir : Directories(root, *v1_mount, *v1_path)) {
      auto quota = ReadFile(absl::StrCat(dir, "/cpu.cfs_quota_us"));
      auto period = ReadFile(absl::StrCat(dir, "/cpu.cfs_period_us"));
      if (quota && period) {
        if (auto cpus = ParseCfsQuota(*quota, *period)) {
          consider(*cpus, absl::StrCat("cgroup v1 ", dir, " cfs_quota_us ", absl::StripAsciiWhitespace(*quota),
                                       " cfs_period_us ", absl::StripAsciiWhitespace(*period)));
        }
      }
    }
  }

  const int from_quota = out.quota_cpus ? std::max(1, static_cast<int>(std::floor(*out.quota_cpus + 1e-9))) : 0;
  if (from_quota > 0 && (affinity <= 0 || from_quota < affinity)) {
    out.count = from_quota;
    out.source = quota_source;
  } else if (affinity > 0) {
    out.count = affinity;
    out.source = "affinity mask";
  } else {
    out.count = 0;  // the caller decides
  }
  return out;
}

UsableCpus DetectUsableCpus() {
  int affinity = 0;
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) affinity = CPU_COUNT(&set);
  UsableCpus out = DetectUsableCpus("/", affinity);
  if (out.count <= 0) {
    out.count = std::max(1u, std::thread::hardware_concurrency());
    out.source = "hardware";
  }
  return out;
}

}  // namespace careserve
