// Structured log lines in logfmt (`ts=... level=info msg="..." key=value`) on stderr:
// one line per event, easy to grep and to ship to Loki/Elasticsearch as is.
#pragma once

#include <initializer_list>
#include <string>
#include <utility>

#include "absl/strings/string_view.h"

namespace careserve {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

// Parses debug|info|warning|error; false if unknown.
bool ParseLogLevel(absl::string_view text, LogLevel* level);
void SetLogLevel(LogLevel level);
bool LogEnabled(LogLevel level);

using LogField = std::pair<absl::string_view, std::string>;

// Writes one line; values are quoted when they need it.
void Log(LogLevel level, absl::string_view msg, std::initializer_list<LogField> fields = {});

}  // namespace careserve
