// What every API of the server shares (care.vision.v1, the Open Inference Protocol): the
// repository and whether requests can be served now, the count of requests in flight for
// the drain, and the way of one request's images through preprocessing, the model's
// batch queue and postprocessing to its one answer. An API validates its request, turns
// it into images and calls Infer; no thread is held while a request waits.
#pragma once

#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "care/vision/v1/vision.pb.h"
#include "grpcpp/grpcpp.h"
#include "server/common/thread_pool.h"
#include "server/metrics/metrics.h"
#include "server/preprocess/image.h"
#include "server/repository/model_repository.h"

namespace careserve {

// One request of any API, from its arrival to its one answer.
class PendingCall {
 public:
  // `api` and `method` label the request's metrics ("vision", "Classify"); they must be
  // string literals. `active` counts the requests not yet answered.
  PendingCall(ServerMetrics* metrics, std::atomic<int>* active, const char* api, const char* method,
              absl::Time deadline);
  virtual ~PendingCall() = default;

  void SetModelLabel(const std::string& model) { model_label_ = model; }
  // The request now counts as in flight for `model` until answered.
  void Accept(ServedModel* model);
  // Records the request's metrics and sends the answer; exactly once. The call may be
  // deleted as soon as this returns.
  void Answer(const absl::Status& status);

  // The client gave up, or the request failed and its other images need not run.
  void Cancel() { cancelled_.store(true, std::memory_order_relaxed); }
  bool cancelled() const { return cancelled_.load(std::memory_order_relaxed); }
  const std::atomic<bool>* cancelled_flag() const { return &cancelled_; }
  absl::Time deadline() const { return deadline_; }
  // For an API that learns the deadline from the request itself; before Infer.
  void set_deadline(absl::Time deadline) { deadline_ = deadline; }
  absl::Time start() const { return start_; }

 protected:
  // Sends the answer on the API's transport; `this` may be deleted from the moment it is called.
  virtual void Send(const absl::Status& status) = 0;

 private:
  ServerMetrics* const metrics_;
  std::atomic<int>* const active_;
  const char* const api_;
  const char* const method_;
  const absl::Time start_;
  absl::Time deadline_;
  std::string model_label_;
  prometheus::Gauge* inflight_ = nullptr;
  std::atomic<bool> cancelled_{false};
};

// A unary gRPC call on the callback API: gRPC calls OnDone after Send's Finish, which
// deletes it.
class GrpcCall final : public PendingCall, public grpc::ServerUnaryReactor {
 public:
  GrpcCall(grpc::CallbackServerContext* context, ServerMetrics* metrics, std::atomic<int>* active, const char* api,
           const char* method);
  void OnCancel() override;
  void OnDone() override;

 private:
  void Send(const absl::Status& status) override;
};

// One image of a request as it arrived: encoded or raw pixels to decode and resize, or the
// network input itself, already normalised.
struct ImageInput {
  // Not owned: lives until the request is answered.
  const care::vision::v1::Image* image = nullptr;
  // 3 x height x width floats at the model's input size, when `image` is null.
  std::vector<float> tensor;
};

class Frontend {
 public:
  // `metrics` and `preprocess` must outlive the frontend.
  Frontend(ServerMetrics* metrics, ThreadPool* preprocess, DecodeLimits limits);

  // Until this is called, model requests answer UNAVAILABLE (the models are loading).
  void SetRepository(const ModelRepository* repository) { repository_.store(repository); }
  // From now on model requests answer UNAVAILABLE: the server is shutting down.
  void StartDraining() { draining_.store(true); }
  bool draining() const { return draining_.load(); }
  // Requests received and not yet answered, of every API.
  int InFlight() const { return active_.load(); }
  std::atomic<int>* active() { return &active_; }
  ServerMetrics* metrics() const { return metrics_; }
  const DecodeLimits& limits() const { return limits_; }

  // The repository, or why requests cannot be served now (UNAVAILABLE).
  absl::StatusOr<const ModelRepository*> Available() const;
  // Resolves the model for `call` (setting its metrics label) or answers the call and
  // returns null. `task` empty: a model of any task, named.
  ServedModel* ResolveOrAnswer(PendingCall* call, const std::string& name, int64_t version, std::optional<Task> task);

  // Builds one image's part of the answer from its row of the outputs; `image` says how
  // it was resized (its pixels are gone by then). Called once per image, for different
  // images possibly at the same time on different threads.
  using Respond = absl::AnyInvocable<absl::Status(int index, const RowOutputs& outputs, const ResizedImage& image) const>;
  // After every image's Respond succeeded: completes the answer.
  using Complete = absl::AnyInvocable<absl::Status() &&>;
  // Where Respond runs: on the engine thread (cheap answers: classification), or on the
  // preprocessing pool, so that the engine goes on to the next batch (NMS, mask resize).
  enum class RespondOn { kExecutor, kPool };

  // Admits every image against the model's queue (all or none), decodes and resizes
  // them on the pool, queues each in the model's batch queue (where they join every
  // other request's images), calls `respond` for each, then `complete`, and answers the
  // call: OK, or the first image's error (the others are then dropped).
  void Infer(PendingCall* call, ServedModel* model, std::vector<ImageInput> images, RespondOn where, Respond respond,
             Complete complete);

 private:
  struct Job;
  void Preprocess(std::shared_ptr<Job> job, int index);
  static void ImageDone(const std::shared_ptr<Job>& job, absl::Status status);

  ServerMetrics* const metrics_;
  ThreadPool* const preprocess_;
  const DecodeLimits limits_;
  std::atomic<const ModelRepository*> repository_{nullptr};
  std::atomic<bool> draining_{false};
  std::atomic<int> active_{0};
};

}  // namespace careserve
