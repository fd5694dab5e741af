#include "server/scheduler/model_scheduler.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"

namespace careserve {
namespace {

std::string ShapeText(const std::vector<int64_t>& shape) { return absl::StrCat("[", absl::StrJoin(shape, ", "), "]"); }

}  // namespace

ModelScheduler::ModelScheduler(const ModelSpec& spec, const TorchModel* model, ModelMetrics* metrics,
                               BatchPolicy policy, SharedBatchScheduler* scheduler)
    : spec_(spec), model_(model), metrics_(metrics), scheduler_(scheduler) {
  metrics_->queue_capacity->Set(spec_.batching.queue_capacity);
  QueueOptions options = spec_.batching;
  options.name = spec_.name;
  options.policy = policy;
  queue_ = scheduler_->AddQueue(
      options, [this](Batch batch) { RunBatch(std::move(batch)); },
      [this](Shed reason) { metrics_->CountShed(ShedName(reason)); });
}

ModelScheduler::~ModelScheduler() { Stop(); }

absl::Status ModelScheduler::Submit(std::unique_ptr<InferenceRequest>* request) {
  std::unique_ptr<BatchTask> task = std::move(*request);
  absl::Status status = queue_->Submit(&task);
  if (!status.ok()) request->reset(static_cast<InferenceRequest*>(task.release()));
  metrics_->queue_depth->Set(queue_->QueueDepth());
  return status;
}

std::unique_ptr<std::vector<float>> ModelScheduler::TakeBuffer() {
  {
    absl::MutexLock lock(&buffers_mu_);
    if (!buffers_.empty()) {
      auto buffer = std::move(buffers_.back());
      buffers_.pop_back();
      return buffer;
    }
  }
  return std::make_unique<std::vector<float>>(static_cast<size_t>(spec_.batching.max_batch_size) * 3 *
                                              spec_.input.height * spec_.input.width);
}

void ModelScheduler::ReturnBuffer(std::unique_ptr<std::vector<float>> buffer) {
  absl::MutexLock lock(&buffers_mu_);
  buffers_.push_back(std::move(buffer));
}

void ModelScheduler::RunBatch(Batch batch) {
  const absl::Time start = absl::Now();
  metrics_->queue_depth->Set(queue_->QueueDepth());
  const int n = static_cast<int>(batch.size());
  const size_t image_floats = static_cast<size_t>(3) * spec_.input.height * spec_.input.width;
  std::unique_ptr<std::vector<float>> buffer = TakeBuffer();
  for (int i = 0; i < n; ++i) {
    metrics_->queue_seconds->Observe(absl::ToDoubleSeconds(start - batch[i].enqueued));
    const auto& request = static_cast<const InferenceRequest&>(*batch[i].task);
    if (request.tensor().size() == image_floats) {
      std::copy(request.tensor().begin(), request.tensor().end(), buffer->data() + i * image_floats);
    } else {
      NormalizeInto(request.image(), spec_.input, buffer->data() + i * image_floats);
    }
  }
  // Mask R-CNN clips its boxes to each image's part of the letterbox (mmdetection's img_shape).
  std::vector<int64_t> image_sizes;
  if (spec_.task == Task::kInstanceSegmentation) {
    for (int i = 0; i < n; ++i) {
      const auto& request = static_cast<const InferenceRequest&>(*batch[i].task);
      const bool tensor = request.tensor().size() == image_floats;
      image_sizes.push_back(tensor ? spec_.input.height : request.image().height);
      image_sizes.push_back(tensor ? spec_.input.width : request.image().width);
    }
  }
  absl::StatusOr<BatchOutputs> outputs = model_->Run(buffer->data(), n, spec_.input.height, spec_.input.width,
                                                     image_sizes.empty() ? nullptr : &image_sizes);
  ReturnBuffer(std::move(buffer));
  metrics_->inference_seconds->Observe(absl::ToDoubleSeconds(absl::Now() - start));
  metrics_->batch_size->Observe(n);
  if (outputs.ok()) metrics_->CountBatch(outputs->intra_op_threads);
  absl::Status status = outputs.ok() ? CheckOutputs(*outputs, n) : outputs.status();
  for (int i = 0; i < n; ++i) {
    auto& request = static_cast<InferenceRequest&>(*batch[i].task);
    if (status.ok()) {
      request.Complete(*outputs, i);
    } else {
      request.Fail(status);
    }
  }
}

absl::Status ModelScheduler::CheckOutputs(const BatchOutputs& outputs, int batch) const {
  const auto& t = outputs.tensors;
  const int64_t n = batch, c = spec_.num_classes;
  switch (spec_.task) {
    case Task::kClassification:
      if (t.size() == 1 && t[0].dtype == DType::kFloat32 && t[0].shape == std::vector<int64_t>{n, c}) {
        return absl::OkStatus();
      }
      return absl::InternalError(absl::StrCat("classification model ", spec_.name, " returned ", t.size(),
                                              " tensor(s), first ", t.empty() ? "-" : ShapeText(t[0].shape),
                                              "; expected one float tensor [", n, ", ", c, "]"));
    case Task::kDetection:
    case Task::kInstanceSegmentation: {
      // (boxes [N, K, 4], scores [N, K], labels [N, K] int64), and for Mask R-CNN masks [N, K, M, M]
      const bool instances = spec_.task == Task::kInstanceSegmentation;
      const bool boxes_ok = t.size() == (instances ? 4u : 3u) && t[0].shape.size() == 3 && t[0].shape[0] == n &&
                            t[0].shape[2] == 4 && t[1].shape == std::vector<int64_t>{n, t[0].shape[1]} &&
                            t[2].shape == t[1].shape && t[2].dtype == DType::kInt64;
      if (boxes_ok && (!instances || (t[3].shape.size() == 4 && t[3].shape[0] == n && t[3].shape[1] == t[0].shape[1] &&
                                      t[3].shape[2] > 0 && t[3].shape[2] == t[3].shape[3]))) {
        return absl::OkStatus();
      }
      return absl::InternalError(absl::StrCat(
          TaskName(spec_.task), " model ", spec_.name, " must return (boxes [N, K, 4], scores [N, K], labels [N, K] int64",
          instances ? ", masks [N, K, M, M]" : "", ") for N = ", n, "; got ", t.size(), " tensor(s)",
          t.empty() ? "" : absl::StrCat(", first ", ShapeText(t[0].shape))));
    }
    case Task::kSegmentation: {
      const std::vector<int64_t> expected{n, c, spec_.input.height / 4, spec_.input.width / 4};
      if (t.size() == 1 && t[0].dtype == DType::kFloat32 && t[0].shape == expected) return absl::OkStatus();
      return absl::InternalError(absl::StrCat("segmentation model ", spec_.name, " returned ", t.size(),
                                              " tensor(s), first ", t.empty() ? "-" : ShapeText(t[0].shape),
                                              "; expected one float tensor ", ShapeText(expected)));
    }
  }
  return absl::InternalError("unknown task");
}

absl::Status ModelScheduler::Warmup(int runs) {
  std::vector<int> sizes;
  for (int b = 1; b < spec_.batching.max_batch_size; b *= 2) sizes.push_back(b);
  sizes.push_back(spec_.batching.max_batch_size);
  const int lone = scheduler_->options().lone_batch_threads;
  const bool lone_differs = lone > scheduler_->options().threads_per_batch;
  std::unique_ptr<std::vector<float>> buffer = TakeBuffer();
  std::fill(buffer->begin(), buffer->end(), 0.0f);
  absl::Status status;
  auto run = [&](int n, int threads) -> absl::Duration {
    absl::Time start;
    absl::Duration took;
    scheduler_->RunOnEngineThread(
        [&] {
          start = absl::Now();
          absl::StatusOr<BatchOutputs> outputs = model_->Run(buffer->data(), n, spec_.input.height, spec_.input.width);
          took = absl::Now() - start;
          status = outputs.ok() ? CheckOutputs(*outputs, n) : outputs.status();
        },
        threads);
    return took;
  };
  for (int pass = 0; pass < std::max(runs, 1) && status.ok(); ++pass) {
    const bool last = pass == std::max(runs, 1) - 1;
    for (int n : sizes) {
      const absl::Duration took = run(n, 0);
      if (!status.ok()) break;
      if (last) queue_->RecordBatchTime(n, took);
    }
    if (status.ok() && lone_differs) {
      const absl::Duration took = run(1, lone);
      if (status.ok() && last) queue_->RecordBatchTime(1, took, /*lone=*/true);
    }
  }
  ReturnBuffer(std::move(buffer));
  return status;
}

}  // namespace careserve
