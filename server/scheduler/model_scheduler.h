// One model version's dynamic batching and execution: requests (already decoded and
// resized) wait in a Batcher; each executor takes a batch, normalises its images straight
// into a reusable batch buffer, runs the TorchScript model once and hands every request
// its row of the outputs.
#pragma once

#include <atomic>
#include <memory>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/batching/batcher.h"
#include "server/engine/torch_model.h"
#include "server/metrics/metrics.h"
#include "server/preprocess/resize.h"
#include "server/repository/model_config.h"

namespace careserve {

// One image waiting for inference: the batcher's task.
class InferenceRequest {
 public:
  // Called exactly once: with OK, the batch outputs and this request's row in them; or
  // with the reason the request was not run (outputs null).
  using Done = absl::AnyInvocable<void(absl::Status status, const BatchOutputs* outputs, int row) &&>;

  InferenceRequest(ResizedImage image, absl::Time deadline, const std::atomic<bool>* cancelled, Done done)
      : image_(std::move(image)), deadline_(deadline), cancelled_(cancelled), done_(std::move(done)) {}

  const ResizedImage& image() const { return image_; }
  absl::Time deadline() const { return deadline_; }
  bool cancelled() const { return cancelled_ != nullptr && cancelled_->load(std::memory_order_relaxed); }
  void Fail(absl::Status status) { std::move(done_)(std::move(status), nullptr, -1); }
  void Complete(const BatchOutputs& outputs, int row) { std::move(done_)(absl::OkStatus(), &outputs, row); }

 private:
  ResizedImage image_;
  absl::Time deadline_;
  const std::atomic<bool>* cancelled_;
  Done done_;
};

class ModelScheduler {
 public:
  // `spec`, `model` and `metrics` must outlive the scheduler (the repository owns them).
  ModelScheduler(const ModelSpec& spec, const TorchModel* model, ModelMetrics* metrics);
  // Runs what is queued, then stops.
  ~ModelScheduler();

  // Queues *request (taking it), or returns why not (RESOURCE_EXHAUSTED when the queue is
  // full, UNAVAILABLE when stopping) and leaves it with the caller. Either way it ends the
  // request's admission (see Admit): do not call Arrived for it as well.
  absl::Status Submit(std::unique_ptr<InferenceRequest>* request);

  // Runs `runs` all-zero batches of 1 and of max_batch_size images and checks the outputs
  // have the task's signature (classification: [N, num_classes]; detection: boxes
  // [N, K, 4], scores [N, K], labels [N, K]; segmentation: [N, num_classes, H/4, W/4]).
  absl::Status Warmup(int runs);

  void Stop();
  int QueueDepth() const { return batcher_->QueueDepth(); }

  // Admits a request for preprocessing, or returns RESOURCE_EXHAUSTED when the requests
  // being preprocessed plus those queued already fill queue_capacity: under overload the
  // refusal comes before the image is decoded, and the backlog (memory, latency) of
  // admitted requests stays bounded by the queue. An admitted request is arriving: the
  // batcher waits for it (up to max_queue_delay) rather than run a partial batch without it.
  absl::Status Admit();
  // It will never be submitted (answered early). Call at most once per admission, and not
  // for one that went to Submit.
  void Arrived() {
    if (arriving_.fetch_sub(1) == 1) batcher_->Wake();
  }

 private:
  using Batch = Batcher<InferenceRequest>::Batch;
  void RunBatch(Batch batch);
  absl::Status CheckOutputs(const BatchOutputs& outputs, int batch) const;
  // A batch input buffer, max_batch_size x 3 x H x W floats; one per executor at most.
  std::unique_ptr<std::vector<float>> TakeBuffer();
  void ReturnBuffer(std::unique_ptr<std::vector<float>> buffer);

  const ModelSpec& spec_;
  const TorchModel* const model_;
  ModelMetrics* const metrics_;
  absl::Mutex buffers_mu_;
  std::vector<std::unique_ptr<std::vector<float>>> buffers_ ABSL_GUARDED_BY(buffers_mu_);
  std::atomic<int> arriving_{0};
  std::unique_ptr<Batcher<InferenceRequest>> batcher_;
};

}  // namespace careserve
