// care-server end to end: TLS and mutual TLS.
#include "tests/cpp/integration/server_harness.h"

namespace careserve {
namespace {


// --- TLS: certificates made here with openssl ------------------------------------------

// A CA, a server certificate for localhost/127.0.0.1 and a client certificate it signed,
// and a second CA with a client certificate of its own (not trusted by the server).
struct Certificates {
  std::string dir;
  bool made = false;

  Certificates() {
    dir = ::testing::TempDir() + "/tls_test";
    const std::string script = R"(set -e
d=$1; rm -rf "$d"; mkdir -p "$d"; cd "$d"
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:prime256v1 -out "$1.key" 2>/dev/null; }
ca() { key $1; openssl req -x509 -new -key $1.key -out $1.pem -days 2 -subj "/CN=careserve test $1"; }
leaf() {  # name ca extensions
  key $1; openssl req -new -key $1.key -out $1.csr -subj "/CN=$1"
  printf "$3" > $1.ext
  openssl x509 -req -in $1.csr -CA $2.pem -CAkey $2.key -CAcreateserial -out $1.pem -days 2 -extfile $1.ext 2>/dev/null
}
ca ca; ca other_ca
leaf server ca "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
leaf client ca "extendedKeyUsage=clientAuth\n"
leaf stranger other_ca "extendedKeyUsage=clientAuth\n"
)";
    std::ofstream(dir + ".sh") << script;
    int status = 0;
    const std::string out = RunCommand("bash " + dir + ".sh " + dir + " 2>&1", &status);
    made = status == 0;
    EXPECT_TRUE(made) << out;
  }
  std::string Path(const std::string& name) const { return dir + "/" + name; }
};

// Classify over a channel with these credentials: the status.
grpc::Status ClassifyOver(int port, std::shared_ptr<grpc::ChannelCredentials> credentials,
                          const std::string& host = "localhost") {
  auto channel = grpc::CreateChannel(host + ":" + std::to_string(port), credentials);
  auto stub = v1::VisionService::NewStub(channel);
  v1::ClassifyRequest request;
  request.set_model("care_s0_cls");
  *request.mutable_image() = Raw64(1);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::ClassifyResponse response;
  grpc::Status status = stub->Classify(&context, request, &response);
  if (status.ok() && response.classes_size() != 5) return grpc::Status(StatusCode::INTERNAL, "no classes");
  return status;
}

std::shared_ptr<grpc::ChannelCredentials> Tls(const Certificates& c, const std::string& ca,
                                              const std::string& client = "") {
  grpc::SslCredentialsOptions options;
  options.pem_root_certs = ReadFile(c.Path(ca + ".pem"));
  if (!client.empty()) {
    options.pem_cert_chain = ReadFile(c.Path(client + ".pem"));
    options.pem_private_key = ReadFile(c.Path(client + ".key"));
  }
  return grpc::SslCredentials(options);
}

TEST(Tls, TheServerSpeaksTlsWithItsCertificateAndRefusesPlaintext) {
  Certificates c;
  ASSERT_TRUE(c.made);
  Server server;
  server.Start({"--tls_cert=" + c.Path("server.pem"), "--tls_key=" + c.Path("server.key")}, "tls_test");
  ASSERT_FALSE(::testing::Test::HasFatalFailure());
  EXPECT_NE(server.log().find("tls=tls"), std::string::npos) << server.log();
  EXPECT_TRUE(ClassifyOver(server.grpc_port(), Tls(c, "ca")).ok());
  EXPECT_TRUE(ClassifyOver(server.grpc_port(), Tls(c, "ca"), "127.0.0.1").ok());
  EXPECT_EQ(ClassifyOver(server.grpc_port(), grpc::InsecureChannelCredentials()).error_code(), StatusCode::UNAVAILABLE);
  EXPECT_EQ(ClassifyOver(server.grpc_port(), Tls(c, "other_ca")).error_code(), StatusCode::UNAVAILABLE)
      << "a client that does not trust the server's CA connected";
  // care-client's flags.
  int status = 0;
  const std::string out = RunCommand(Env("CARE_CLIENT") + " list --server=localhost:" +
                                         std::to_string(server.grpc_port()) + " --tls_ca=" + c.Path("ca.pem") + " 2>&1",
                                     &status);
  EXPECT_EQ(status, 0) << out;
  EXPECT_NE(out.find("care_s0_cls"), std::string::npos) << out;
  // The HTTP API (Open Inference Protocol) takes the same certificate: HTTPS only.
  const std::string url = "localhost:" + std::to_string(server.http_port()) + "/v2/health/ready";
  const std::string https = RunCommand("curl -sS --cacert " + c.Path("ca.pem") + " https://" + url + " 2>&1", &status);
  EXPECT_EQ(status, 0) << https;
  EXPECT_EQ(https, R"({"ready":true})");
  // The web console comes over HTTPS too, and its script asks relative URLs of that origin.
  const std::string console_url = "https://localhost:" + std::to_string(server.http_port());
  const std::string page = RunCommand("curl -sS --cacert " + c.Path("ca.pem") + " " + console_url + "/ 2>&1", &status);
  EXPECT_EQ(status, 0) << page;
  EXPECT_NE(page.find("<title>careserve"), std::string::npos) << page;
  const std::string index = RunCommand("curl -sS --cacert " + c.Path("ca.pem") + " -X POST " + console_url +
                                           "/v2/repository/index 2>&1",
                                       &status);
  EXPECT_NE(index.find("\"care_s0_cls\""), std::string::npos) << index;
  RunCommand("curl -sS --max-time 5 http://" + url + " 2>&1", &status);
  EXPECT_NE(status, 0) << "plain HTTP answered on the TLS port";
  RunCommand("curl -sS --cacert " + c.Path("other_ca.pem") + " https://" + url + " 2>&1", &status);
  EXPECT_NE(status, 0) << "a client that does not trust the server's CA connected over HTTPS";
  server.Signal(SIGTERM);
  EXPECT_EQ(server.WaitExit(std::chrono::seconds(20)), 0);
}

