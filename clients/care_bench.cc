// care-bench: a gRPC load generator for care-server, in the spirit of ghz and
// perf_analyzer, over care.vision.v1 or the Open Inference Protocol (--protocol).
//
//   care-bench --task classify --concurrency 16 --duration 30 --images DIR
//   care-bench --task detect --rate 20 --duration 30 --generate 640x480
//
// Closed loop (--concurrency N): N calls in flight at all times, each starting when the
// previous one of its stream ends. Open loop (--rate R): calls start at Poisson arrival
// times of mean rate R/s whatever the server does, and latency is measured from the
// scheduled start, so a slow server cannot hide its queueing (no coordinated omission).
// Calls finishing in the first --warmup seconds are not counted. Prints throughput,
// latency percentiles and errors by status code, as text or --json.
#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "care/vision/v1/vision.grpc.pb.h"
#include "clients/oip_client.h"
#include "server/common/thread_pool.h"
#include "grpcpp/grpcpp.h"
#include "server/common/startup_env.h"
#include "clients/tls_flags.h"
#include "opencv2/imgcodecs.hpp"
#include "opencv2/imgproc.hpp"

ABSL_FLAG(std::string, server, "localhost:50051", "care-server address (any gRPC target).");
ABSL_FLAG(std::string, task, "classify", "classify | detect | segment.");
ABSL_FLAG(std::string, model, "", "Model name (default: the server's default for the task).");
ABSL_FLAG(int, concurrency, 1, "Closed loop: calls in flight at all times (ignored with --rate).");
ABSL_FLAG(double, rate, 0, "Open loop: mean calls per second, Poisson arrivals (0: closed loop).");
ABSL_FLAG(double, duration, 10, "Seconds measured, after the warm-up.");
ABSL_FLAG(double, warmup, 2, "Seconds of load before measuring.");
ABSL_FLAG(std::string, images, "", "Folder of images (JPEG, PNG, ...) sent in turn.");
ABSL_FLAG(std::string, generate, "",
          "WxH: send real photos (Debian's python3-skimage samples) resized to WxH and encoded as JPEG "
          "(default 224x224 when --images is not given).");
ABSL_FLAG(int, jpeg_quality, 90, "JPEG quality of --generate images.");
ABSL_FLAG(double, timeout, 30, "Deadline of each call, in seconds.");
ABSL_FLAG(int, channels, 1, "gRPC channels (connections) the calls are spread over.");
ABSL_FLAG(bool, json, false, "Print the report as JSON.");
ABSL_FLAG(std::string, protocol, "vision",
          "vision (care.vision.v1) | oip-grpc | oip-http (the Open Inference Protocol's ModelInfer over gRPC on "
          "--server or HTTP on --http_server; needs --model), or several separated by commas: call n goes by "
          "protocol n mod their number.");
ABSL_FLAG(std::string, http_server, "localhost:8000", "care-server's HTTP address (host:port) for oip-http.");
ABSL_FLAG(int, http_connections, 64,
          "oip-http: most HTTP connections (each a client thread making one call at a time; a call waits for a free "
          "one); in closed loop no more than --concurrency.");
ABSL_FLAG(std::string, trace, "",
          "Write every measured call to this file: start (ms since measuring began, the scheduled start in "
          "open loop), latency (ms) and status code, one call per line in start order.");

