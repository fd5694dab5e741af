// care-server end to end: its process (environment, BLAS, thread names, lone batches) and its
// metrics endpoint.
#include <sched.h>
#include <sys/stat.h>

#include "tests/cpp/integration/server_harness.h"

namespace careserve {
namespace {

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
  EXPECT_GE(Sample(metrics, R"(care_requests_total{api="vision",code="INVALID_ARGUMENT",method="Classify",model="care_s0_cls"})"),
            1);
  EXPECT_GE(Sample(metrics, R"(care_requests_total{api="vision",code="OK",method="Classify",model="care_s0_cls"})"), 1);
  EXPECT_EQ(Sample(metrics, R"(care_model_info{architecture="care_s0",model="care_s0_cls",precision="fp32",task="classification",)"
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
                                         " --lone_batch_spin_us=-1 --port=0 --metrics_port=-1 --http_port=-1 2>&1",
                                     &status);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 2) << out;
  EXPECT_NE(out.find("--lone_batch_spin_us must be between 0 and 1000000"), std::string::npos) << out;
}

// The defaults (0) of the thread flags, sized by the server itself.
const std::vector<std::string> kDefaultThreads = {"--engine_runners=0", "--intra_op_threads=0",
                                                  "--lone_batch_threads=0", "--preprocess_threads=0"};

TEST(UsableCpus, DefaultThreadCountsFollowTheAffinityMask) {
  // The child inherits this thread's mask (what `taskset -c N care-server` does).
  cpu_set_t before;
  ASSERT_EQ(sched_getaffinity(0, sizeof(before), &before), 0);
  cpu_set_t one;
  CPU_ZERO(&one);
  for (int i = 0; i < CPU_SETSIZE; ++i) {
    if (CPU_ISSET(i, &before)) {
      CPU_SET(i, &one);
      break;
    }
  }
  ASSERT_EQ(sched_setaffinity(0, sizeof(one), &one), 0);
  struct Restore {
    cpu_set_t mask;
    ~Restore() { sched_setaffinity(0, sizeof(mask), &mask); }
  } restore{before};
  Server server;
  server.Start(kDefaultThreads, "usable_cpus_affinity_test");
  ASSERT_EQ(sched_setaffinity(0, sizeof(before), &before), 0);
  const std::string log = server.log();
  EXPECT_NE(log.find("cpus=1 cpus_from=\"affinity mask\""), std::string::npos) << log;
  EXPECT_NE(log.find("engine_runners=1 intra_op_threads=1 lone_batch_threads=1"), std::string::npos) << log;
  EXPECT_NE(log.find("preprocess_threads=1 "), std::string::npos) << log;
  EXPECT_EQ(server.Stop(), 0);
}

// A cgroup of this machine's own with a CPU quota of one CPU (v1 cpu.cfs_quota_us or v2
// cpu.max), where the test may create one (root, a writable cgroup mount with the cpu
// controller); this process moves into it for the fork and back.
class QuotaCgroup {
 public:
  QuotaCgroup() {
    const std::string self = ReadFile("/proc/self/cgroup");
    std::smatch m;
    const std::string name = "/careserve_cpus_test_" + std::to_string(getpid());
    if (std::regex_search(self, m, std::regex("(^|\n)\\d+:([^:\n]*,)?cpu(,[^:\n]*)?:([^\n]*)"))) {
      for (const char* mount : {"/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct"}) {
        const std::string parent = std::string(mount) + (m[4] == "/" ? "" : m[4].str());
        if (access((parent + "/cpu.cfs_quota_us").c_str(), F_OK) != 0) continue;
        if (Make(parent, parent + name) && WriteTo(dir_ + "/cpu.cfs_period_us", "100000") &&
            WriteTo(dir_ + "/cpu.cfs_quota_us", "100000")) {
          version_ = "v1";
          return;
        }
        Remove();
      }
    } else if (std::regex_search(self, m, std::regex("(^|\n)0::([^\n]*)"))) {
      const std::string parent = "/sys/fs/cgroup" + (m[2] == "/" ? "" : m[2].str());
      if (ReadFile(parent + "/cgroup.subtree_control").find("cpu") != std::string::npos &&
          Make(parent, parent + name) && WriteTo(dir_ + "/cpu.max", "100000 100000")) {
        version_ = "v2";
        return;
      }
      Remove();
    }
  }
  // After the server (declared later, so destroyed first) has stopped or been killed.
  ~QuotaCgroup() {
    Leave();
    Remove();
  }
  bool ok() const { return !version_.empty(); }
  std::string version() const { return version_; }
  bool Enter() { return entered_ = WriteTo(dir_ + "/cgroup.procs", std::to_string(getpid())); }
  bool Leave() {
    if (!entered_) return true;
    entered_ = !WriteTo(parent_ + "/cgroup.procs", std::to_string(getpid()));
    return !entered_;
  }

 private:
  static bool WriteTo(const std::string& path, const std::string& value) {
    std::ofstream out(path);
    out << value << std::flush;
    return static_cast<bool>(out);
  }
  bool Make(const std::string& parent, const std::string& dir) {
    if (mkdir(dir.c_str(), 0755) != 0) return false;
    parent_ = parent;
    dir_ = dir;
    return true;
  }
  void Remove() {
    if (!dir_.empty()) rmdir(dir_.c_str());
    dir_.clear();
  }
  std::string parent_, dir_, version_;
  bool entered_ = false;
};

TEST(UsableCpus, DefaultThreadCountsFollowTheCgroupCpuQuota) {
  QuotaCgroup cgroup;
  if (!cgroup.ok()) GTEST_SKIP() << "cannot create a cgroup with a CPU quota here (not root, or no writable cpu controller)";
  ASSERT_TRUE(cgroup.Enter());
  Server server;
  server.Start(kDefaultThreads, "usable_cpus_cgroup_test");
  ASSERT_TRUE(cgroup.Leave());
  const std::string log = server.log();
  EXPECT_NE(log.find("cpus=1 cpus_from=\"cgroup " + cgroup.version()), std::string::npos) << log;
  EXPECT_NE(log.find("engine_runners=1 intra_op_threads=1 lone_batch_threads=1"), std::string::npos) << log;
  EXPECT_EQ(server.Stop(), 0);  // out of the cgroup before it is removed
}

}  // namespace
}  // namespace careserve
