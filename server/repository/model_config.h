// A model's config.json (schema: proto/careserve/config/v1/model_config.proto), read,
// completed with its task's defaults and validated, plus its labels file.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "server/scheduler/batch_scheduler.h"
#include "server/postprocess/detect.h"
#include "server/preprocess/resize.h"

namespace careserve {

// kInstanceSegmentation (Mask R-CNN) answers Detect, with a mask per detection.
enum class Task { kClassification, kDetection, kSegmentation, kInstanceSegmentation };
inline constexpr Task kAllTasks[] = {Task::kClassification, Task::kDetection, Task::kSegmentation,
                                     Task::kInstanceSegmentation};

// The RPC that serves a task's models: Detect serves detection and instance segmentation.
Task ServingTask(Task task);

const char* TaskName(Task task);
absl::StatusOr<Task> ParseTask(const std::string& name);

struct ModelSpec {
  std::string name;
  Task task = Task::kClassification;
  std::string architecture;
  int num_classes = 0;
  // "random" or "checkpoint".
  std::string weights_source;
  // config.json's "precision" ("" when absent): fp32, bf16 or int8.
  std::string precision;
  InputSpec input;
  // batching.instances 0 (left out of config.json): every engine thread may run the model.
  QueueOptions batching;
  // Detection postprocessing defaults (a request's own values win).
  DetectOptions postprocess;
  std::vector<std::string> labels;
  bool is_default = false;
};

// Reads `model_dir`/config.json and its labels file. The model's name must equal the
// directory's. Errors say which file and which field was wrong.
absl::StatusOr<ModelSpec> ReadModelSpec(const std::string& model_dir);

// Parses config.json text; `labels` are those of the labels file (its line count is the
// default num_classes). Exposed for tests.
absl::StatusOr<ModelSpec> ParseModelSpec(const std::string& json, const std::vector<std::string>& labels);

// The labels file: one class name per line, line i = class i; trailing empty lines ignored.
absl::StatusOr<std::vector<std::string>> ReadLabels(const std::string& path);

}  // namespace careserve