namespace {

namespace v1 = care::vision::v1;
using Clock = std::chrono::steady_clock;

std::vector<std::string> LoadImages() {
  std::vector<std::string> images;
  const std::string dir = absl::GetFlag(FLAGS_images);
  if (!dir.empty()) {
    std::vector<std::filesystem::path> paths;
    for (const auto& entry : std::filesystem::directory_iterator(dir)) {
      if (entry.is_regular_file()) paths.push_back(entry.path());
    }
    std::sort(paths.begin(), paths.end());
    for (const auto& path : paths) {
      std::ifstream in(path, std::ios::binary);
      std::ostringstream bytes;
      bytes << in.rdbuf();
      images.push_back(bytes.str());
    }
  }
  std::string size = absl::GetFlag(FLAGS_generate);
  if (size.empty() && images.empty()) size = "224x224";
  if (!size.empty()) {
    std::vector<std::string> wh = absl::StrSplit(size, 'x');
    int w = 0, h = 0;
    if (wh.size() != 2 || !absl::SimpleAtoi(wh[0], &w) || !absl::SimpleAtoi(wh[1], &h) || w < 1 || h < 1) {
      std::fprintf(stderr, "error: --generate wants WxH, got %s\n", size.c_str());
      std::exit(64);
    }
    for (const char* name : {"astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "rocket.jpg"}) {
      cv::Mat photo = cv::imread(std::string("/usr/lib/python3/dist-packages/skimage/data/") + name, cv::IMREAD_COLOR);
      if (photo.empty()) continue;
      cv::Mat resized;
      cv::resize(photo, resized, cv::Size(w, h), 0, 0, cv::INTER_AREA);
      std::vector<uchar> jpeg;
      cv::imencode(".jpg", resized, jpeg, {cv::IMWRITE_JPEG_QUALITY, absl::GetFlag(FLAGS_jpeg_quality)});
      images.emplace_back(jpeg.begin(), jpeg.end());
    }
  }
  if (images.empty()) {
    std::fprintf(stderr, "error: no images (--images DIR is empty and no sample photos were found)\n");
    std::exit(66);
  }
  return images;
}

// One prepared request per image, reused by every call (gRPC only reads them).
struct Requests {
  std::vector<v1::ClassifyRequest> classify;
  std::vector<v1::DetectRequest> detect;
  std::vector<v1::SegmentRequest> segment;
  std::vector<inference::ModelInferRequest> oip;  // the task's request per image
};

enum class Protocol { kVision, kOipGrpc, kOipHttp };

// The measured calls: when each started (ms after measuring began), its latency and status.
class Recorder {
 public:
  struct Measured {
    double start_ms;
    double latency_ms;
    grpc::StatusCode code;
  };
  void Record(Clock::time_point start, Clock::time_point end, grpc::StatusCode code, Clock::time_point measure_from) {
    if (end < measure_from) return;
    absl::MutexLock lock(&mu_);
    calls_.push_back({std::chrono::duration<double, std::milli>(start - measure_from).count(),
                      std::chrono::duration<double, std::milli>(end - start).count(), code});
  }
  std::vector<Measured> calls() {
    absl::MutexLock lock(&mu_);
    return calls_;
  }

 private:
  absl::Mutex mu_;
  std::vector<Measured> calls_ ABSL_GUARDED_BY(mu_);
};

// One call in flight; deletes itself when done.
struct Call {
  grpc::ClientContext context;
  v1::ClassifyResponse classify;
  v1::DetectResponse detect;
  v1::SegmentResponse segment;
  inference::ModelInferResponse oip;
};

class Load {
 public:
  Load(std::vector<std::shared_ptr<grpc::Channel>> channels, Requests requests, std::string task,
       std::vector<Protocol> protocols)
      : requests_(std::move(requests)), task_(std::move(task)), protocols_(std::move(protocols)) {
    for (const auto& channel : channels) {
      stubs_.push_back(v1::VisionService::NewStub(channel));
      oip_stubs_.push_back(inference::GRPCInferenceService::NewStub(channel));
    }
    if (std::find(protocols_.begin(), protocols_.end(), Protocol::kOipHttp) != protocols_.end()) {
      // Closed loop: one connection per stream, as N clients would have.
      int connections = std::max(1, absl::GetFlag(FLAGS_http_connections));
      if (absl::GetFlag(FLAGS_rate) <= 0) connections = std::min(connections, std::max(1, absl::GetFlag(FLAGS_concurrency)));
      http_ = std::make_unique<careserve::ThreadPool>(connections, "care-bench-http");
    }
  }
  // Runs what is queued, then joins the HTTP threads.
  ~Load() { http_.reset(); }

  // Starts one call; `done` runs when it ends.
  void Start(uint64_t n, Clock::time_point scheduled, std::function<void()> done) {
    auto* call = new Call();
    call->context.set_deadline(std::chrono::system_clock::now() +
                               std::chrono::milliseconds(static_cast<int64_t>(absl::GetFlag(FLAGS_timeout) * 1000)));
    v1::VisionService::Stub* stub = stubs_[n % stubs_.size()].get();
    auto finish = [this, call, scheduled, done = std::move(done)](grpc::Status status) {
      recorder_.Record(scheduled, Clock::now(), status.error_code(), measure_from_);
      delete call;
      in_flight_.fetch_sub(1);
      if (done) done();
    };
    in_flight_.fetch_add(1);
    const Protocol protocol = protocols_[n % protocols_.size()];
    if (protocol == Protocol::kOipHttp) {
      const auto* r = &requests_.oip[n % requests_.oip.size()];
      http_->Schedule([call, r, finish = std::move(finish)]() mutable {
        // One keep-alive connection per client thread.
        thread_local std::unique_ptr<httplib::Client> client;
        if (client == nullptr) {
          client = careserve::MakeOipHttpClient(absl::GetFlag(FLAGS_http_server), careserve::HttpTlsFromFlags());
        }
        finish(careserve::OipHttpInfer(client.get(), *r, &call->oip, absl::GetFlag(FLAGS_timeout)));
      });
    } else if (protocol == Protocol::kOipGrpc) {
      const auto& r = requests_.oip[n % requests_.oip.size()];
      oip_stubs_[n % oip_stubs_.size()]->async()->ModelInfer(&call->context, &r, &call->oip, std::move(finish));
    } else if (task_ == "classify") {
      const auto& r = requests_.classify[n % requests_.classify.size()];
      stub->async()->Classify(&call->context, &r, &call->classify, std::move(finish));
    } else if (task_ == "detect") {
      const auto& r = requests_.detect[n % requests_.detect.size()];
      stub->async()->Detect(&call->context, &r, &call->detect, std::move(finish));
    } else {
      const auto& r = requests_.segment[n % requests_.segment.size()];
      stub->async()->Segment(&call->context, &r, &call->segment, std::move(finish));
    }
  }

  void set_measure_from(Clock::time_point t) { measure_from_ = t; }
  Recorder& recorder() { return recorder_; }
  int in_flight() const { return in_flight_.load(); }

 private:
  std::vector<std::unique_ptr<v1::VisionService::Stub>> stubs_;
  std::vector<std::unique_ptr<inference::GRPCInferenceService::Stub>> oip_stubs_;
  Requests requests_;
  std::string task_;
  std::vector<Protocol> protocols_;
  std::unique_ptr<careserve::ThreadPool> http_;  // oip-http's client threads
  Clock::time_point measure_from_;
  Recorder recorder_;
  std::atomic<int> in_flight_{0};
};

double Percentile(const std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0;
  const double rank = p / 100.0 * (sorted.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(rank)), hi = std::min(lo + 1, sorted.size() - 1);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo);
}

std::string CodeName(grpc::StatusCode code) {
  return absl::StatusCodeToString(static_cast<absl::StatusCode>(code));
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("care-bench: gRPC load generator for care-server (see --help)");
  absl::ParseCommandLine(argc, argv);
  // Its own gRPC and locks, not Debian's debug-mode checks, in the latencies it reports.
  careserve::TurnOffAbseilDeadlockDetection();
  const std::string task = absl::GetFlag(FLAGS_task);
  if (task != "classify" && task != "detect" && task != "segment") {
    std::fprintf(stderr, "error: --task must be classify, detect or segment\n");
    return 64;
  }
  const double rate = absl::GetFlag(FLAGS_rate);
  const int concurrency = std::max(1, absl::GetFlag(FLAGS_concurrency));
  const double duration = absl::GetFlag(FLAGS_duration), warmup = std::max(0.0, absl::GetFlag(FLAGS_warmup));

  std::vector<Protocol> protocols;
  for (const std::string& name : std::vector<std::string>(absl::StrSplit(absl::GetFlag(FLAGS_protocol), ','))) {
    if (name == "vision") {
      protocols.push_back(Protocol::kVision);
    } else if (name == "oip-grpc") {
      protocols.push_back(Protocol::kOipGrpc);
    } else if (name == "oip-http") {
      protocols.push_back(Protocol::kOipHttp);
    } else {
      std::fprintf(stderr, "error: --protocol takes vision, oip-grpc and oip-http, got \"%s\"\n", name.c_str());
      return 64;
    }
  }
  const bool oip = std::find_if(protocols.begin(), protocols.end(),
                                 [](Protocol p) { return p != Protocol::kVision; }) != protocols.end();
  if (oip && absl::GetFlag(FLAGS_model).empty()) {
    std::fprintf(stderr, "error: --protocol oip-grpc and oip-http need --model (the protocol has no default model)\n");
    return 64;
  }

  const std::vector<std::string> images = LoadImages();
  Requests requests;
  for (const std::string& image : images) {
    v1::ClassifyRequest c;
    c.set_model(absl::GetFlag(FLAGS_model));
    c.mutable_image()->set_encoded(image);
    requests.classify.push_back(c);
    v1::DetectRequest d;
    d.set_model(absl::GetFlag(FLAGS_model));
    d.mutable_image()->set_encoded(image);
    requests.detect.push_back(d);
    v1::SegmentRequest s;
    s.set_model(absl::GetFlag(FLAGS_model));
    s.mutable_image()->set_encoded(image);
    requests.segment.push_back(s);
    if (oip) {
      inference::ModelInferRequest r;
      const grpc::Status built = task == "classify" ? careserve::OipClassifyRequest(c, &r)
                                 : task == "detect" ? careserve::OipDetectRequest(d, &r)
                                                    : careserve::OipSegmentRequest(s, &r);
      if (!built.ok()) {
        std::fprintf(stderr, "error: %s\n", built.error_message().c_str());
        return 64;
      }
      requests.oip.push_back(std::move(r));
    }
  }
  auto credentials = careserve::ChannelCredentialsFromFlags();
  if (!credentials.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(credentials.status().message()).c_str());
    return 64;
  }
  std::vector<std::shared_ptr<grpc::Channel>> channels;
  for (int i = 0; i < std::max(1, absl::GetFlag(FLAGS_channels)); ++i) {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(256 << 20);
    args.SetInt("grpc.channel_id", i);  // distinct channels, not one shared subchannel
    channels.push_back(grpc::CreateCustomChannel(absl::GetFlag(FLAGS_server), *credentials, args));
  }
  Load load(std::move(channels), std::move(requests), task, protocols);

