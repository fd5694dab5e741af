#include "server/metrics/metrics.h"

#include <sys/resource.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "prometheus/collectable.h"
#include "prometheus/metric_family.h"

namespace careserve {
namespace {

using prometheus::Histogram;

// Seconds, from half a millisecond to a minute.
const Histogram::BucketBoundaries& LatencyBuckets() {
  static const auto* buckets = new Histogram::BucketBoundaries{
      0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60};
  return *buckets;
}

const Histogram::BucketBoundaries& BatchSizeBuckets() {
  static const auto* buckets =
      new Histogram::BucketBoundaries{1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256, 512, 1024};
  return *buckets;
}

}  // namespace

ServerMetrics::ServerMetrics()
    : registry_(std::make_shared<prometheus::Registry>()),
      requests_(prometheus::BuildCounter()
                    .Name("care_requests_total")
                    .Help("RPCs answered, by method, model and gRPC status code.")
                    .Register(*registry_)),
      request_seconds_(prometheus::BuildHistogram()
                           .Name("care_request_duration_seconds")
                           .Help("Time from an RPC's arrival to its answer, by method and model.")
                           .Register(*registry_)),
      queue_seconds_(prometheus::BuildHistogram()
                         .Name("care_queue_duration_seconds")
                         .Help("Time a request waited in its model's batching queue.")
                         .Register(*registry_)),
      preprocess_seconds_(prometheus::BuildHistogram()
                              .Name("care_preprocess_duration_seconds")
                              .Help("Image decoding and resizing time per request.")
                              .Register(*registry_)),
      postprocess_seconds_(prometheus::BuildHistogram()
                               .Name("care_postprocess_duration_seconds")
                               .Help("Time turning a request's network outputs into its answer.")
                               .Register(*registry_)),
      inference_seconds_(prometheus::BuildHistogram()
                             .Name("care_inference_duration_seconds")
                             .Help("Network time per batch (normalisation into the batch tensor included).")
                             .Register(*registry_)),
      batch_size_(prometheus::BuildHistogram()
                      .Name("care_batch_size")
                      .Help("Requests per batch run.")
                      .Register(*registry_)),
      batches_(prometheus::BuildCounter()
                   .Name("care_batches_total")
                   .Help("Batches run, by the LibTorch intra-op threads they ran with (a batch running alone gets "
                         "--lone_batch_threads).")
                   .Register(*registry_)),
      shed_(prometheus::BuildCounter()
                .Name("care_requests_shed_total")
                .Help("Requests answered without being computed, by reason: queue_full (RESOURCE_EXHAUSTED at "
                      "admission), deadline_predicted (DEADLINE_EXCEEDED: could not finish in time given the queue "
                      "ahead and the batch times), deadline_passed, cancelled.")
                .Register(*registry_)),
      queue_depth_(prometheus::BuildGauge()
                       .Name("care_queue_depth")
                       .Help("Requests waiting in the model's batching queue.")
                       .Register(*registry_)),
      inflight_(prometheus::BuildGauge()
                    .Name("care_inflight_requests")
                    .Help("Requests accepted for the model and not yet answered.")
                    .Register(*registry_)),
      queue_capacity_(prometheus::BuildGauge()
                          .Name("care_queue_capacity")
                          .Help("Most requests the model's queue holds (batching.queue_capacity); one more is "
                                "refused with RESOURCE_EXHAUSTED.")
                          .Register(*registry_)),
      model_info_(prometheus::BuildGauge()
                      .Name("care_model_info")
                      .Help("1 for every model version being served; weights=random means its answers mean nothing; "
                            "precision is fp32, bf16 or int8.")
                      .Register(*registry_)),
      model_ready_(prometheus::BuildGauge()
                       .Name("care_model_ready")
                       .Help("1 when the model (any version) is served, 0 when it failed to load; ListModels says why.")
                       .Register(*registry_)),
      ready_(prometheus::BuildGauge()
                 .Name("care_server_ready")
                 .Help("1 while the server reports SERVING (every model loaded and warm, not draining), else 0.")
                 .Register(*registry_)
                 .Add({})) {}

ModelMetrics* ServerMetrics::ForModel(const std::string& model) {
  absl::MutexLock lock(&mu_);
  auto& slot = models_[model];
  if (!slot) {
    const prometheus::Labels labels{{"model", model}};
    slot = std::make_unique<ModelMetrics>(ModelMetrics{
        &queue_seconds_.Add(labels, LatencyBuckets()),
        &preprocess_seconds_.Add(labels, LatencyBuckets()),
        &postprocess_seconds_.Add(labels, LatencyBuckets()),
        &inference_seconds_.Add(labels, LatencyBuckets()),
        &batch_size_.Add(labels, BatchSizeBuckets()),
        &batches_,
        &shed_,
        model,
        &queue_depth_.Add(labels),
        &queue_capacity_.Add(labels),
        &inflight_.Add(labels),
    });
  }
  return slot.get();
}

void ModelMetrics::CountBatch(int threads) const {
  batches->Add({{"model", model}, {"threads", std::to_string(threads)}}).Increment();
}

void ModelMetrics::CountShed(const std::string& reason) const {
  shed->Add({{"model", model}, {"reason", reason}}).Increment();
}

void ServerMetrics::ObserveRequest(const std::string& api, const std::string& method, const std::string& model,
                                   const std::string& code, absl::Duration duration) {
  requests_.Add({{"api", api}, {"method", method}, {"model", model}, {"code", code}}).Increment();
  request_seconds_.Add({{"api", api}, {"method", method}, {"model", model}}, LatencyBuckets())
      .Observe(absl::ToDoubleSeconds(duration));
}

void ServerMetrics::SetModelInfo(const std::string& model, int64_t version, const std::string& task,
                                 const std::string& architecture, const std::string& weights,
                                 const std::string& precision) {
  model_info_
      .Add({{"model", model},
            {"version", std::to_string(version)},
            {"task", task},
            {"architecture", architecture},
            {"weights", weights},
            {"precision", precision}})
      .Set(1);
}

std::map<std::string, RequestStats> ServerMetrics::InferenceStats() const {
  auto label = [](const prometheus::ClientMetric& metric, const std::string& name) -> std::string {
    for (const auto& l : metric.label) {
      if (l.name == name) return l.value;
    }
    return "";
  };
  auto inference = [&](const prometheus::ClientMetric& metric) {
    const std::string method = label(metric, "method");
    return !label(metric, "model").empty() &&
           (method == "Classify" || method == "Detect" || method == "Segment" || method == "ModelInfer");
  };
  std::map<std::string, RequestStats> stats;
  for (const auto& family : requests_.Collect()) {
    for (const auto& metric : family.metric) {
      if (!inference(metric)) continue;
      RequestStats& s = stats[label(metric, "model")];
      const auto n = static_cast<uint64_t>(metric.counter.value);
      (label(metric, "code") == "OK" ? s.ok : s.failed) += n;
    }
  }
  for (const auto& family : request_seconds_.Collect()) {
    for (const auto& metric : family.metric) {
      if (!inference(metric)) continue;
      RequestStats& s = stats[label(metric, "model")];
      const auto& buckets = metric.histogram.bucket;
      if (s.buckets.empty()) {
        for (const auto& b : buckets) s.buckets.emplace_back(b.upper_bound, 0);
      }
      // Every series has the same bounds (LatencyBuckets()).
      for (size_t i = 0; i < buckets.size() && i < s.buckets.size(); ++i) {
        s.buckets[i].second += buckets[i].cumulative_count;
      }
      s.seconds += metric.histogram.sample_sum;
    }
  }
  return stats;
}

namespace {

class ProcessCollector : public prometheus::Collectable {
 public:
  ProcessCollector() : ticks_(sysconf(_SC_CLK_TCK)), page_size_(sysconf(_SC_PAGESIZE)) {
    start_time_ = ReadStartTime();
  }

