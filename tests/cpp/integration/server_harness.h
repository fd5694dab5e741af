// The integration tests' harness: a real care-server process on a loopback port, serving a
// repository of real exported CARE-S0 models (tests/cpp/integration/make_test_repository.sh),
// called over gRPC like a user would; and helpers the suites share.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "care/vision/v1/vision.grpc.pb.h"
#include "google/protobuf/descriptor.pb.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "opencv2/imgcodecs.hpp"
#include "opencv2/imgproc.hpp"
#include "server/engine/torch_model.h"
#include "server/postprocess/classify.h"
#include "server/preprocess/image.h"
#include "server/preprocess/resize.h"
#include "server/repository/model_config.h"

namespace careserve {
namespace {

namespace v1 = care::vision::v1;
using grpc::StatusCode;

std::string Env(const char* name) {
  const char* value = std::getenv(name);
  return value == nullptr ? "" : value;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

// HTTP GET on loopback; the body.
std::string HttpGet(int port, const std::string& path) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return "";
  }
  const std::string request = "GET " + path + " HTTP/1.1\r\nHost: localhost\r\n\r\n";
  (void)!write(fd, request.data(), request.size());
  std::string response;
  char buffer[65536];
  for (ssize_t n; (n = read(fd, buffer, sizeof(buffer))) > 0;) response.append(buffer, n);
  close(fd);
  const size_t body = response.find("\r\n\r\n");
  return body == std::string::npos ? "" : response.substr(body + 4);
}

// The value of one sample of the exposition text; -1 if absent.
double Sample(const std::string& metrics, const std::string& series) {
  std::istringstream in(metrics);
  for (std::string line; std::getline(in, line);) {
    if (line.compare(0, series.size(), series) == 0 && line.size() > series.size() && line[series.size()] == ' ') {
      return std::stod(line.substr(series.size() + 1));
    }
  }
  return -1;
}

// A care-server process on loopback, started once for the whole suite.
class Server {
 public:
  // `flags` come after the defaults below (a flag given twice: the last one counts).
  void Start(const std::vector<std::string>& flags = {}, const std::string& log_name = "care_server_test") {
    const std::string binary = Env("CARE_SERVER");
    const std::string repository = Env("CARE_TEST_REPOSITORY");
    ASSERT_FALSE(binary.empty()) << "CARE_SERVER is not set (run through ctest)";
    log_path_ = ::testing::TempDir() + "/" + log_name + ".log";
    // Truncated before the fork: the log of an earlier run is never mistaken for this one's.
    const int log_fd = open(log_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    ASSERT_GE(log_fd, 0) << log_path_;
    std::vector<std::string> args = {binary, "--model_repository=" + repository, "--host=127.0.0.1", "--port=0",
                                     "--metrics_port=0", "--http_port=0", "--engine_runners=2", "--intra_op_threads=1",
                                     // Every lone batch on every core, whatever the warm-up measured.
                                     "--lone_batch_threads=" + std::to_string(std::max(1u, std::thread::hardware_concurrency())),
                                     "--drain_timeout=5s"};
    args.insert(args.end(), flags.begin(), flags.end());
    pid_ = fork();
    if (pid_ == 0) {
      dup2(log_fd, 2);
      std::vector<char*> argv;
      for (std::string& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(binary.c_str(), argv.data());
      _exit(127);
    }
    close(log_fd);
    // Wait for "msg=serving": every model loaded and warm.
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(180);
    std::smatch match;
    while (std::chrono::steady_clock::now() < give_up) {
      const std::string log = ReadFile(log_path_);
      static const std::regex listening("msg=listening grpc_port=(\\d+) metrics_port=(\\d+) http_port=(-?\\d+)");
      if (grpc_port_ == 0 && std::regex_search(log, match, listening)) {
        grpc_port_ = std::stoi(match[1]);
        metrics_port_ = std::stoi(match[2]);
        http_port_ = std::stoi(match[3]);
      }
      if (log.find("msg=serving") != std::string::npos) break;
      int status;
      ASSERT_EQ(waitpid(pid_, &status, WNOHANG), 0) << "care-server exited during startup:\n" << log;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    ASSERT_NE(grpc_port_, 0) << ReadFile(log_path_);
    ASSERT_NE(ReadFile(log_path_).find("msg=serving"), std::string::npos) << ReadFile(log_path_);
    channel_ = grpc::CreateChannel("127.0.0.1:" + std::to_string(grpc_port_), grpc::InsecureChannelCredentials());
  }

  // SIGTERM: the server drains and exits 0.
  int Stop() {
    if (pid_ <= 0) return -1;
    kill(pid_, SIGTERM);
    int status = 0;
    waitpid(pid_, &status, 0);
    pid_ = 0;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }

  void Signal(int signal) const { kill(pid_, signal); }
  pid_t pid() const { return pid_; }
  // Waits up to `timeout` for the process to exit: its exit code, or -1 if still running.
  int WaitExit(std::chrono::milliseconds timeout) {
    const auto give_up = std::chrono::steady_clock::now() + timeout;
    do {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = 0;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    } while (std::chrono::steady_clock::now() < give_up);
    return -1;
  }
  ~Server() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }

  std::shared_ptr<grpc::Channel> channel() const { return channel_; }
  int metrics_port() const { return metrics_port_; }
  int grpc_port() const { return grpc_port_; }
  int http_port() const { return http_port_; }
  std::string log() const { return ReadFile(log_path_); }

 private:
  pid_t pid_ = 0;
  std::string log_path_;
  int grpc_port_ = 0;
  int metrics_port_ = 0;
  int http_port_ = 0;
  std::shared_ptr<grpc::Channel> channel_;
};

// Real photos (Debian's python3-skimage samples), cut into different crops.
std::vector<cv::Mat> Photos() {
  std::vector<cv::Mat> photos;
  for (const char* name : {"astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png"}) {
    cv::Mat bgr = cv::imread(std::string("/usr/lib/python3/dist-packages/skimage/data/") + name, cv::IMREAD_COLOR);
    EXPECT_FALSE(bgr.empty()) << name;
    photos.push_back(bgr);
  }
  return photos;
}

// Image i of the concurrency test: its own crop of a photo, in one of the accepted forms.
v1::Image TestImage(const std::vector<cv::Mat>& photos, int i) {
  const cv::Mat& photo = photos[i % photos.size()];
  const int w = photo.cols / 2 + (i * 7) % (photo.cols / 3), h = photo.rows / 2 + (i * 11) % (photo.rows / 3);
  const int x = (i * 13) % (photo.cols - w), y = (i * 5) % (photo.rows - h);
  cv::Mat crop = photo(cv::Rect(x, y, w, h)).clone();
  v1::Image image;
  static const char* kFormats[] = {".png", ".jpg", ".bmp", ".webp", ".tiff", "raw"};
  const std::string format = kFormats[i % 6];
  if (format == "raw") {
    image.mutable_raw()->set_width(crop.cols);
    image.mutable_raw()->set_height(crop.rows);
    image.mutable_raw()->set_format(v1::BGR8);
    image.mutable_raw()->set_data(crop.data, crop.total() * crop.elemSize());
  } else {
    std::vector<uchar> bytes;
    EXPECT_TRUE(cv::imencode(format, crop, bytes));
    image.set_encoded(std::string(bytes.begin(), bytes.end()));
  }
  return image;
}

class ServerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    server_ = new Server();
    server_->Start();
  }
  static void TearDownTestSuite() {
    const int code = server_->Stop();
    EXPECT_EQ(code, 0) << "care-server did not exit cleanly on SIGTERM:\n" << server_->log();
    const std::string log = server_->log();
    EXPECT_NE(log.find("msg=draining"), std::string::npos);
    EXPECT_NE(log.find("msg=stopped"), std::string::npos);
    delete server_;
  }
  void SetUp() override {
    if (HasFatalFailure() || server_->channel() == nullptr) GTEST_SKIP() << "the server did not start";
    stub_ = v1::VisionService::NewStub(server_->channel());
  }

