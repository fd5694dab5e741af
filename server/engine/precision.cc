#include "server/engine/precision.h"

#include <fstream>
#include <map>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace careserve {
namespace {

// Instruction sets any one of which runs the precision natively in oneDNN.
const std::map<std::string, std::vector<std::string>>& FastWith() {
  static const auto* kFastWith = new std::map<std::string, std::vector<std::string>>{
      {"bf16", {"avx512_bf16", "amx_bf16"}}, {"int8", {"avx512_vnni", "avx_vnni", "amx_int8"}}};
  return *kFastWith;
}

}  // namespace

bool IsKnownPrecision(const std::string& precision) {
  return precision == "fp32" || precision == "bf16" || precision == "int8";
}

absl::StatusOr<std::string> ServedPrecision(const std::string& declared, const std::string& majority,
                                            const std::set<std::string>& types) {
  if (declared.empty()) return majority;
  const std::string found = types.empty() ? "none" : absl::StrJoin(types, ", ");
  if (declared == "fp32") {
    for (const std::string& lower : {"bf16", "fp16", "int8"}) {
      if (types.count(lower)) {
        return absl::InvalidArgumentError(absl::StrCat("config.json says precision fp32 but model.pt holds ", lower,
                                                       " weights (found: ", found, ")"));
      }
    }
  } else if (!types.count(declared)) {
    return absl::InvalidArgumentError(absl::StrCat("config.json says precision ", declared, " but model.pt holds no ",
                                                   declared, " weights (found: ", found, ")"));
  }
  return declared;
}

std::string PrecisionNote(const std::string& precision, const std::set<std::string>& cpu_flags) {
  auto it = FastWith().find(precision);
  if (it == FastWith().end()) return "";
  for (const std::string& flag : it->second) {
    if (cpu_flags.count(flag)) return "";
  }
  return absl::StrCat("this CPU lacks ", absl::StrJoin(it->second, " and "), ": ", precision,
                      " is emulated, likely slower than fp32");
}

const std::set<std::string>& CpuFlags() {
  static const std::set<std::string>* kFlags = [] {
    auto* flags = new std::set<std::string>;
    std::ifstream in("/proc/cpuinfo");
    std::string line;
    while (std::getline(in, line)) {
      if (!absl::StartsWith(line, "flags")) continue;
      const size_t colon = line.find(':');
      if (colon == std::string::npos) continue;
      for (absl::string_view flag : absl::StrSplit(line.substr(colon + 1), ' ', absl::SkipEmpty())) {
        flags->insert(std::string(flag));
      }
      break;
    }
    return flags;
  }();
  return *kFlags;
}

}  // namespace careserve