  const Clock::time_point start = Clock::now();
  const Clock::time_point measure_from = start + std::chrono::microseconds(static_cast<int64_t>(warmup * 1e6));
  const Clock::time_point end = measure_from + std::chrono::microseconds(static_cast<int64_t>(duration * 1e6));
  load.set_measure_from(measure_from);
  std::atomic<uint64_t> next{0};
  if (rate > 0) {
    std::mt19937_64 rng(42);
    std::exponential_distribution<double> gap(rate);
    Clock::time_point at = start;
    while (at < end) {
      std::this_thread::sleep_until(at);
      load.Start(next++, at, nullptr);
      at += std::chrono::nanoseconds(static_cast<int64_t>(gap(rng) * 1e9));
    }
  } else {
    // Each stream starts its next call when its previous one ends, until `end`.
    std::vector<std::function<void()>> streams(concurrency);
    for (auto& stream : streams) {
      stream = [&load, &next, end, self = &stream]() {
        if (Clock::now() >= end) return;
        load.Start(next++, Clock::now(), *self);
      };
    }
    for (auto& stream : streams) stream();
    std::this_thread::sleep_until(end);
  }
  // Let the calls in flight finish (their deadline bounds the wait).
  while (load.in_flight() > 0) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  const double measured = std::chrono::duration<double>(std::max(end, Clock::now()) - measure_from).count();

