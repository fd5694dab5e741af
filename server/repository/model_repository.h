// The model repository: every model directory under --model_repository, its config, its
// versions, each version loaded, optimised, warmed up and given its own scheduler. A model
// that cannot be served is reported (log, ListModels) and skipped; the rest are served.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "server/engine/torch_model.h"
#include "server/metrics/metrics.h"
#include "server/repository/model_config.h"
#include "server/scheduler/model_scheduler.h"

namespace careserve {

struct RepositoryOptions {
  // Any model or version that fails to load makes Load fail.
  bool strict = false;
  // Warm-up passes (batch 1 and max_batch_size) before a version is served.
  int warmup_runs = 2;
  EngineOptions engine;
  // Runs every model's batches, loading and warm-up; must outlive the repository.
  SharedBatchScheduler* scheduler = nullptr;
  BatchPolicy batch_policy = BatchPolicy::kAdaptive;
};

// One loaded version, ready to take requests.
struct ServedModel {
  const ModelSpec* spec = nullptr;
  int64_t version = 0;
  ModelMetrics* metrics = nullptr;
  std::unique_ptr<TorchModel> engine;
  std::unique_ptr<ModelScheduler> scheduler;
  // fp32, bf16 or int8 (engine/precision.h); `precision_note` says when this CPU runs it slowly.
  std::string precision;
  std::string precision_note;
};

// One model directory, served or not.
struct RepositoryModel {
  std::string name;
  std::optional<ModelSpec> spec;  // absent when config.json or the labels could not be read
  std::map<int64_t, std::unique_ptr<ServedModel>> versions;  // the loaded ones
  std::vector<std::string> errors;                            // every problem found, for ListModels

  bool ready() const { return !versions.empty(); }
};

class ModelRepository {
 public:
  static absl::StatusOr<std::unique_ptr<ModelRepository>> Load(const std::string& root, const RepositoryOptions& options,
                                                               ServerMetrics* metrics);
  ~ModelRepository();

  // The version to run for a request: `name` empty means the task's default model,
  // `version` 0 the latest loaded version. NOT_FOUND for an unknown model or version,
  // FAILED_PRECONDITION for a model of another task or one that failed to load. `task`
  // empty: a model of any task, which must be named (INVALID_ARGUMENT otherwise).
  absl::StatusOr<ServedModel*> Resolve(const std::string& name, int64_t version, std::optional<Task> task) const;

  // The model directory `name`, served or not; nullptr if the repository has none.
  const RepositoryModel* Find(const std::string& name) const;

  const std::vector<std::unique_ptr<RepositoryModel>>& models() const { return models_; }

  // Refuses new requests, runs the queued ones. Idempotent.
  void Stop();

 private:
  ModelRepository() = default;
  void LoadModel(const std::string& dir, RepositoryModel* model, const RepositoryOptions& options,
                 ServerMetrics* metrics);
  void ChooseDefaults();

  std::vector<std::unique_ptr<RepositoryModel>> models_;
  std::map<Task, const RepositoryModel*> defaults_;
  std::map<Task, std::string> no_default_reason_;
};

}  // namespace careserve
