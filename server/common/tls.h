// gRPC credentials from PEM files: TLS and mutual TLS for care-server, and the matching
// client side for care-client and care-bench. Empty paths mean plaintext (local use).
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/security/server_credentials.h"

namespace careserve {

struct ServerTls {
  std::string cert;       // PEM certificate chain of the server
  std::string key;        // PEM private key of the server
  std::string client_ca;  // PEM CA bundle: when set, clients must present a certificate it signed
};

// Plaintext when `tls` is all empty; otherwise TLS (cert and key both required), mutual
// when client_ca is set. Errors name the flag and file.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(const ServerTls& tls);
// "plaintext", "tls" or "mutual_tls", for the log.
const char* ServerTlsMode(const ServerTls& tls);

struct ClientTls {
  std::string ca;    // PEM CA bundle trusted for the server (empty with TLS: the system's roots)
  std::string cert;  // PEM client certificate chain, for mutual TLS
  std::string key;   // its private key
  bool enabled = false;
};

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> MakeChannelCredentials(const ClientTls& tls);

}  // namespace careserve