  std::vector<Recorder::Measured> calls = load.recorder().calls();
  std::sort(calls.begin(), calls.end(), [](const auto& a, const auto& b) { return a.start_ms < b.start_ms; });
  std::vector<double> latencies;  // of the calls answered OK
  std::map<grpc::StatusCode, int64_t> errors;
  for (const auto& c : calls) {
    if (c.code == grpc::StatusCode::OK) {
      latencies.push_back(c.latency_ms);
    } else {
      ++errors[c.code];
    }
  }
  std::sort(latencies.begin(), latencies.end());
  const int64_t failed = static_cast<int64_t>(calls.size() - latencies.size());
  double mean = 0;
  for (double l : latencies) mean += l;
  if (!latencies.empty()) mean /= latencies.size();
  const double throughput = latencies.size() / measured;
  if (const std::string trace = absl::GetFlag(FLAGS_trace); !trace.empty()) {
    FILE* f = std::fopen(trace.c_str(), "w");
    if (f == nullptr) {
      std::fprintf(stderr, "error: cannot write --trace %s\n", trace.c_str());
      return 74;
    }
    std::fprintf(f, "# start_ms latency_ms status\n");
    for (const auto& c : calls) std::fprintf(f, "%.3f %.3f %s\n", c.start_ms, c.latency_ms, CodeName(c.code).c_str());
    std::fclose(f);
  }
  const std::string mode = rate > 0 ? absl::StrCat("open loop, ", rate, " calls/s (Poisson)")
                                    : absl::StrCat("closed loop, concurrency ", concurrency);

