// care-server end to end: a real server process on a loopback port, serving a repository
// of real exported CARE-S0 models (tests/cpp/integration/make_test_repository.sh), called
// over gRPC like a user would.
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
                                     "--metrics_port=0", "--engine_runners=2", "--intra_op_threads=1",
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
      static const std::regex listening("msg=listening grpc_port=(\\d+) metrics_port=(\\d+)");
      if (grpc_port_ == 0 && std::regex_search(log, match, listening)) {
        grpc_port_ = std::stoi(match[1]);
        metrics_port_ = std::stoi(match[2]);
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
  std::string log() const { return ReadFile(log_path_); }

 private:
  pid_t pid_ = 0;
  std::string log_path_;
  int grpc_port_ = 0;
  int metrics_port_ = 0;
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

TEST_F(ServerTest, ConcurrentClassifyCallsGetTheirOwnImagesLogits) {
  constexpr int kCalls = 64;
  const std::vector<cv::Mat> photos = Photos();
  std::vector<v1::ClassifyRequest> requests(kCalls);
  for (int i = 0; i < kCalls; ++i) {
    requests[i].set_model("care_s0_cls");
    requests[i].set_top_k(1000);
    *requests[i].mutable_image() = TestImage(photos, i);
  }
  const std::string metrics_before = HttpGet(server_->metrics_port(), "/metrics");

  // All 64 at once, on gRPC's callback client API.
  std::vector<v1::ClassifyResponse> responses(kCalls);
  std::vector<grpc::Status> statuses(kCalls);
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
  absl::Mutex mu;
  int done = 0;
  for (int i = 0; i < kCalls; ++i) {
    contexts.push_back(std::make_unique<grpc::ClientContext>());
    contexts.back()->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
    stub_->async()->Classify(contexts.back().get(), &requests[i], &responses[i], [&, i](grpc::Status status) {
      absl::MutexLock lock(&mu);
      statuses[i] = std::move(status);
      ++done;
    });
  }
  {
    absl::MutexLock lock(&mu);
    mu.Await(absl::Condition(
        +[](int* d) { return *d == kCalls; }, &done));
  }

  // The reference: each image alone through the same TorchScript file (not optimised),
  // preprocessed by the pipeline the reference tests check against Python/OpenCV.
  const std::string repository = Env("CARE_TEST_REPOSITORY");
  ConfigureTorch(2, 1);
  EngineOptions plain;
  plain.optimize = false;
  auto model = TorchModel::Load(repository + "/care_s0_cls/1/model.pt", plain);
  ASSERT_TRUE(model.ok()) << model.status();
  auto spec = ReadModelSpec(repository + "/care_s0_cls");
  ASSERT_TRUE(spec.ok()) << spec.status();
  std::vector<std::vector<float>> expected(kCalls, std::vector<float>(1000));
  std::vector<float> input(3 * 64 * 64);
  for (int i = 0; i < kCalls; ++i) {
    // The served pipeline, reduced-size JPEG decoding included (its tolerance against
    // decoding every pixel is image_test's).
    auto decoded = DecodeForInput(requests[i].image(), DecodeLimits{}, spec->input);
    ASSERT_TRUE(decoded.ok()) << decoded.status();
    NormalizeInto(ResizeForInput(decoded->rgb, spec->input, decoded->source_width, decoded->source_height),
                  spec->input, input.data());
    auto outputs = (*model)->Run(input.data(), 1, 64, 64);
    ASSERT_TRUE(outputs.ok()) << outputs.status();
    for (const ClassScore& c : SoftmaxTopK(outputs->tensors[0].f32(), 1000, 1000)) expected[i][c.index] = c.score;
  }

  // Relative distance between a response's probabilities and a reference's.
  auto distance = [&](int response, int reference) {
    double worst = 0;
    for (const v1::Classification& c : responses[response].classes()) {
      const double e = expected[reference][c.index()];
      worst = std::max(worst, std::abs(c.score() - e) / e);
    }
    return worst;
  };
  constexpr double kTolerance = 1e-4;  // batched + optimised vs alone + plain TorchScript
  for (int i = 0; i < kCalls; ++i) {
    ASSERT_TRUE(statuses[i].ok()) << i << ": " << statuses[i].error_message();
    ASSERT_EQ(responses[i].classes_size(), 1000);
    EXPECT_EQ(responses[i].model(), "care_s0_cls");
    EXPECT_EQ(responses[i].model_version(), 1);
    EXPECT_LT(distance(i, i), kTolerance) << "request " << i << " did not get its own image's answer";
    for (int j = 0; j < kCalls; ++j) {
      // Every other image's answer is far off: a mix-up could not hide within the tolerance.
      if (j != i) EXPECT_GT(distance(i, j), 100 * kTolerance) << i << " vs " << j;
    }
  }

  // Batches of more than one request really formed, and ran exactly these requests.
  const std::string metrics = HttpGet(server_->metrics_port(), "/metrics");
  const std::string model_label = "{model=\"care_s0_cls\"}";
  auto delta = [&](const std::string& series) {
    return Sample(metrics, series) - std::max(0.0, Sample(metrics_before, series));
  };
  const double batches = delta("care_batch_size_count" + model_label);
  const double singles = delta("care_batch_size_bucket{model=\"care_s0_cls\",le=\"1\"}");
  const double images = delta("care_batch_size_sum" + model_label);
  EXPECT_EQ(images, kCalls);
  EXPECT_GT(batches, 0);
  EXPECT_LT(batches, kCalls) << "no batch held more than one request";
  EXPECT_LT(singles, batches);
  EXPECT_EQ(delta("care_requests_total{code=\"OK\",method=\"Classify\",model=\"care_s0_cls\"}"), kCalls);
}

// libgomp and OpenCV read these when they are loaded, so the server re-executes itself with
// them set: OpenCV's decoders then refuse images over --max_image_pixels (default 40M) from
// their headers, also where the server's own header checks do not look (without it OpenCV's
// cap is 2^30 pixels, 3 GiB of colour pixels).
// Settings that libraries read only when loaded (care-server re-executes itself with them).
TEST_F(ServerTest, TheServerRunsWithOpenCvsPixelCapOpenMpsSpinCountAndTcmallocsReleaseRateInItsEnvironment) {
  const std::string environ = ReadFile("/proc/" + std::to_string(server_->pid()) + "/environ");
  std::vector<std::string> variables = absl::StrSplit(environ, '\0');
  EXPECT_NE(std::find(variables.begin(), variables.end(), "OPENCV_IO_MAX_IMAGE_PIXELS=40000000"), variables.end());
  EXPECT_NE(std::find(variables.begin(), variables.end(), "GOMP_SPINCOUNT=2000"), variables.end());
  // Freed pages kept, not faulted in again by the next batch (the test models are too small
  // to show it; docs/service.md, Memory, has the measurement).
  EXPECT_NE(std::find(variables.begin(), variables.end(), "TCMALLOC_RELEASE_RATE=0"), variables.end());
}

// LibTorch's matrix products run on OpenBLAS's OpenMP build (the runners' own threads), not
// on the system's usual pthread build, whose idle workers spin between batches.
TEST_F(ServerTest, TheServerRunsOpenBlassOpenMpBuildNotThePthreadOne) {
  const std::string maps = ReadFile("/proc/" + std::to_string(server_->pid()) + "/maps");
  EXPECT_NE(maps.find("/openblas-openmp/libopenblas"), std::string::npos) << maps;
  EXPECT_EQ(maps.find("/openblas-pthread/"), std::string::npos) << maps;
  EXPECT_EQ(maps.find("/blas/libblas.so"), std::string::npos) << maps;  // the reference BLAS
  // And the startup log says which BLAS it is, as OpenBLAS itself reports it.
  EXPECT_NE(server_->log().find("blas=\"openblas-openmp /"), std::string::npos) << server_->log();
}

// The server re-executes itself at start (GOMP_SPINCOUNT, TCMALLOC_RELEASE_RATE); the
// process must still be called care-server (`pidof care-server`, `top`, process exporters
// go by that name), and its own threads carry names that say what they do.
TEST_F(ServerTest, ItsProcessAndItsThreadsAreNamedForTopAndPidof) {
  const std::string proc = "/proc/" + std::to_string(server_->pid());
  EXPECT_EQ(ReadFile(proc + "/comm"), "care-server\n");
  std::map<std::string, int> threads;
  for (const auto& task : std::filesystem::directory_iterator(proc + "/task")) {
    std::string name = ReadFile(task.path().string() + "/comm");
    if (!name.empty() && name.back() == '\n') name.pop_back();
    ++threads[name];
  }
  std::string all;
  for (const auto& [name, n] : threads) all += absl::StrCat(name, " x", n, "\n");
  EXPECT_GE(threads["care-runner-0"], 1) << all;
  EXPECT_GE(threads["care-runner-1"], 1) << all;
  EXPECT_GE(threads["care-preprocess"], 1) << all;
  EXPECT_EQ(threads["care-metrics"], 1) << all;
  // Every other thread is the main one or gRPC's (which names its own).
  EXPECT_EQ(threads["exe"], 0) << all;
}

TEST_F(ServerTest, ARequestAloneRunsOnEveryCore) {
  // --engine_runners=2 --intra_op_threads=1: a batch runs on one core, unless nothing else
  // is running or waiting; then it gets every core (--lone_batch_threads' default).
  const std::string lone = absl::StrFormat(R"(care_batches_total{model="care_s0_cls",threads="%d"})",
                                           std::max(1u, std::thread::hardware_concurrency()));
  const std::string before = HttpGet(server_->metrics_port(), "/metrics");
  constexpr int kCalls = 5;
  for (int i = 0; i < kCalls; ++i) {
    v1::ClassifyRequest request;
    request.set_model("care_s0_cls");
    *request.mutable_image() = TestImage(Photos(), i);
    grpc::ClientContext context;
    v1::ClassifyResponse response;
    ASSERT_TRUE(stub_->Classify(&context, request, &response).ok());
  }
  const std::string after = HttpGet(server_->metrics_port(), "/metrics");
  EXPECT_EQ(Sample(after, lone) - std::max(0.0, Sample(before, lone)), kCalls) << after;
}

TEST_F(ServerTest, BadRequestsGetTheContractsStatusCodes) {
  v1::Image good = TestImage(Photos(), 0);
  v1::Image garbage;
  garbage.set_encoded("definitely not an image");
  v1::Image truncated = good;
  truncated.set_encoded(good.encoded().substr(0, good.encoded().size() / 3));

  struct Case {
    const char* what;
    std::string model;
    v1::Image image;
    int top_k;
    int64_t version;
    StatusCode code;
    const char* message;
  };
  const std::vector<Case> cases = {
      {"undecodable bytes", "care_s0_cls", garbage, 0, 0, StatusCode::INVALID_ARGUMENT, "is not a JPEG, PNG"},
      {"truncated PNG", "care_s0_cls", truncated, 0, 0, StatusCode::INVALID_ARGUMENT, "cannot decode the PNG"},
      {"no image", "care_s0_cls", v1::Image(), 0, 0, StatusCode::INVALID_ARGUMENT, "image is missing"},
      {"top_k above the classes", "care_s0_cls", good, 1001, 0, StatusCode::INVALID_ARGUMENT,
       "top_k must be between 0 and 1000"},
      {"negative top_k", "care_s0_cls", good, -1, 0, StatusCode::INVALID_ARGUMENT, "got -1"},
      {"unknown model", "no_such_model", good, 0, 0, StatusCode::NOT_FOUND,
       "model \"no_such_model\" is not in the repository"},
      {"unknown version", "care_s0_cls", good, 0, 7, StatusCode::NOT_FOUND, "has no version 7"},
      {"detection model", "care_s0_det", good, 0, 0, StatusCode::FAILED_PRECONDITION,
       "is a detection model, not a classification one; call Detect"},
      {"model that failed to load", "broken_model", good, 0, 0, StatusCode::FAILED_PRECONDITION,
       "failed to load: "},
      {"no default among two classifiers", "", good, 0, 0, StatusCode::NOT_FOUND,
       "serves 2 classification models (care_s0_cls, care_s0_queue1)"},
  };
  for (const Case& c : cases) {
    v1::ClassifyRequest request;
    request.set_model(c.model);
    request.set_top_k(c.top_k);
    request.set_model_version(c.version);
    *request.mutable_image() = c.image;
    grpc::ClientContext context;
    v1::ClassifyResponse response;
    const grpc::Status status = stub_->Classify(&context, request, &response);
    EXPECT_EQ(status.error_code(), c.code) << c.what << ": " << status.error_message();
    EXPECT_NE(status.error_message().find(c.message), std::string::npos) << c.what << ": " << status.error_message();
  }

  // Detect and Segment: wrong task, and out-of-range detection parameters.
  {
    grpc::ClientContext context;
    v1::DetectRequest request;
    request.set_model("care_s0_cls");
    *request.mutable_image() = good;
    v1::DetectResponse response;
    EXPECT_EQ(stub_->Detect(&context, request, &response).error_code(), StatusCode::FAILED_PRECONDITION);
  }
  {
    grpc::ClientContext context;
    v1::SegmentRequest request;
    request.set_model("care_s0_det");
    *request.mutable_image() = good;
    v1::SegmentResponse response;
    const grpc::Status status = stub_->Segment(&context, request, &response);
    EXPECT_EQ(status.error_code(), StatusCode::FAILED_PRECONDITION);
    EXPECT_NE(status.error_message().find("call Detect"), std::string::npos) << status.error_message();
  }
  struct BadDetect {
    float score, iou;
    int max_detections;
    const char* message;
  };
  for (const BadDetect& bad : {BadDetect{-0.1f, 0, 0, "score_threshold must be in [0, 1]"},
                               BadDetect{1.5f, 0, 0, "score_threshold must be in [0, 1]"},
                               BadDetect{std::nanf(""), 0, 0, "score_threshold must be in [0, 1]"},
                               BadDetect{0, 1.5f, 0, "iou_threshold must be in [0, 1] (0: the model's 0.5), got 1.5"},
                               BadDetect{0, 0, -1, "max_detections must be in [0, 10000]"},
                               BadDetect{0, 0, 10001, "max_detections must be in [0, 10000]"}}) {
    grpc::ClientContext context;
    v1::DetectRequest request;  // the only detection model is the default
    *request.mutable_image() = good;
    request.set_score_threshold(bad.score);
    request.set_iou_threshold(bad.iou);
    request.set_max_detections(bad.max_detections);
    v1::DetectResponse response;
    const grpc::Status status = stub_->Detect(&context, request, &response);
    EXPECT_EQ(status.error_code(), StatusCode::INVALID_ARGUMENT) << bad.message;
    EXPECT_NE(status.error_message().find(bad.message), std::string::npos) << status.error_message();
  }
  {
    grpc::ClientContext context;
    v1::SegmentRequest request;  // the default segmentation model, a bad image
    request.mutable_image()->set_encoded("GIF89a not supported");
    v1::SegmentResponse response;
    EXPECT_EQ(stub_->Segment(&context, request, &response).error_code(), StatusCode::INVALID_ARGUMENT);
  }

  // And the server keeps serving.
  v1::ClassifyRequest request;
  request.set_model("care_s0_cls");
  *request.mutable_image() = good;
  grpc::ClientContext context;
  v1::ClassifyResponse response;
  ASSERT_TRUE(stub_->Classify(&context, request, &response).ok());
  EXPECT_EQ(response.classes_size(), 5);  // top_k 0 -> 5
}

// tests/data/bad_inputs (made by tests/tools/make_bad_inputs.py): every case gets its
// status code and a message saying what was wrong, the valid oddities are answered, an
// oversized message is refused by gRPC, and afterwards a good request gets the same answer
// as before the corpus.
TEST_F(ServerTest, TheBadInputCorpusGetsItsStatusCodesAndTheServerKeepsServing) {
  const std::string dir = std::string(CARE_SOURCE_DIR) + "/tests/data/bad_inputs/";
  google::protobuf::Struct manifest;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(ReadFile(dir + "manifest.json"), &manifest).ok());
  const auto& cases = manifest.fields().at("cases").list_value().values();
  ASSERT_GE(cases.size(), 25);

  auto classify = [&](const v1::Image& image, int top_k, v1::ClassifyResponse* response) {
    v1::ClassifyRequest request;
    request.set_model("care_s0_cls");
    request.set_top_k(top_k);
    *request.mutable_image() = image;
    grpc::ClientContext context;
    return stub_->Classify(&context, request, response);
  };
  v1::Image good;
  good.set_encoded(ReadFile(dir + "good.jpg"));
  v1::ClassifyResponse before;
  ASSERT_TRUE(classify(good, 5, &before).ok());

  auto number = [](const google::protobuf::Value& v) {
    if (v.kind_case() == google::protobuf::Value::kStringValue) return std::stod(v.string_value());  // nan, inf
    return v.number_value();
  };
  const std::map<StatusCode, std::string> names = {
      {StatusCode::OK, "OK"}, {StatusCode::INVALID_ARGUMENT, "INVALID_ARGUMENT"},
      {StatusCode::RESOURCE_EXHAUSTED, "RESOURCE_EXHAUSTED"}, {StatusCode::NOT_FOUND, "NOT_FOUND"}};
  int answered_ok = 0;
  for (const auto& value : cases) {
    const auto& c = value.struct_value().fields();
    const auto& fields = c.at("request").struct_value().fields();
    const std::string what = c.at("name").string_value() + (c.count("case") ? " " + c.at("case").string_value() : "");
    v1::Image image;
    if (fields.count("raw")) {
      const auto& raw = fields.at("raw").struct_value().fields();
      image.mutable_raw()->set_width(static_cast<int>(raw.at("width").number_value()));
      image.mutable_raw()->set_height(static_cast<int>(raw.at("height").number_value()));
      v1::PixelFormat format;
      if (raw.at("format").kind_case() == google::protobuf::Value::kStringValue) {
        ASSERT_TRUE(v1::PixelFormat_Parse(raw.at("format").string_value(), &format)) << what;
      } else {
        format = static_cast<v1::PixelFormat>(static_cast<int>(raw.at("format").number_value()));
      }
      image.mutable_raw()->set_format(format);
      image.mutable_raw()->set_data(ReadFile(dir + c.at("name").string_value()));
    } else {
      image.set_encoded(ReadFile(dir + c.at("name").string_value()));
    }
    grpc::Status status;
    int classes = -1;
    if (c.at("rpc").string_value() == "Classify") {
      v1::ClassifyResponse response;
      status = classify(image, fields.count("top_k") ? static_cast<int>(fields.at("top_k").number_value()) : 0,
                        &response);
      classes = response.classes_size();
    } else {
      v1::DetectRequest request;
      *request.mutable_image() = image;
      if (fields.count("score_threshold")) request.set_score_threshold(number(fields.at("score_threshold")));
      if (fields.count("iou_threshold")) request.set_iou_threshold(number(fields.at("iou_threshold")));
      if (fields.count("max_detections")) request.set_max_detections(number(fields.at("max_detections")));
      grpc::ClientContext context;
      v1::DetectResponse response;
      status = stub_->Detect(&context, request, &response);
    }
    const auto name = names.find(status.error_code());
    EXPECT_EQ(name == names.end() ? std::to_string(status.error_code()) : name->second, c.at("code").string_value())
        << what << ": " << status.error_message();
    EXPECT_NE(status.error_message().find(c.at("message").string_value()), std::string::npos)
        << what << ": " << status.error_message();
    if (status.ok()) {
      EXPECT_EQ(classes, 5) << what;
      ++answered_ok;
    }
  }
  EXPECT_GE(answered_ok, 5);

  // A message over --max_message_bytes (32 MiB): refused by gRPC before the service reads it.
  {
    v1::Image huge;
    huge.set_encoded(std::string(33 << 20, 'x'));
    v1::ClassifyResponse response;
    const grpc::Status status = classify(huge, 0, &response);
    EXPECT_EQ(status.error_code(), StatusCode::RESOURCE_EXHAUSTED) << status.error_message();
    EXPECT_NE(status.error_message().find("larger than max"), std::string::npos) << status.error_message();
  }

  // Still serving, with the same answer as before.
  v1::ClassifyResponse after;
  ASSERT_TRUE(classify(good, 5, &after).ok());
  ASSERT_EQ(after.classes_size(), before.classes_size());
  for (int i = 0; i < after.classes_size(); ++i) {
    EXPECT_EQ(after.classes(i).index(), before.classes(i).index());
    EXPECT_EQ(after.classes(i).score(), before.classes(i).score());
  }
}

