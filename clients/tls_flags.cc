#include "clients/tls_flags.h"

#include <string>

#include "absl/flags/flag.h"
#include "server/common/tls.h"

ABSL_FLAG(bool, tls, false, "Connect over TLS (implied by the other --tls_* flags); trusts the system's CAs.");
ABSL_FLAG(std::string, tls_ca, "", "PEM CA bundle trusted for the server's certificate (TLS).");
ABSL_FLAG(std::string, tls_cert, "", "PEM client certificate for mutual TLS (with --tls_key).");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls_cert.");

namespace careserve {

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> ChannelCredentialsFromFlags() {
  return MakeChannelCredentials(
      {absl::GetFlag(FLAGS_tls_ca), absl::GetFlag(FLAGS_tls_cert), absl::GetFlag(FLAGS_tls_key), absl::GetFlag(FLAGS_tls)});
}

HttpTls HttpTlsFromFlags() {
  HttpTls tls{absl::GetFlag(FLAGS_tls), absl::GetFlag(FLAGS_tls_ca), absl::GetFlag(FLAGS_tls_cert),
              absl::GetFlag(FLAGS_tls_key)};
  tls.tls = tls.tls || !tls.ca.empty() || !tls.cert.empty() || !tls.key.empty();
  return tls;
}

}  // namespace careserve
