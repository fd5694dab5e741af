#include "server/api/open_streams.h"

#include <grpc/grpc.h>
#include <grpc/support/alloc.h>

#include <cstdint>
#include <regex>
#include <string>
#include <vector>

namespace careserve {
namespace {

// channelz answers in JSON (the proto3 JSON mapping: int64 as strings, zeros left out).
std::string Take(char* json) {
  std::string out = json != nullptr ? json : "";
  gpr_free(json);
  return out;
}

std::vector<int64_t> Ids(const std::string& json, const std::string& field) {
  std::vector<int64_t> ids;
  const std::regex re("\"" + field + "\"\\s*:\\s*\"?(\\d+)");
  for (auto it = std::sregex_iterator(json.begin(), json.end(), re); it != std::sregex_iterator(); ++it) {
    ids.push_back(std::stoll((*it)[1]));
  }
  return ids;
}

int64_t Count(const std::string& json, const std::string& field) {
  const std::vector<int64_t> values = Ids(json, field);
  return values.empty() ? 0 : values.front();
}

}  // namespace

int OpenServerStreams() {
  int64_t open = 0;
  for (int64_t server : Ids(Take(grpc_channelz_get_servers(0)), "serverId")) {
    for (int64_t socket : Ids(Take(grpc_channelz_get_server_sockets(server, 0, 0)), "socketId")) {
      const std::string json = Take(grpc_channelz_get_socket(socket));
      open += Count(json, "streamsStarted") - Count(json, "streamsSucceeded") - Count(json, "streamsFailed");
    }
  }
  return static_cast<int>(open);
}

}  // namespace careserve