TEST_F(ServerTest, AFullQueueAnswersResourceExhaustedAtOnce) {
  // care_s0_queue1: batches of one, one request may wait. A burst of raw images (no
  // decoding to slow them) overflows it.
  constexpr int kCalls = 48;
  const std::vector<cv::Mat> photos = Photos();
  std::vector<v1::ClassifyRequest> requests(kCalls);
  for (int i = 0; i < kCalls; ++i) {
    requests[i].set_model("care_s0_queue1");
    *requests[i].mutable_image() = TestImage(photos, 6 * i + 5);  // raw
  }
  std::vector<v1::ClassifyResponse> responses(kCalls);
  std::vector<grpc::Status> statuses(kCalls);
  std::vector<grpc::ClientContext> contexts(kCalls);
  absl::Mutex mu;
  int done = 0;
  for (int i = 0; i < kCalls; ++i) {
    stub_->async()->Classify(&contexts[i], &requests[i], &responses[i], [&, i](grpc::Status status) {
      absl::MutexLock lock(&mu);
      statuses[i] = std::move(status);
      ++done;
    });
  }
  absl::MutexLock lock(&mu);
  mu.Await(absl::Condition(+[](int* d) { return *d == kCalls; }, &done));
  int ok = 0, exhausted = 0;
  for (const grpc::Status& status : statuses) {
    if (status.ok()) {
      ++ok;
    } else {
      EXPECT_EQ(status.error_code(), StatusCode::RESOURCE_EXHAUSTED) << status.error_message();
      EXPECT_NE(status.error_message().find("queue full: 1 requests already waiting"), std::string::npos)
          << status.error_message();
      ++exhausted;
    }
  }
  EXPECT_GT(exhausted, 0);
  EXPECT_GT(ok, 0);
}

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