  std::vector<prometheus::MetricFamily> Collect() const override {
    std::vector<prometheus::MetricFamily> out;
    auto add = [&](const char* name, const char* help, prometheus::MetricType type, double value) {
      prometheus::MetricFamily family{name, help, type, {}};
      prometheus::ClientMetric metric;
      if (type == prometheus::MetricType::Counter) {
        metric.counter.value = value;
      } else {
        metric.gauge.value = value;
      }
      family.metric.push_back(std::move(metric));
      out.push_back(std::move(family));
    };
    std::vector<std::string> stat = ReadStatFields();
    // Index i is field i + 3 of proc(5): utime 14, stime 15, num_threads 20, vsize 23, rss 24.
    if (stat.size() > 21) {
      double utime = 0, stime = 0, threads = 0, vsize = 0, rss = 0;
      absl::SimpleAtod(stat[11], &utime);
      absl::SimpleAtod(stat[12], &stime);
      absl::SimpleAtod(stat[17], &threads);
      absl::SimpleAtod(stat[20], &vsize);
      absl::SimpleAtod(stat[21], &rss);
      add("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.",
          prometheus::MetricType::Counter, (utime + stime) / ticks_);
      add("process_resident_memory_bytes", "Resident memory size in bytes.", prometheus::MetricType::Gauge,
          rss * page_size_);
      add("process_virtual_memory_bytes", "Virtual memory size in bytes.", prometheus::MetricType::Gauge, vsize);
      add("process_threads", "Number of OS threads in the process.", prometheus::MetricType::Gauge, threads);
    }
    add("process_start_time_seconds", "Start time of the process since unix epoch in seconds.",
        prometheus::MetricType::Gauge, start_time_);
    std::error_code ec;
    double fds = 0;
    for (auto it = std::filesystem::directory_iterator("/proc/self/fd", ec);
         !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
      ++fds;
    }
    add("process_open_fds", "Number of open file descriptors.", prometheus::MetricType::Gauge, fds);
    rlimit limit{};
    if (getrlimit(RLIMIT_NOFILE, &limit) == 0) {
      add("process_max_fds", "Maximum number of open file descriptors.", prometheus::MetricType::Gauge,
          static_cast<double>(limit.rlim_cur));
    }
    return out;
  }

 private:
  // The fields of /proc/self/stat after the parenthesised command name (which may hold
  // spaces): index 0 is field 3 (state), starttime (22) is index 19.
  static std::vector<std::string> ReadStatFields() {
    std::ifstream in("/proc/self/stat");
    std::string line;
    std::getline(in, line);
    const size_t close = line.rfind(')');
    if (close == std::string::npos) return {};
    std::vector<std::string> fields = absl::StrSplit(line.substr(close + 2), ' ', absl::SkipEmpty());
    return fields;
  }

  double ReadStartTime() const {
    std::vector<std::string> stat = ReadStatFields();
    double start_ticks = 0;
    if (stat.size() <= 19 || !absl::SimpleAtod(stat[19], &start_ticks)) return 0;
    std::ifstream in("/proc/stat");
    for (std::string line; std::getline(in, line);) {
      if (line.rfind("btime ", 0) == 0) {
        double boot = 0;
        absl::SimpleAtod(line.substr(6), &boot);
        return boot + start_ticks / ticks_;
      }
    }
    return 0;
  }

  const double ticks_;
  const double page_size_;
  double start_time_ = 0;
};

}  // namespace

std::shared_ptr<prometheus::Collectable> MakeProcessCollector() { return std::make_shared<ProcessCollector>(); }

}  // namespace careserve