TEST(Tls, MutualTlsAdmitsOnlyClientsWithACertificateFromTheClientCa) {
  Certificates c;
  ASSERT_TRUE(c.made);
  Server server;
  server.Start({"--tls_cert=" + c.Path("server.pem"), "--tls_key=" + c.Path("server.key"),
                "--tls_client_ca=" + c.Path("ca.pem")},
               "mtls_test");
  ASSERT_FALSE(::testing::Test::HasFatalFailure());
  EXPECT_NE(server.log().find("tls=mutual_tls"), std::string::npos) << server.log();
  EXPECT_TRUE(ClassifyOver(server.grpc_port(), Tls(c, "ca", "client")).ok());
  EXPECT_EQ(ClassifyOver(server.grpc_port(), Tls(c, "ca")).error_code(), StatusCode::UNAVAILABLE)
      << "a client without a certificate got in";
  EXPECT_EQ(ClassifyOver(server.grpc_port(), Tls(c, "ca", "stranger")).error_code(), StatusCode::UNAVAILABLE)
      << "a client certificate from another CA got in";
  int status = 0;
  const std::string out = RunCommand(Env("CARE_BENCH") + " --server=localhost:" + std::to_string(server.grpc_port()) +
                                         " --tls_ca=" + c.Path("ca.pem") + " --tls_cert=" + c.Path("client.pem") +
                                         " --tls_key=" + c.Path("client.key") +
                                         " --task=classify --model=care_s0_cls --duration=0.5 --warmup=0"
                                         " --generate=64x64 --json 2>/dev/null",
                                     &status);
  EXPECT_EQ(status, 0) << out;
  EXPECT_NE(out.find("\"ok\": "), std::string::npos) << out;
  EXPECT_EQ(out.find("\"errors\": {\""), std::string::npos) << out;
  // HTTPS with client certificates as well.
  const std::string url = "https://localhost:" + std::to_string(server.http_port()) + "/v2/health/ready";
  const std::string with = RunCommand("curl -sS --cacert " + c.Path("ca.pem") + " --cert " + c.Path("client.pem") +
                                          " --key " + c.Path("client.key") + " " + url + " 2>&1",
                                      &status);
  EXPECT_EQ(status, 0) << with;
  EXPECT_EQ(with, R"({"ready":true})");
  RunCommand("curl -sS --cacert " + c.Path("ca.pem") + " " + url + " 2>&1", &status);
  EXPECT_NE(status, 0) << "an HTTPS client without a certificate got in";
  RunCommand("curl -sS --cacert " + c.Path("ca.pem") + " --cert " + c.Path("stranger.pem") + " --key " +
                 c.Path("stranger.key") + " " + url + " 2>&1",
             &status);
  EXPECT_NE(status, 0) << "an HTTPS client certificate from another CA got in";
}

TEST(Tls, IncompleteTlsFlagsStopTheServerWithTheReason) {
  int status = 0;
  const std::string out = RunCommand(Env("CARE_SERVER") + " --model_repository=" + Env("CARE_TEST_REPOSITORY") +
                                         " --tls_cert=/nonexistent.pem --port=0 --metrics_port=-1 --http_port=-1 2>&1",
                                     &status);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 2) << out;
  EXPECT_NE(out.find("TLS needs both --tls_cert and --tls_key"), std::string::npos) << out;
}


}  // namespace
}  // namespace careserve
