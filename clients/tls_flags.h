// The TLS flags of care-client and care-bench (--tls, --tls_ca, --tls_cert, --tls_key),
// defined once.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "grpcpp/security/credentials.h"

namespace careserve {

// Plaintext unless a --tls* flag is given; TLS, mutual with --tls_cert and --tls_key.
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> ChannelCredentialsFromFlags();

// The same flags for an HTTP client: HTTPS when `tls`.
struct HttpTls {
  bool tls = false;
  std::string ca, cert, key;
};
HttpTls HttpTlsFromFlags();

}  // namespace careserve