  if (absl::GetFlag(FLAGS_json)) {
    std::vector<std::string> error_fields;
    for (const auto& [code, n] : errors) error_fields.push_back(absl::StrCat("\"", CodeName(code), "\": ", n));
    std::printf(
        "{\"task\": \"%s\", \"protocol\": \"%s\", \"model\": \"%s\", \"mode\": \"%s\", \"concurrency\": %d, \"rate\": %g, "
        "\"images\": %zu, \"duration_s\": %.3f, \"ok\": %zu, \"errors\": {%s}, \"throughput_rps\": %.3f, "
        "\"latency_ms\": {\"mean\": %.3f, \"p50\": %.3f, \"p90\": %.3f, \"p99\": %.3f, \"p99.9\": %.3f, "
        "\"max\": %.3f}}\n",
        task.c_str(), absl::GetFlag(FLAGS_protocol).c_str(), absl::GetFlag(FLAGS_model).c_str(),
        rate > 0 ? "open" : "closed", rate > 0 ? 0 : concurrency,
        rate, images.size(), measured, latencies.size(), absl::StrJoin(error_fields, ", ").c_str(), throughput, mean,
        Percentile(latencies, 50), Percentile(latencies, 90), Percentile(latencies, 99), Percentile(latencies, 99.9),
        latencies.empty() ? 0.0 : latencies.back());
  } else {
    std::printf("care-bench %s on %s over %s: %s, %zu images, %.1f s measured after %.1f s warm-up\n", task.c_str(),
                absl::GetFlag(FLAGS_server).c_str(), absl::GetFlag(FLAGS_protocol).c_str(), mode.c_str(),
                images.size(), measured, warmup);
    std::printf("  ok %zu, errors %lld, throughput %.2f calls/s\n", latencies.size(), static_cast<long long>(failed),
                throughput);
    std::printf("  latency ms: mean %.2f  p50 %.2f  p90 %.2f  p99 %.2f  p99.9 %.2f  max %.2f\n", mean,
                Percentile(latencies, 50), Percentile(latencies, 90), Percentile(latencies, 99),
                Percentile(latencies, 99.9), latencies.empty() ? 0.0 : latencies.back());
    for (const auto& [code, n] : errors) std::printf("  %s: %lld\n", CodeName(code).c_str(), static_cast<long long>(n));
  }
  return latencies.empty() ? 1 : 0;
}