  static Server* server_;
  std::unique_ptr<v1::VisionService::Stub> stub_;
};

Server* ServerTest::server_ = nullptr;

// A raw 64x64 image (no decoding: the work is the network's).
v1::Image Raw64(int seed) {
  cv::Mat pixels(64, 64, CV_8UC3);
  cv::randu(pixels, cv::Scalar::all(seed % 50), cv::Scalar::all(200 + seed % 50));
  v1::Image image;
  image.mutable_raw()->set_width(64);
  image.mutable_raw()->set_height(64);
  image.mutable_raw()->set_format(v1::BGR8);
  image.mutable_raw()->set_data(pixels.data, pixels.total() * pixels.elemSize());
  return image;
}

// Requests sent asynchronously, and their outcomes.
struct Burst {
  std::vector<v1::ClassifyRequest> requests;
  std::vector<v1::ClassifyResponse> responses;
  std::vector<grpc::ClientContext> contexts;
  std::vector<grpc::Status> statuses;
  absl::Mutex mu;
  int done = 0;

  Burst(v1::VisionService::Stub* stub, int n, const std::string& model, const std::vector<v1::Image>& images)
      : requests(n), responses(n), contexts(n), statuses(n) {
    for (int i = 0; i < n; ++i) {
      requests[i].set_model(model);
      *requests[i].mutable_image() = images[i % images.size()];
      stub->async()->Classify(&contexts[i], &requests[i], &responses[i], [this, i](grpc::Status status) {
        absl::MutexLock lock(&mu);
        statuses[i] = std::move(status);
        ++done;
      });
    }
  }
  void Wait() {
    absl::MutexLock lock(&mu);
    mu.Await(absl::Condition(+[](Burst* b) { return b->done == static_cast<int>(b->requests.size()); }, this));
  }
  int Count(StatusCode code) {
    int n = 0;
    for (const grpc::Status& s : statuses) n += s.error_code() == code;
    return n;
  }
};

// Output of a command; its exit status in *status.
std::string RunCommand(const std::string& command, int* status) {
  std::string out;
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return out;
  char buffer[4096];
  for (size_t n; (n = fread(buffer, 1, sizeof(buffer), pipe)) > 0;) out.append(buffer, n);
  *status = pclose(pipe);
  return out;
}

grpc::health::v1::HealthCheckResponse::ServingStatus Health(const std::shared_ptr<grpc::Channel>& channel,
                                                            const std::string& service) {
  auto health = grpc::health::v1::Health::NewStub(channel);
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(service);
  grpc::health::v1::HealthCheckResponse response;
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
  if (!health->Check(&context, request, &response).ok()) return grpc::health::v1::HealthCheckResponse::UNKNOWN;
  return response.status();
}

// Polls the server's care_inflight_requests for care_s0_cls until it holds `at_least`
// requests (or 60 s went by): the most it was seen holding. Time-bound, not count-bound:
// on a cold machine the burst's uploads alone can take seconds.
double WaitUntilHeld(const Server& server, double at_least) {
  const std::string inflight = R"(care_inflight_requests{model="care_s0_cls"})";
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  double most = 0;
  while (most < at_least && std::chrono::steady_clock::now() < give_up) {
    most = std::max(most, Sample(HttpGet(server.metrics_port(), "/metrics"), inflight));
  }
  return most;
}

// The server's CPU time so far (user + system), in seconds.
double CpuSeconds(pid_t pid) {
  const std::string stat = ReadFile("/proc/" + std::to_string(pid) + "/stat");
  std::vector<std::string> fields = absl::StrSplit(stat.substr(stat.rfind(')') + 2), ' ');
  return (std::stod(fields[11]) + std::stod(fields[12])) / sysconf(_SC_CLK_TCK);
}

// --- Open Inference Protocol suites (oip_test, http_test) --------------------------

std::string Png(const cv::Mat& bgr) {
  std::vector<uchar> bytes;
  EXPECT_TRUE(cv::imencode(".png", bgr, bytes));
  return std::string(bytes.begin(), bytes.end());
}

// Raw BYTES contents: each element a 4-byte little-endian length, then its bytes.
std::string LengthPrefixed(const std::vector<std::string>& elements) {
  std::string raw;
  for (const std::string& e : elements) {
    const uint32_t n = static_cast<uint32_t>(e.size());
    for (int k = 0; k < 4; ++k) raw.push_back(static_cast<char>((n >> (8 * k)) & 0xff));
    raw += e;
  }
  return raw;
}

// The elements of raw BYTES contents.
std::vector<std::string> SplitLengthPrefixed(const std::string& raw) {
  std::vector<std::string> elements;
  for (size_t at = 0; at + 4 <= raw.size();) {
    const auto* p = reinterpret_cast<const unsigned char*>(raw.data() + at);
    const uint32_t n = p[0] | (p[1] << 8) | (p[2] << 16) | (static_cast<uint32_t>(p[3]) << 24);
    elements.push_back(raw.substr(at + 4, n));
    at += 4 + n;
  }
  return elements;
}

v1::Image Encoded(const std::string& bytes) {
  v1::Image image;
  image.set_encoded(bytes);
  return image;
}

// Crops of the photos, of different sizes.
std::vector<cv::Mat> Crops(int n) {
  const std::vector<cv::Mat> photos = Photos();
  std::vector<cv::Mat> crops;
  for (int i = 0; i < n; ++i) {
    const cv::Mat& photo = photos[i % photos.size()];
    crops.push_back(photo(cv::Rect(i * 9, i * 5, photo.cols / 2 + i * 17, photo.rows / 2 + i * 3)).clone());
  }
  return crops;
}


}  // namespace
}  // namespace careserve
