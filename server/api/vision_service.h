// care.vision.v1.VisionService on gRPC's callback API: a thin translation from RPCs onto
// the model repository and the schedulers. No thread is held while a request waits:
// decoding runs on the preprocessing pool, inference on the model's executors, and the
// answer is sent from whichever thread finishes the work.
#pragma once

#include <atomic>

#include "care/vision/v1/vision.grpc.pb.h"
#include "server/common/thread_pool.h"
#include "server/metrics/metrics.h"
#include "server/preprocess/image.h"
#include "server/repository/model_repository.h"

namespace careserve {

class VisionService final : public care::vision::v1::VisionService::CallbackService {
 public:
  // `metrics` and `preprocess` must outlive the service.
  VisionService(ServerMetrics* metrics, ThreadPool* preprocess, DecodeLimits limits);

  // Until this is called, model RPCs answer UNAVAILABLE (the models are loading).
  void SetRepository(const ModelRepository* repository) { repository_.store(repository); }
  // From now on model RPCs answer UNAVAILABLE: the server is shutting down.
  void StartDraining() { draining_.store(true); }
  // RPCs received and not yet answered.
  int InFlight() const { return active_.load(); }

  grpc::ServerUnaryReactor* Classify(grpc::CallbackServerContext* context,
                                     const care::vision::v1::ClassifyRequest* request,
                                     care::vision::v1::ClassifyResponse* response) override;
  grpc::ServerUnaryReactor* Detect(grpc::CallbackServerContext* context,
                                   const care::vision::v1::DetectRequest* request,
                                   care::vision::v1::DetectResponse* response) override;
  grpc::ServerUnaryReactor* Segment(grpc::CallbackServerContext* context,
                                    const care::vision::v1::SegmentRequest* request,
                                    care::vision::v1::SegmentResponse* response) override;
  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* context,
                                       const care::vision::v1::ListModelsRequest* request,
                                       care::vision::v1::ListModelsResponse* response) override;

 private:
  class Call;
  // Builds the answer from one request's outputs; `image` says how the request's image
  // was resized (its pixels are gone by then).
  using Respond = absl::AnyInvocable<absl::Status(const RowOutputs& outputs, const ResizedImage& image)>;
  // Where Respond runs: on the executor thread (cheap answers: classification), or on
  // the worker pool, so that the executor goes on to the next batch (NMS, mask resize).
  enum class RespondOn { kExecutor, kPool };

  // The repository, or why requests cannot be served now.
  absl::StatusOr<const ModelRepository*> Available() const;
  // Resolves the model for `call` (setting its metrics label) or answers the call.
  ServedModel* ResolveOrAnswer(Call* call, const std::string& name, int64_t version, Task task);
  // Decode and resize on the pool, then batch, then `respond`, then answer.
  void Infer(Call* call, ServedModel* model, const care::vision::v1::Image* image, RespondOn where, Respond respond);

  ServerMetrics* const metrics_;
  ThreadPool* const preprocess_;
  const DecodeLimits limits_;
  std::atomic<const ModelRepository*> repository_{nullptr};
  std::atomic<bool> draining_{false};
  // RPCs received and not yet answered.
  std::atomic<int> active_{0};
};

}  // namespace careserve
