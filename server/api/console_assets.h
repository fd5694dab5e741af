// The web console's static files (server/console/), built into care-server by
// cmake/embed_files.cmake.
#pragma once

#include <string_view>
#include <vector>

namespace careserve {

struct ConsoleAsset {
  const char* name;          // file name under server/console/, e.g. "console.js"
  const char* content_type;  // the Content-Type it is served with
  std::string_view body;
};

const std::vector<ConsoleAsset>& ConsoleAssets();

}  // namespace careserve