TEST_F(ServerTest, OverloadIsRefusedAtOnceAndAdmittedRequestsKeepABoundedLatency) {
  // care-bench open loop at 3000 requests/s of 640x480 JPEGs for 4 s: several times what
  // the server can decode and compute here. What cannot be queued (care_s0_cls: 256) must
  // be refused at once, before decoding, so that the admitted requests wait at most about
  // one queue's worth of work and memory stays bounded.
  const std::string rss_series = "process_resident_memory_bytes";
  const double rss_before = Sample(HttpGet(server_->metrics_port(), "/metrics"), rss_series);
  int exit_status = 0;
  const std::string out =
      RunCommand(Env("CARE_BENCH") + " --server=127.0.0.1:" + std::to_string(server_->grpc_port()) +
              " --task=classify --model=care_s0_cls --rate=3000 --duration=4 --warmup=0 --generate=640x480 --json"
              " 2>/dev/null",
          &exit_status);
  ASSERT_EQ(exit_status, 0) << out;
  google::protobuf::Struct report;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(out, &report).ok()) << out;
  const auto& f = report.fields();
  const double ok = f.at("ok").number_value(), throughput = f.at("throughput_rps").number_value();
  const auto& errors = f.at("errors").struct_value().fields();
  double exhausted = 0;
  for (const auto& [code, count] : errors) {
    EXPECT_EQ(code, "RESOURCE_EXHAUSTED") << count.number_value() << " requests failed with " << code;
    if (code == "RESOURCE_EXHAUSTED") exhausted = count.number_value();
  }
  EXPECT_GT(ok, 0) << out;
  EXPECT_GT(exhausted, ok) << "not overloaded: " << out;
  // One queue's worth (256 queued or being decoded, plus two executors' batches of 16) at
  // the throughput measured in this run, twice over, plus half a second. Without admission
  // before decoding the backlog grows for the whole run (4 s at 3000/s).
  const double bound_ms = 2000.0 * (256 + 2 * 16) / std::max(throughput, 1.0) + 500;
  EXPECT_LT(f.at("latency_ms").struct_value().fields().at("p99").number_value(), bound_ms) << out;
  const double rss_after = Sample(HttpGet(server_->metrics_port(), "/metrics"), rss_series);
  EXPECT_LT(rss_after - rss_before, 256.0 * (1 << 20)) << "RSS " << rss_before << " -> " << rss_after;

  // And it still answers.
  v1::ClassifyRequest request;
  request.set_model("care_s0_cls");
  *request.mutable_image() = TestImage(Photos(), 1);
  grpc::ClientContext context;
  v1::ClassifyResponse response;
  EXPECT_TRUE(stub_->Classify(&context, request, &response).ok());
}

