// The Prometheus metrics of the service contract (docs/service.md), registered with
// prometheus-cpp, plus the standard process_* metrics read from /proc.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace careserve {

// The per-model series, created once per model and kept (prometheus-cpp returns stable
// references).
struct ModelMetrics {
  prometheus::Histogram* queue_seconds;
  prometheus::Histogram* preprocess_seconds;
  prometheus::Histogram* postprocess_seconds;
  prometheus::Histogram* inference_seconds;
  prometheus::Histogram* batch_size;
  // care_batches_total{model, threads}: one more batch run with `threads` intra-op threads.
  void CountBatch(int threads) const;
  prometheus::Family<prometheus::Counter>* batches;
  // care_requests_shed_total{model, reason}: a request answered without running (see
  // Shed in server/scheduler/batch_scheduler.h for the reasons).
  void CountShed(const std::string& reason) const;
  prometheus::Family<prometheus::Counter>* shed;
  std::string model;
  prometheus::Gauge* queue_depth;
  prometheus::Gauge* queue_capacity;
  prometheus::Gauge* inflight;
};

// A model's inference requests of every API so far (Classify, Detect, Segment, ModelInfer),
// read back from care_requests_total and care_request_duration_seconds.
struct RequestStats {
  uint64_t ok = 0;      // answered OK
  uint64_t failed = 0;  // answered with an error
  // care_request_duration_seconds: upper bound -> cumulative count (the last bound is
  // +Inf), and the sum of the durations.
  std::vector<std::pair<double, uint64_t>> buckets;
  double seconds = 0;
};

class ServerMetrics {
 public:
  ServerMetrics();

  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }

  ModelMetrics* ForModel(const std::string& model);
  // A finished request: care_requests_total and care_request_duration_seconds. `api`:
  // vision (care.vision.v1), oip_grpc or oip_http (the Open Inference Protocol).
  void ObserveRequest(const std::string& api, const std::string& method, const std::string& model, const std::string& code,
                      absl::Duration duration);
  // care_server_ready: 1 while health is SERVING (models warm, not draining), else 0.
  void SetReady(bool ready) { ready_.Set(ready ? 1 : 0); }
  // care_model_info{model, version, task, architecture, weights, precision} = 1.
  // care_model_ready{model}: 1 when at least one version of the model is served, 0 when
  // it failed to load (ListModels and the log say why).
  void SetModelReady(const std::string& model, bool ready) { model_ready_.Add({{"model", model}}).Set(ready ? 1 : 0); }
  void SetModelInfo(const std::string& model, int64_t version, const std::string& task,
                    const std::string& architecture, const std::string& weights, const std::string& precision);
  // Per model name, the models that have been asked anything.
  std::map<std::string, RequestStats> InferenceStats() const;

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>& requests_;
  prometheus::Family<prometheus::Histogram>& request_seconds_;
  prometheus::Family<prometheus::Histogram>& queue_seconds_;
  prometheus::Family<prometheus::Histogram>& preprocess_seconds_;
  prometheus::Family<prometheus::Histogram>& postprocess_seconds_;
  prometheus::Family<prometheus::Histogram>& inference_seconds_;
  prometheus::Family<prometheus::Histogram>& batch_size_;
  prometheus::Family<prometheus::Counter>& batches_;
  prometheus::Family<prometheus::Counter>& shed_;
  prometheus::Family<prometheus::Gauge>& queue_depth_;
  prometheus::Family<prometheus::Gauge>& inflight_;
  prometheus::Family<prometheus::Gauge>& queue_capacity_;
  prometheus::Family<prometheus::Gauge>& model_info_;
  prometheus::Family<prometheus::Gauge>& model_ready_;
  prometheus::Gauge& ready_;

  absl::Mutex mu_;
  std::map<std::string, std::unique_ptr<ModelMetrics>> models_ ABSL_GUARDED_BY(mu_);
};

// process_cpu_seconds_total, process_resident_memory_bytes, process_virtual_memory_bytes,
// process_start_time_seconds, process_open_fds, process_max_fds, process_threads: the
// names and meanings of the Prometheus client libraries' process collector, from /proc.
std::shared_ptr<prometheus::Collectable> MakeProcessCollector();

}  // namespace careserve
