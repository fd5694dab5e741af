// care-server end to end: admission under overload, a full queue, deadlines and cancellation.
#include "tests/cpp/integration/server_harness.h"

namespace careserve {
namespace {

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

TEST_F(ServerTest, OverloadIsRefusedAtOnceAndAdmittedRequestsKeepABoundedLatency) {
  // care-bench open loop at 3000 requests/s of 640x480 JPEGs for 4 s: several times what
  // the server can decode and compute here. What cannot be queued (care_s0_cls: 256) must
  // be refused at once, before decoding, so that the admitted requests wait at most about
  // one queue's worth of work and memory stays bounded.
  const std::string rss_series = "process_resident_memory_bytes";
  const double rss_before = Sample(HttpGet(server_->metrics_port(), "/metrics"), rss_series);
  int exit_status = 0;
  const std::string trace = ::testing::TempDir() + "/overload.trace";
  const std::string out =
      RunCommand(Env("CARE_BENCH") + " --server=127.0.0.1:" + std::to_string(server_->grpc_port()) +
              " --task=classify --model=care_s0_cls --rate=3000 --duration=4 --warmup=0 --generate=640x480 --json"
              " --trace=" + trace + " 2>/dev/null",
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

  // care-bench --trace: one line per call the report counts, in order of scheduled start
  // (within the 4 s window), with the report's status counts.
  std::map<std::string, double> traced;
  double last_start = -1;
  int lines = 0;
  const std::string trace_text = ReadFile(trace);
  for (absl::string_view line : absl::StrSplit(trace_text, '\n', absl::SkipEmpty())) {
    if (line[0] == '#') continue;
    ++lines;
    const std::vector<std::string> fields = absl::StrSplit(line, ' ');
    ASSERT_EQ(fields.size(), 3u) << line;
    const double start = std::stod(fields[0]);
    EXPECT_GE(start, last_start) << line;
    EXPECT_LT(start, 4000.0) << line;
    EXPECT_GE(std::stod(fields[1]), 0.0) << line;
    last_start = start;
    ++traced[fields[2]];
  }
  EXPECT_EQ(lines, ok + exhausted) << out;
  EXPECT_EQ(traced["OK"], ok);
  EXPECT_EQ(traced["RESOURCE_EXHAUSTED"], exhausted);
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
    const std::string ok = R"(care_requests_total{api="vision",code="OK",method="Classify",model="care_s0_cls"})";
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
        dropped += delta(absl::StrFormat(R"(care_requests_total{api="vision",code="%s",method="Classify",model="care_s0_cls"})", code));
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

}  // namespace
}  // namespace careserve
