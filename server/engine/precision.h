// A model's numeric precision as served: what config.json declares (carevision.export
// --precision) checked against the weights the graph holds, and whether this CPU has the
// instructions that make it fast.
#pragma once

#include <set>
#include <string>

#include "absl/status/statusor.h"

namespace careserve {

// The precisions config.json may declare.
bool IsKnownPrecision(const std::string& precision);

// `declared`: config.json's "precision" ("" when absent); `majority` and `types`: the graph's
// (TorchModel::precision, weight_types); ReadModelSpec has already refused a precision it
// does not know. Absent, the graph's majority type is served. A
// declared lower precision must be among the graph's weight types, and a declared fp32
// graph must hold no lower-precision weights: otherwise config.json and model.pt disagree.
absl::StatusOr<std::string> ServedPrecision(const std::string& declared, const std::string& majority,
                                            const std::set<std::string>& types);

// "" when `cpu_flags` (/proc/cpuinfo's names) include an instruction set that runs
// `precision` natively; else why it will run slowly. A bf16 model still loads and answers on
// such a CPU (LibTorch converts to fp32 around each operation): slower, not wrong.
std::string PrecisionNote(const std::string& precision, const std::set<std::string>& cpu_flags);

// The flags of the first processor in /proc/cpuinfo (empty if unreadable).
const std::set<std::string>& CpuFlags();

}  // namespace careserve
