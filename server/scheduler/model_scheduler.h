// One model version on the shared scheduler: its queue, and the batch it runs there. Each
// batch normalises its images straight into a reusable batch buffer, runs the TorchScript
// model once on the engine thread it was given and hands every request its row of the
// outputs.
#pragma once

#include <atomic>
#include <memory>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/engine/torch_model.h"
#include "server/metrics/metrics.h"
#include "server/preprocess/resize.h"
#include "server/repository/model_config.h"
#include "server/scheduler/batch_scheduler.h"

namespace careserve {

// One image waiting for inference.
class InferenceRequest final : public BatchTask {
 public:
  // Called exactly once: with OK, the batch outputs and this request's row in them; or
  // with the reason the request was not run (outputs null).
  using Done = absl::AnyInvocable<void(absl::Status status, const BatchOutputs* outputs, int row) &&>;

  // `tensor` empty: the network input is normalised from `image`'s pixels; else it is
  // `tensor` (3 x height x width floats, already normalised) and `image` only says how it
  // maps back to the source.
  InferenceRequest(ResizedImage image, std::vector<float> tensor, absl::Time deadline,
                   const std::atomic<bool>* cancelled, Done done)
      : image_(std::move(image)),
        tensor_(std::move(tensor)),
        deadline_(deadline),
        cancelled_(cancelled),
        done_(std::move(done)) {}

  const ResizedImage& image() const { return image_; }
  const std::vector<float>& tensor() const { return tensor_; }
  absl::Time deadline() const override { return deadline_; }
  bool cancelled() const override { return cancelled_ != nullptr && cancelled_->load(std::memory_order_relaxed); }
  void Fail(absl::Status status) override { std::move(done_)(std::move(status), nullptr, -1); }
  void Complete(const BatchOutputs& outputs, int row) { std::move(done_)(absl::OkStatus(), &outputs, row); }

 private:
  ResizedImage image_;
  std::vector<float> tensor_;
  absl::Time deadline_;
  const std::atomic<bool>* cancelled_;
  Done done_;
};

class ModelScheduler {
 public:
  // `spec`, `model`, `metrics` and `scheduler` must outlive this (the repository owns the
  // first three, the server the scheduler).
  ModelScheduler(const ModelSpec& spec, const TorchModel* model, ModelMetrics* metrics, BatchPolicy policy,
                 SharedBatchScheduler* scheduler);
  // Runs what is queued, then stops.
  ~ModelScheduler();

  // Before decoding: counts the request against the queue's capacity (see BatchQueue::Admit).
  absl::Status Admit() { return queue_->Admit(); }
  // An admitted request answered before it was submitted.
  void Abandon() { queue_->Abandon(); }
  // Queues an admitted request (taking it), or returns why not and leaves it with the caller.
  absl::Status Submit(std::unique_ptr<InferenceRequest>* request);

  // `runs` passes of all-zero batches of 1, 2, 4, ... up to max_batch_size images (and of
  // 1 alone on the lone batch threads), on the engine threads. Checks the outputs have the
  // task's signature (classification: [N, num_classes]; detection: boxes [N, K, 4], scores
  // [N, K], labels [N, K]; segmentation: [N, num_classes, H/4, W/4]), and gives the queue
  // the last pass's batch times, its batch-time curve.
  absl::Status Warmup(int runs);

  void Stop() { queue_->Stop(); }
  int QueueDepth() const { return queue_->QueueDepth(); }
  absl::Duration EstimatedBatchTime(int batch) const { return queue_->EstimatedBatchTime(batch); }

 private:
  void RunBatch(Batch batch);
  absl::Status CheckOutputs(const BatchOutputs& outputs, int batch) const;
  // A batch input buffer, max_batch_size x 3 x H x W floats; one per engine thread at most.
  std::unique_ptr<std::vector<float>> TakeBuffer();
  void ReturnBuffer(std::unique_ptr<std::vector<float>> buffer);

  const ModelSpec& spec_;
  const TorchModel* const model_;
  ModelMetrics* const metrics_;
  SharedBatchScheduler* const scheduler_;
  absl::Mutex buffers_mu_;
  std::vector<std::unique_ptr<std::vector<float>>> buffers_ ABSL_GUARDED_BY(buffers_mu_);
  std::unique_ptr<BatchQueue> queue_;
};

}  // namespace careserve
