// The Open Inference Protocol (KServe v2) over HTTP/REST on --http_port: the protocol's
// routes with JSON bodies and the binary tensor data extension, served by cpp-httplib
// (Debian's libcpp-httplib) on a pool of handler threads. Each route is translated onto
// the same operations as the gRPC service (server/api/oip_service.h): an infer request
// becomes a ModelInferRequest and joins the model's batch queue like any other. A handler
// thread waits for its request's answer, and a keep-alive connection holds one between
// requests (until it idles for 5 s), so --http_threads bounds the connections served at
// once: a connection beyond them waits until one closes or idles out.
//
// Beyond the protocol's routes (docs/oip.md): the model repository extension's
// POST /v2/repository/index, GET /v2/models/{name}/config (the model's config.json as the
// server read it, with its labels), GET /v2/models[/{name}]/stats (request counts and the
// latency histogram, from the server's own metrics), and the web console at GET /.
#pragma once

#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "server/api/frontend.h"

namespace httplib {
class Server;
}

namespace careserve {

struct HttpOptions {
  std::string host = "0.0.0.0";
  int port = 8000;  // 0: any free port
  int threads = 128;
  // Largest request body (the JSON header and the binary data together).
  int64_t max_body_bytes = 32 << 20;
  // GET / serves the web console (server/console/), which uses only the routes below.
  bool console = true;
  // TLS: both set -> HTTPS; with client_ca, client certificates are required and verified.
  std::string tls_cert, tls_key, tls_client_ca;
};

// Status code of an error: 400 / 404 / 429 / 503 / 504 / 500.
int HttpStatusFor(absl::StatusCode code);

class HttpService {
 public:
  // Binds and starts serving; errors name what failed (port in use, unreadable TLS files).
  static absl::StatusOr<std::unique_ptr<HttpService>> Start(Frontend* frontend, const HttpOptions& options);
  ~HttpService();

  int port() const { return port_; }
  // Stops accepting; the requests being handled finish first. Idempotent.
  void Stop();

 private:
  HttpService() = default;

  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
  int port_ = 0;
};

}  // namespace careserve