// care_s0_cls kept busy by a burst of 144 small raw images (nine full batches), and a
// channel of its own for one more request, already connected, so that the request reaches
// the server at once rather than behind the burst's bytes: it waits behind the burst.
class BehindABurst {
 public:
  // ~0.1 s of computing for care_s0_cls on this machine's two cores (~1200 img/s at batch 16):
  // with 48, a test request that reached the server among the burst rather than behind it
  // ran within its 30 ms deadline once in a clean-clone run.
  static constexpr int kBurst = 144;

  BehindABurst(const Server& server, v1::VisionService::Stub* stub) : metrics_port_(server.metrics_port()) {
    channel_ = grpc::CreateCustomChannel("127.0.0.1:" + std::to_string(server.grpc_port()),
                                         grpc::InsecureChannelCredentials(), grpc::ChannelArguments());
    EXPECT_TRUE(channel_->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(10)));
    own_stub_ = v1::VisionService::NewStub(channel_);
    before_ = HttpGet(metrics_port_, "/metrics");
    std::vector<v1::Image> images;
    for (int i = 0; i < kBurst; ++i) images.push_back(Raw64(i));
    burst_ = std::make_unique<Burst>(stub, kBurst, "care_s0_cls", images);
    // The test's own request goes out once the server has every burst request (accepted or
    // already answered), so that it queues behind all of them.
    const std::string ok = R"(care_requests_total{code="OK",method="Classify",model="care_s0_cls"})";
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    double received = 0;
    while (received < kBurst && std::chrono::steady_clock::now() < give_up) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
      const std::string now = HttpGet(metrics_port_, "/metrics");
      received = std::max(0.0, Sample(now, R"(care_inflight_requests{model="care_s0_cls"})")) +
                 std::max(0.0, Sample(now, ok)) - std::max(0.0, Sample(before_, ok));
    }
    EXPECT_GE(received, kBurst) << "the server never received the whole burst";
  }

  v1::VisionService::Stub* own_stub() { return own_stub_.get(); }

  // Once the burst is answered (all OK): waits until the server has counted one more
  // Classify of care_s0_cls answered with one of `codes` (it answers a dropped request when
  // an executor reaches it). Returns how many it counted and how many images it computed
  // since the start.
  std::pair<double, double> Dropped(const std::vector<const char*>& codes) {
    burst_->Wait();
    EXPECT_EQ(burst_->Count(StatusCode::OK), kBurst);
    std::string after;
    auto delta = [&](const std::string& series) {
      return std::max(0.0, Sample(after, series)) - std::max(0.0, Sample(before_, series));
    };
    double dropped = 0;
    for (int attempt = 0; attempt < 100 && dropped < 1; ++attempt) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      after = HttpGet(metrics_port_, "/metrics");
      dropped = 0;
      for (const char* code : codes) {
        dropped += delta(absl::StrFormat(R"(care_requests_total{code="%s",method="Classify",model="care_s0_cls"})", code));
      }
    }
    return {dropped, delta(R"(care_batch_size_sum{model="care_s0_cls"})")};
  }

 private:
  const int metrics_port_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::VisionService::Stub> own_stub_;
  std::string before_;
  std::unique_ptr<Burst> burst_;
};

TEST_F(ServerTest, ARequestWhoseDeadlinePassesInTheQueueIsDroppedNotComputed) {
  // The request gives up after 30 ms, while it waits behind the burst: it expires unrun.
  BehindABurst load(*server_, stub_.get());
  v1::ClassifyRequest request;
  request.set_model("care_s0_cls");
  *request.mutable_image() = Raw64(99);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(30));
  v1::ClassifyResponse response;
  EXPECT_EQ(load.own_stub()->Classify(&context, request, &response).error_code(), StatusCode::DEADLINE_EXCEEDED);
  const auto [dropped, computed] = load.Dropped({"DEADLINE_EXCEEDED", "CANCELLED"});
  EXPECT_EQ(dropped, 1) << "the server never answered the expired request";
  EXPECT_EQ(computed, BehindABurst::kBurst) << "the expired request was computed";
}

