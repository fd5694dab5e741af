// The HTTP endpoint Prometheus scrapes: GET /metrics in the text exposition format,
// serialised by prometheus-cpp.
//
// Why not prometheus-cpp's Exposer: it runs on civetweb, whose worker threads are created
// with a small fixed stack; with LibTorch's libraries loaded, the static TLS alone is
// larger than that stack and pthread_create fails ("Cannot create first worker thread").
// This endpoint is a plain accept loop on one thread: a scrape is one short request.
#pragma once

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "prometheus/collectable.h"

namespace careserve {

class MetricsEndpoint {
 public:
  // Listens on host:port (port 0: any free port) and serves until destroyed.
  static absl::StatusOr<std::unique_ptr<MetricsEndpoint>> Start(
      const std::string& host, int port, std::vector<std::shared_ptr<prometheus::Collectable>> collectables);
  ~MetricsEndpoint();

  int port() const { return port_; }

 private:
  MetricsEndpoint(int fd, int stop_fd, int port, std::vector<std::shared_ptr<prometheus::Collectable>> collectables);
  void Loop();
  void Serve(int connection) const;
  std::string Scrape() const;

  const int listen_fd_;
  const int stop_fd_;  // an eventfd: written once, by the destructor
  const int port_;
  const std::vector<std::shared_ptr<prometheus::Collectable>> collectables_;
  std::thread thread_;
};

}  // namespace careserve