TEST_F(ServerTest, ARequestCancelledInTheQueueIsNeverComputed) {
  // The client cancels its request 20 ms after sending it, while it waits behind the burst.
  BehindABurst load(*server_, stub_.get());
  v1::ClassifyRequest request;
  request.set_model("care_s0_cls");
  *request.mutable_image() = Raw64(99);
  grpc::ClientContext context;
  v1::ClassifyResponse response;
  absl::Notification answered;
  grpc::Status status;
  load.own_stub()->async()->Classify(&context, &request, &response, [&](grpc::Status s) {
    status = std::move(s);
    answered.Notify();
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  context.TryCancel();
  answered.WaitForNotification();
  EXPECT_EQ(status.error_code(), StatusCode::CANCELLED);
  const auto [dropped, computed] = load.Dropped({"CANCELLED"});
  EXPECT_EQ(dropped, 1) << "the server never counted the cancelled request";
  EXPECT_EQ(computed, BehindABurst::kBurst) << "the cancelled request was computed";
}

// The dense references (tests/tools/dense_reference.py, run by the test fixture).
struct DenseReference {
  google::protobuf::Struct json;
  std::string dir;

  static DenseReference Load() {
    DenseReference r;
    r.dir = Env("CARE_TEST_REPOSITORY") + "_reference";
    EXPECT_TRUE(google::protobuf::util::JsonStringToMessage(ReadFile(r.dir + "/reference.json"), &r.json).ok())
        << r.dir;
    return r;
  }
  const google::protobuf::ListValue& images() const { return json.fields().at("images").list_value(); }
  double detect(const char* key) const { return json.fields().at("detect").struct_value().fields().at(key).number_value(); }
};

// Greedy match of the server's detections to the reference's: same class, same score
// within 1e-4, same box within 0.05 px. Returns what did not match.
std::vector<std::string> DetectionMismatches(const v1::DetectResponse& response,
                                             const google::protobuf::ListValue& reference) {
  std::vector<std::string> problems;
  std::vector<bool> used(response.detections_size(), false);
  for (const auto& value : reference.values()) {
    const auto& fields = value.struct_value().fields();
    const auto& box = fields.at("box").list_value();
    bool found = false;
    for (int i = 0; i < response.detections_size() && !found; ++i) {
      const v1::Detection& d = response.detections(i);
      if (used[i] || d.class_index() != fields.at("class_index").number_value() ||
          std::abs(d.score() - fields.at("score").number_value()) > 1e-4) {
        continue;
      }
      const double coords[4] = {d.box().x_min(), d.box().y_min(), d.box().x_max(), d.box().y_max()};
      double worst = 0;
      for (int k = 0; k < 4; ++k) worst = std::max(worst, std::abs(coords[k] - box.values(k).number_value()));
      if (worst <= 0.05) used[i] = found = true;
    }
    if (!found) {
      problems.push_back(absl::StrFormat("reference class %d score %.6f box [%.2f %.2f %.2f %.2f] not answered",
                                         static_cast<int>(fields.at("class_index").number_value()),
                                         fields.at("score").number_value(), box.values(0).number_value(),
                                         box.values(1).number_value(), box.values(2).number_value(),
                                         box.values(3).number_value()));
    }
  }
  for (int i = 0; i < response.detections_size(); ++i) {
    if (!used[i]) problems.push_back(absl::StrFormat("extra detection class %d score %.6f",
                                                     response.detections(i).class_index(),
                                                     response.detections(i).score()));
  }
  return problems;
}

TEST_F(ServerTest, DetectAndSegmentMatchTheReferenceUnderConcurrency) {
  const DenseReference reference = DenseReference::Load();
  const int images = reference.images().values_size();
  ASSERT_GE(images, 5);
  constexpr int kRepeats = 3;
  const int calls = images * kRepeats;
  std::vector<v1::DetectRequest> detect_requests(calls);
  std::vector<v1::SegmentRequest> segment_requests(calls);
  std::vector<v1::DetectResponse> detect_responses(calls);
  std::vector<v1::SegmentResponse> segment_responses(calls);
  std::vector<grpc::Status> detect_statuses(calls), segment_statuses(calls);
  std::vector<grpc::ClientContext> detect_contexts(calls), segment_contexts(calls);
  for (int i = 0; i < calls; ++i) {
    const std::string name = reference.images().values(i % images).struct_value().fields().at("name").string_value();
    const std::string bytes = ReadFile(reference.dir + "/images/" + name + ".png");
    detect_requests[i].set_model("care_s0_det");
    detect_requests[i].mutable_image()->set_encoded(bytes);
    detect_requests[i].set_score_threshold(static_cast<float>(reference.detect("score_threshold")));
    detect_requests[i].set_iou_threshold(static_cast<float>(reference.detect("iou_threshold")));
    detect_requests[i].set_max_detections(static_cast<int>(reference.detect("max_detections")));
    segment_requests[i].set_model("care_s0_seg");
    segment_requests[i].mutable_image()->set_encoded(bytes);
  }
  absl::Mutex mu;
  int done = 0;
  for (int i = 0; i < calls; ++i) {
    stub_->async()->Detect(&detect_contexts[i], &detect_requests[i], &detect_responses[i], [&, i](grpc::Status s) {
      absl::MutexLock lock(&mu);
      detect_statuses[i] = std::move(s);
      ++done;
    });
    stub_->async()->Segment(&segment_contexts[i], &segment_requests[i], &segment_responses[i],
                            [&, i](grpc::Status s) {
                              absl::MutexLock lock(&mu);
                              segment_statuses[i] = std::move(s);
                              ++done;
                            });
  }
  {
    absl::MutexLock lock(&mu);
    auto all_done = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return done == 2 * calls; };
    mu.Await(absl::Condition(&all_done));
  }

  for (int i = 0; i < calls; ++i) {
    const auto& ref = reference.images().values(i % images).struct_value().fields();
    const std::string name = ref.at("name").string_value();
    const int width = static_cast<int>(ref.at("width").number_value());
    const int height = static_cast<int>(ref.at("height").number_value());

    ASSERT_TRUE(detect_statuses[i].ok()) << name << ": " << detect_statuses[i].error_message();
    const v1::DetectResponse& det = detect_responses[i];
    EXPECT_EQ(det.image_width(), width);
    EXPECT_EQ(det.image_height(), height);
    EXPECT_EQ(det.detections_size(), ref.at("detections").list_value().values_size()) << name;
    for (const std::string& problem : DetectionMismatches(det, ref.at("detections").list_value())) {
      ADD_FAILURE() << name << ": " << problem;
    }
    for (int k = 1; k < det.detections_size(); ++k) {
      EXPECT_GE(det.detections(k - 1).score(), det.detections(k).score()) << name << ": not sorted by score";
    }

    ASSERT_TRUE(segment_statuses[i].ok()) << name << ": " << segment_statuses[i].error_message();
    const v1::SegmentResponse& seg = segment_responses[i];
    EXPECT_EQ(seg.width(), width);
    EXPECT_EQ(seg.height(), height);
    const std::string& png = seg.mask_png();
    const cv::Mat mask = cv::imdecode(std::vector<uchar>(png.begin(), png.end()), cv::IMREAD_UNCHANGED);
    const cv::Mat expected = cv::imread(reference.dir + "/masks/" + name + ".png", cv::IMREAD_UNCHANGED);
    ASSERT_EQ(mask.type(), CV_8UC1) << name << ": 150 classes fit an 8-bit PNG";
    ASSERT_EQ(mask.size(), expected.size()) << name;
    const double agreement = 1.0 - cv::countNonZero(mask != expected) / static_cast<double>(mask.total());
    EXPECT_GE(agreement, 0.999) << name;
    // Coverage: the fractions of the mask's own pixels, largest first, summing to 1.
    double total = 0;
    for (int k = 0; k < seg.classes_size(); ++k) {
      const auto& c = seg.classes(k);
      total += c.fraction();
      EXPECT_NEAR(c.fraction(), cv::countNonZero(mask == c.class_index()) / static_cast<double>(mask.total()), 1e-6);
      if (k > 0) EXPECT_LE(c.fraction(), seg.classes(k - 1).fraction());
    }
    EXPECT_NEAR(total, 1.0, 1e-5) << name;
  }
}

TEST_F(ServerTest, CareClientDrawsPicturesOfTheInputsSize) {
  const DenseReference reference = DenseReference::Load();
  const std::string client = Env("CARE_CLIENT");
  ASSERT_FALSE(client.empty()) << "CARE_CLIENT is not set (run through ctest)";
  const std::string server = "--server=127.0.0.1:" + std::to_string(server_->grpc_port());
  for (const char* name : {"astronaut_portrait_200x480", "coffee_wide_600x150"}) {
    const std::string image = reference.dir + "/images/" + name + ".png";
    const cv::Mat input = cv::imread(image, cv::IMREAD_COLOR);
    for (const char* command : {"detect", "segment"}) {
      const std::string out = ::testing::TempDir() + "/" + name + "_" + command + ".png";
      std::remove(out.c_str());
      const std::string line = client + " " + command + " " + server + " --image=" + image + " --draw=" + out +
                               " --score_threshold=0.33 > /dev/null 2>&1";
      ASSERT_EQ(std::system(line.c_str()), 0) << line;
      const cv::Mat picture = cv::imread(out, cv::IMREAD_COLOR);
      ASSERT_FALSE(picture.empty()) << out;
      EXPECT_EQ(picture.size(), input.size()) << out;
      EXPECT_GT(cv::norm(picture, input, cv::NORM_L1), 0) << out << " has nothing drawn on it";
    }
  }
}

TEST_F(ServerTest, ListModelsReportsServedAndFailedModels) {
  grpc::ClientContext context;
  v1::ListModelsResponse response;
  ASSERT_TRUE(stub_->ListModels(&context, v1::ListModelsRequest(), &response).ok());
  std::map<std::string, v1::ModelInfo> models;
  for (const v1::ModelInfo& m : response.models()) models[m.name()] = m;
  ASSERT_EQ(models.size(), 7u);
  const v1::ModelInfo& cls = models["care_s0_cls"];
  EXPECT_TRUE(cls.ready());
  EXPECT_EQ(cls.task(), "classification");
  EXPECT_EQ(cls.architecture(), "care_s0");
  EXPECT_EQ(cls.input_height(), 64);
  EXPECT_EQ(cls.input_width(), 64);
  EXPECT_EQ(cls.num_classes(), 1000);
  EXPECT_EQ(cls.weights_source(), "random");
  ASSERT_EQ(cls.versions_size(), 1);
  EXPECT_EQ(cls.versions(0), 1);
  EXPECT_EQ(cls.error(), "");
  EXPECT_TRUE(models["care_s0_det"].ready());
  EXPECT_EQ(models["care_s0_det"].task(), "detection");
  EXPECT_EQ(models["care_s0_det"].num_classes(), 80);
  EXPECT_EQ(models["care_s0_det"].input_height(), 96);
  EXPECT_EQ(models["care_s0_det"].input_width(), 128);
  EXPECT_EQ(models["care_s0_det"].weights_source(), "checkpoint");
  EXPECT_TRUE(models["care_s0_seg"].ready());
  EXPECT_EQ(models["care_s0_seg"].task(), "segmentation");
  EXPECT_EQ(models["care_s0_seg"].num_classes(), 150);
  const v1::ModelInfo& broken = models["broken_model"];
  EXPECT_FALSE(broken.ready());
  EXPECT_EQ(broken.versions_size(), 0);
  EXPECT_NE(broken.error().find("batching.max_batch_size must be >= 1, got 0"), std::string::npos) << broken.error();
  // A corrupt TorchScript file and a missing labels file: reported, the rest served.
  EXPECT_FALSE(models["corrupt_weights"].ready());
  EXPECT_NE(models["corrupt_weights"].error().find("version 1: cannot load TorchScript"), std::string::npos)
      << models["corrupt_weights"].error();
  EXPECT_FALSE(models["missing_labels"].ready());
  EXPECT_NE(models["missing_labels"].error().find("labels.txt"), std::string::npos) << models["missing_labels"].error();
  // In the metrics and the log too.
  const std::string metrics = HttpGet(server_->metrics_port(), "/metrics");
  EXPECT_EQ(Sample(metrics, R"(care_model_ready{model="care_s0_cls"})"), 1);
  for (const char* failed : {"broken_model", "corrupt_weights", "missing_labels"}) {
    EXPECT_EQ(Sample(metrics, absl::StrFormat(R"(care_model_ready{model="%s"})", failed)), 0) << failed;
    EXPECT_NE(server_->log().find(absl::StrFormat("msg=\"model not served\" model=%s", failed)), std::string::npos)
        << failed;
  }
}

TEST_F(ServerTest, ModelsWithoutConfiguredInstancesMayUseEveryEngineThread) {
  // --engine_runners=2: care_s0_cls leaves batching.instances out, care_s0_queue1 sets 1.
  const std::string log = server_->log();
  auto instances = [&](const std::string& model) {
    std::smatch m;
    const std::regex line("msg=\"model loaded\" model=" + model + " .* instances=([a-z0-9]+)");
    return std::regex_search(log, m, line) ? std::string(m[1]) : "-";
  };
  EXPECT_EQ(instances("care_s0_cls"), "all") << log;
  EXPECT_EQ(instances("care_s0_queue1"), "1") << log;
  EXPECT_NE(log.find("engine_runners=2 intra_op_threads=1"), std::string::npos) << log;
}

TEST_F(ServerTest, HealthIsServingOnceModelsAreWarm) {
  auto health = grpc::health::v1::Health::NewStub(server_->channel());
  for (const char* service : {"", "care.vision.v1.VisionService"}) {
    grpc::ClientContext context;
    grpc::health::v1::HealthCheckRequest request;
    request.set_service(service);
    grpc::health::v1::HealthCheckResponse response;
    ASSERT_TRUE(health->Check(&context, request, &response).ok()) << service;
    EXPECT_EQ(response.status(), grpc::health::v1::HealthCheckResponse::SERVING) << service;
  }
  grpc::ClientContext context;
  grpc::health::v1::HealthCheckRequest request;
  request.set_service("no.such.Service");
  grpc::health::v1::HealthCheckResponse response;
  EXPECT_EQ(health->Check(&context, request, &response).error_code(), StatusCode::NOT_FOUND);
}

TEST_F(ServerTest, ReflectionDescribesTheApi) {
  auto reflection = grpc::reflection::v1alpha::ServerReflection::NewStub(server_->channel());
  grpc::ClientContext context;
  auto stream = reflection->ServerReflectionInfo(&context);
  grpc::reflection::v1alpha::ServerReflectionRequest request;
  grpc::reflection::v1alpha::ServerReflectionResponse response;

  request.set_list_services("");
  ASSERT_TRUE(stream->Write(request));
  ASSERT_TRUE(stream->Read(&response));
  std::vector<std::string> services;
  for (const auto& s : response.list_services_response().service()) services.push_back(s.name());
  EXPECT_NE(std::find(services.begin(), services.end(), "care.vision.v1.VisionService"), services.end());

  request.set_file_containing_symbol("care.vision.v1.VisionService");
  ASSERT_TRUE(stream->Write(request));
  ASSERT_TRUE(stream->Read(&response));
  ASSERT_GT(response.file_descriptor_response().file_descriptor_proto_size(), 0);
  google::protobuf::FileDescriptorProto file;
  ASSERT_TRUE(file.ParseFromString(response.file_descriptor_response().file_descriptor_proto(0)));
  EXPECT_EQ(file.name(), "care/vision/v1/vision.proto");
  ASSERT_EQ(file.service_size(), 1);
  std::vector<std::string> methods;
  for (const auto& m : file.service(0).method()) methods.push_back(m.name());
  EXPECT_EQ(methods, (std::vector<std::string>{"Classify", "Detect", "Segment", "ListModels"}));
  stream->WritesDone();
  EXPECT_TRUE(stream->Finish().ok());
}

TEST_F(ServerTest, MetricsEndpointExportsTheContractsMetrics) {
  // At least one request of each outcome first.
  v1::ClassifyRequest request;
  request.set_model("care_s0_cls");
  request.mutable_image()->set_encoded("junk");
  grpc::ClientContext bad_context;
  v1::ClassifyResponse response;
  (void)stub_->Classify(&bad_context, request, &response);
  *request.mutable_image() = TestImage(Photos(), 3);
  grpc::ClientContext good_context;
  ASSERT_TRUE(stub_->Classify(&good_context, request, &response).ok());

  const std::string metrics = HttpGet(server_->metrics_port(), "/metrics");
  for (const char* family :
       {"care_requests_total", "care_request_duration_seconds", "care_queue_duration_seconds",
        "care_preprocess_duration_seconds", "care_postprocess_duration_seconds", "care_inference_duration_seconds",
        "care_batch_size", "care_batches_total", "care_queue_depth", "care_inflight_requests", "care_model_info",
        "process_cpu_seconds_total", "process_resident_memory_bytes", "process_start_time_seconds"}) {
    EXPECT_NE(metrics.find(std::string("# TYPE ") + family + " "), std::string::npos) << family;
  }
  EXPECT_GE(Sample(metrics, R"(care_requests_total{code="INVALID_ARGUMENT",method="Classify",model="care_s0_cls"})"),
            1);
  EXPECT_GE(Sample(metrics, R"(care_requests_total{code="OK",method="Classify",model="care_s0_cls"})"), 1);
  EXPECT_EQ(Sample(metrics, R"(care_model_info{architecture="care_s0",model="care_s0_cls",task="classification",)"
                            R"(version="1",weights="random"})"),
            1);
  EXPECT_EQ(Sample(metrics, R"(care_inflight_requests{model="care_s0_cls"})"), 0);
  EXPECT_GT(Sample(metrics, "process_resident_memory_bytes"), 50e6);
  const double started = Sample(metrics, "process_start_time_seconds");
  const double now = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  EXPECT_GT(started, now - 600);
  EXPECT_LE(started, now + 1);
  EXPECT_EQ(HttpGet(server_->metrics_port(), "/nothing").find("not found"), 9u);
}

// --- Each with a server of its own ------------------------------------------------------

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

TEST(Drain, SigtermFinishesRequestsInFlightRefusesNewOnesAndExitsZero) {
  Server server;
  server.Start({"--drain_timeout=30s"}, "drain_test");
  ASSERT_FALSE(::testing::Test::HasFatalFailure());
  auto stub = v1::VisionService::NewStub(server.channel());
  std::vector<v1::Image> images;
  for (int i = 0; i < 8; ++i) images.push_back(Raw64(i));
  // 250 requests: about a second of work here. SIGTERM once the server holds some.
  Burst burst(stub.get(), 250, "care_s0_cls", images);
  const double held = WaitUntilHeld(server, 20);
  ASSERT_GE(held, 20);
  const auto sigterm = std::chrono::steady_clock::now();
  server.Signal(SIGTERM);

  // Readiness turns NOT_SERVING while the server still answers; new requests: UNAVAILABLE.
  grpc::health::v1::HealthCheckResponse::ServingStatus status = grpc::health::v1::HealthCheckResponse::SERVING;
  for (int i = 0; i < 200 && status == grpc::health::v1::HealthCheckResponse::SERVING; ++i) {
    status = Health(server.channel(), "");
  }
  EXPECT_EQ(status, grpc::health::v1::HealthCheckResponse::NOT_SERVING);
  EXPECT_EQ(Health(server.channel(), "care.vision.v1.VisionService"), grpc::health::v1::HealthCheckResponse::NOT_SERVING);
  {
    v1::ClassifyRequest request;
    request.set_model("care_s0_cls");
    *request.mutable_image() = images[0];
    grpc::ClientContext context;
    v1::ClassifyResponse response;
    const grpc::Status refused = stub->Classify(&context, request, &response);
    EXPECT_EQ(refused.error_code(), StatusCode::UNAVAILABLE) << refused.error_message();
    EXPECT_NE(refused.error_message().find("shutting down"), std::string::npos) << refused.error_message();
  }

  // Every request the server held at SIGTERM is answered; the others were refused as new.
  burst.Wait();
  EXPECT_GE(burst.Count(StatusCode::OK), held);
  EXPECT_EQ(burst.Count(StatusCode::OK) + burst.Count(StatusCode::UNAVAILABLE), 250);
  const int code = server.WaitExit(std::chrono::seconds(30));
  EXPECT_EQ(code, 0) << server.log();
  EXPECT_LT(std::chrono::steady_clock::now() - sigterm, std::chrono::seconds(30));
  EXPECT_NE(server.log().find("msg=stopped"), std::string::npos) << server.log();
  EXPECT_EQ(server.log().find("drain timeout"), std::string::npos) << server.log();
}

TEST(Drain, CallsArrivingAroundSigtermAreAnsweredOrRefusedNeverCancelled) {
  // A client sends a ~2 MB PNG of noise every 2 ms for 120 ms and the server gets SIGTERM
  // 20-70 ms in: calls are in flight, still uploading, and starting throughout the drain.
  // Each must be answered (OK) or refused (UNAVAILABLE, retryable); none may be CANCELLED,
  // which a client cannot tell from its own cancellation and does not retry. (With the
  // drain ending as soon as the calls it had seen were answered, 2 of 6 rounds had one.)
  cv::Mat noise(800, 800, CV_8UC3);
  cv::randu(noise, cv::Scalar::all(0), cv::Scalar::all(256));
  std::vector<uchar> png;
  ASSERT_TRUE(cv::imencode(".png", noise, png));
  v1::Image image;
  image.set_encoded(std::string(png.begin(), png.end()));
  for (int round = 0; round < 6; ++round) {
    Server server;
    server.Start({"--drain_timeout=60s"}, absl::StrCat("drain_arriving_test_", round));
    ASSERT_FALSE(::testing::Test::HasFatalFailure());
    auto stub = v1::VisionService::NewStub(server.channel());
    constexpr int kCalls = 60;
    std::vector<v1::ClassifyRequest> requests(kCalls);
    std::vector<v1::ClassifyResponse> responses(kCalls);
    std::vector<grpc::ClientContext> contexts(kCalls);
    std::vector<grpc::Status> statuses(kCalls);
    absl::Mutex mu;
    int done = 0;
    std::thread sigterm([&] {
      std::this_thread::sleep_for(std::chrono::milliseconds(20 + 10 * round));
      server.Signal(SIGTERM);
    });
    for (int i = 0; i < kCalls; ++i) {
      requests[i].set_model("care_s0_cls");
      *requests[i].mutable_image() = image;
      stub->async()->Classify(&contexts[i], &requests[i], &responses[i], [&, i](grpc::Status status) {
        absl::MutexLock lock(&mu);
        statuses[i] = std::move(status);
        ++done;
      });
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    sigterm.join();
    {
      absl::MutexLock lock(&mu);
      mu.Await(absl::Condition(+[](int* d) { return *d == kCalls; }, &done));
    }
    for (int i = 0; i < kCalls; ++i) {
      EXPECT_TRUE(statuses[i].ok() || statuses[i].error_code() == StatusCode::UNAVAILABLE)
          << "round " << round << ", call " << i << ": " << statuses[i].error_code() << " "
          << statuses[i].error_message();
    }
    EXPECT_EQ(server.WaitExit(std::chrono::seconds(60)), 0) << server.log();
    EXPECT_EQ(server.log().find("drain timeout"), std::string::npos) << server.log();
  }
}

TEST(Drain, RequestsStillRunningAtTheDrainTimeoutAreCancelledAndTheServerExitsZero) {
  Server server;
  server.Start({"--drain_timeout=1s"}, "drain_timeout_test");
  ASSERT_FALSE(::testing::Test::HasFatalFailure());
  auto stub = v1::VisionService::NewStub(server.channel());
  // Images that are cheap to upload and slow to decode, so that the server holds many at
  // once whatever the upload rate: each photo in the corner of a flat 4000x3000 canvas,
  // a ~0.5 MB PNG that takes ~250 ms to decode here. The 32 or more held at SIGTERM are
  // seconds of work (measured: all 64 held, 4 to 8 answered in the drain's second, also
  // with both cores busy elsewhere). Photos upscaled to 1280x960, ~1.4 MB for ~40 ms, were
  // not: in one CI run the server decoded them as fast as they arrived and never held 128.
  std::vector<v1::Image> images;
  for (const cv::Mat& photo : Photos()) {
    cv::Mat canvas(3000, 4000, CV_8UC3, cv::Scalar(128, 128, 128));
    photo.copyTo(canvas(cv::Rect(0, 0, photo.cols, photo.rows)));
    std::vector<uchar> bytes;
    cv::imencode(".png", canvas, bytes);
    images.emplace_back().set_encoded(std::string(bytes.begin(), bytes.end()));
  }
  constexpr int kRequests = 64;
  Burst burst(stub.get(), kRequests, "care_s0_cls", images);
  ASSERT_GE(WaitUntilHeld(server, 32), 32);
  // Held and already answered at SIGTERM, from one scrape: the first requests of the burst
  // are answered while the last are still uploading.
  const std::string at_sigterm = HttpGet(server.metrics_port(), "/metrics");
  const double held = Sample(at_sigterm, R"(care_inflight_requests{model="care_s0_cls"})");
  const double answered_before =
      std::max(0.0, Sample(at_sigterm, R"(care_requests_total{code="OK",method="Classify",model="care_s0_cls"})"));
  ASSERT_GE(held, 24);
  const auto sigterm = std::chrono::steady_clock::now();
  server.Signal(SIGTERM);
  const int code = server.WaitExit(std::chrono::seconds(20));
  const auto took = std::chrono::steady_clock::now() - sigterm;
  EXPECT_EQ(code, 0) << server.log();
  EXPECT_LT(took, std::chrono::seconds(4)) << "drain_timeout=1s";
  burst.Wait();
  // Those held at SIGTERM were answered within the second or cut off by the shutdown
  // (clients see UNAVAILABLE, as for the requests refused as new).
  const int ok = burst.Count(StatusCode::OK), unavailable = burst.Count(StatusCode::UNAVAILABLE);
  EXPECT_LT(ok - answered_before, held) << "the drain was not cut short: " << ok << " OK, " << answered_before
                                         << " of them before SIGTERM, " << held << " held then";
  EXPECT_EQ(ok + unavailable, kRequests) << ok << " OK, " << unavailable << " UNAVAILABLE";
  EXPECT_NE(server.log().find("msg=\"drain timeout: cancelling requests in flight\""), std::string::npos)
      << server.log();
}

// --- Staying awake after a lone batch (--lone_batch_spin_us) -------------------------

// The server's CPU time so far (user + system), in seconds.
double CpuSeconds(pid_t pid) {
  const std::string stat = ReadFile("/proc/" + std::to_string(pid) + "/stat");
  std::vector<std::string> fields = absl::StrSplit(stat.substr(stat.rfind(')') + 2), ' ');
  return (std::stod(fields[11]) + std::stod(fields[12])) / sysconf(_SC_CLK_TCK);
}

TEST(LoneBatchSpin, TheCoresStayAwakeOnlyUntilTheNextRequestOrTheLimit) {
  if (std::thread::hardware_concurrency() < 2) GTEST_SKIP() << "a lone batch runs on one thread here: no spinning";
  Server server;
  // The longest wait the flag allows: a request that had to wait it out would take a second.
  server.Start({"--lone_batch_spin_us=1000000"}, "lone_spin_test");
  ASSERT_FALSE(::testing::Test::HasFatalFailure());
  EXPECT_NE(server.log().find("lone_batch_spin_us=1000000"), std::string::npos) << server.log();
  auto stub = v1::VisionService::NewStub(server.channel());
  const std::vector<cv::Mat> photos = Photos();
  auto classify = [&](int i) {
    v1::ClassifyRequest request;
    request.set_model("care_s0_cls");
    *request.mutable_image() = TestImage(photos, i);
    grpc::ClientContext context;
    v1::ClassifyResponse response;
    const grpc::Status status = stub->Classify(&context, request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(response.classes_size(), 5);
  };
  // One at a time: each request's batch runs alone, and each next one arrives while the
  // runner that ran the last is spinning. It must start at once, not after the limit.
  classify(0);
  constexpr int kCalls = 6;
  const auto start = std::chrono::steady_clock::now();
  for (int i = 1; i <= kCalls; ++i) classify(i);
  const auto took_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start).count();
  EXPECT_LT(took_ms, kCalls * 1000 / 2)
      << kCalls << " requests, each after a lone batch, waited for the 1 s spin to run out";
  // And the spinning ends at the limit: an idle server uses (almost) no CPU a second later.
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  const double cpu_before = CpuSeconds(server.pid());
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  const double idle_cpu = CpuSeconds(server.pid()) - cpu_before;
  EXPECT_LT(idle_cpu, 0.5) << "CPU seconds used by the idle server in 1.5 s, from 1.5 s after the last request";
  // SIGTERM while the runner spins: the server still drains and exits 0.
  classify(kCalls + 1);
  EXPECT_EQ(server.Stop(), 0) << server.log();
}

TEST(LoneBatchSpin, AnOutOfRangeLimitStopsTheServerWithTheReason) {
  int status = 0;
  const std::string out = RunCommand(Env("CARE_SERVER") + " --model_repository=" + Env("CARE_TEST_REPOSITORY") +
                                         " --lone_batch_spin_us=-1 --port=0 --metrics_port=-1 2>&1",
                                     &status);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 2) << out;
  EXPECT_NE(out.find("--lone_batch_spin_us must be between 0 and 1000000"), std::string::npos) << out;
}

TEST(Strict, AModelThatFailsToLoadStopsTheServerAtStart) {
  int status = 0;
  const std::string out = RunCommand(Env("CARE_SERVER") + " --model_repository=" + Env("CARE_TEST_REPOSITORY") +
                                         " --strict --host=127.0.0.1 --port=0 --metrics_port=-1 2>&1",
                                     &status);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) != 0) << out;
  EXPECT_NE(out.find("--strict: model broken_model: "), std::string::npos) << out;
  EXPECT_NE(out.find("batching.max_batch_size must be >= 1, got 0"), std::string::npos) << out;
}

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
}

TEST(Tls, IncompleteTlsFlagsStopTheServerWithTheReason) {
  int status = 0;
  const std::string out = RunCommand(Env("CARE_SERVER") + " --model_repository=" + Env("CARE_TEST_REPOSITORY") +
                                         " --tls_cert=/nonexistent.pem --port=0 --metrics_port=-1 2>&1",
                                     &status);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 2) << out;
  EXPECT_NE(out.find("TLS needs both --tls_cert and --tls_key"), std::string::npos) << out;
}

}  // namespace
}  // namespace careserve
