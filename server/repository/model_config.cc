#include "server/repository/model_config.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "careserve/config/v1/model_config.pb.h"
#include "google/protobuf/util/json_util.h"
#include "server/engine/precision.h"

namespace careserve {
namespace {

namespace fs = std::filesystem;
using careserve::config::v1::ModelConfig;

constexpr char kConfigFile[] = "config.json";

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

absl::Status ApplyInput(const ModelConfig& config, Task task, InputSpec* input) {
  const auto& in = config.input();
  if (!config.has_input() || in.height() == 0 || in.width() == 0) {
    return absl::InvalidArgumentError("input.height and input.width are required");
  }
  input->height = in.height();
  input->width = in.width();
  const bool classification = task == Task::kClassification;
  auto resize = ParseResizeMode(in.has_resize() ? in.resize() : (classification ? "center_crop" : "letterbox"));
  if (!resize.ok()) return resize.status();
  input->resize = *resize;
  if (!classification && input->resize != ResizeMode::kLetterbox) {
    return absl::InvalidArgumentError(absl::StrCat("input.resize must be \"letterbox\" for a ", TaskName(task),
                                                   " model (its boxes and masks are mapped back through it)"));
  }
  auto interpolation =
      ParseInterpolation(in.has_interpolation() ? in.interpolation() : (classification ? "bicubic" : "bilinear"));
  if (!interpolation.ok()) return interpolation.status();
  input->interpolation = *interpolation;
  if (in.has_crop_pct()) input->crop_pct = in.crop_pct();
  if (in.mean_size() != 0 || in.std_size() != 0) {
    if (in.mean_size() != 3 || in.std_size() != 3) {
      return absl::InvalidArgumentError(absl::StrCat("input.mean and input.std need 3 values each (RGB), got ",
                                                     in.mean_size(), " and ", in.std_size()));
    }
    for (int c = 0; c < 3; ++c) {
      input->mean[c] = static_cast<float>(in.mean(c));
      input->std[c] = static_cast<float>(in.std(c));
    }
  }
  return input->Validate();
}

absl::Status ApplyBatching(const ModelConfig& config, QueueOptions* batching) {
  const auto& b = config.batching();
  if (b.has_max_batch_size()) batching->max_batch_size = b.max_batch_size();
  if (b.has_max_queue_delay_us()) batching->max_queue_delay = absl::Microseconds(b.max_queue_delay_us());
  if (b.has_queue_capacity()) batching->queue_capacity = b.queue_capacity();
  if (b.has_instances()) batching->instances = b.instances();
  if (b.has_instances() && b.instances() < 1) {
    return absl::InvalidArgumentError(absl::StrCat("batching.instances must be >= 1, got ", b.instances()));
  }
  absl::Status status = batching->Validate();
  if (!status.ok()) return absl::InvalidArgumentError(absl::StrCat("batching.", status.message()));
  return absl::OkStatus();
}

absl::Status ApplyPostprocess(const ModelConfig& config, DetectOptions* post) {
  const auto& p = config.postprocess();
  if (p.has_score_threshold()) post->score_threshold = p.score_threshold();
  if (p.has_iou_threshold()) post->iou_threshold = p.iou_threshold();
  if (p.has_max_detections()) post->max_detections = p.max_detections();
  if (!(post->score_threshold >= 0.0f && post->score_threshold <= 1.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("postprocess.score_threshold must be in [0, 1], got ", post->score_threshold));
  }
  if (!(post->iou_threshold > 0.0f && post->iou_threshold <= 1.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("postprocess.iou_threshold must be in (0, 1], got ", post->iou_threshold));
  }
  if (post->max_detections < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("postprocess.max_detections must be >= 1, got ", post->max_detections));
  }
  return absl::OkStatus();
}

}  // namespace

const char* TaskName(Task task) {
  switch (task) {
    case Task::kClassification: return "classification";
    case Task::kDetection: return "detection";
    case Task::kSegmentation: return "segmentation";
    case Task::kInstanceSegmentation: return "instance_segmentation";
  }
  return "classification";
}

Task ServingTask(Task task) { return task == Task::kInstanceSegmentation ? Task::kDetection : task; }

absl::StatusOr<Task> ParseTask(const std::string& name) {
  for (Task t : kAllTasks) {
    if (name == TaskName(t)) return t;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "task must be classification, detection, segmentation or instance_segmentation, got \"", name, "\""));
}

absl::StatusOr<std::vector<std::string>> ReadLabels(const std::string& path) {
  auto text = ReadFile(path);
  if (!text.ok()) return text.status();
  std::vector<std::string> labels;
  std::istringstream in(*text);
  for (std::string line; std::getline(in, line);) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    labels.push_back(line);
  }
  while (!labels.empty() && labels.back().empty()) labels.pop_back();
  if (labels.empty()) return absl::InvalidArgumentError(absl::StrCat(path, " has no labels"));
  for (size_t i = 0; i < labels.size(); ++i) {
    if (labels[i].empty()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": line ", i + 1, " is empty (class ", i, " needs a name)"));
    }
  }
  return labels;
}

namespace {

// config.json -> ModelConfig; keys the schema does not know are ignored (keys may be
// added, like the exporter's `export` report).
absl::StatusOr<ModelConfig> ParseConfig(const std::string& json) {
  ModelConfig config;
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = true;
  auto parsed = google::protobuf::util::JsonStringToMessage(json, &config, options);
  if (!parsed.ok()) return absl::InvalidArgumentError(absl::StrCat("not valid: ", parsed.message().as_string()));
  return config;
}

absl::StatusOr<ModelSpec> SpecFromConfig(const ModelConfig& config, const std::vector<std::string>& labels) {
  ModelSpec spec;
  spec.name = config.name();
  if (spec.name.empty()) return absl::InvalidArgumentError("name is required");
  auto task = ParseTask(config.task());
  if (!task.ok()) return task.status();
  spec.task = *task;
  spec.architecture = config.architecture();
  spec.weights_source = config.weights().source();
  if (spec.weights_source.empty()) spec.weights_source = "unknown";
  if (spec.weights_source != "random" && spec.weights_source != "checkpoint" && spec.weights_source != "unknown") {
    return absl::InvalidArgumentError(absl::StrCat("weights.source must be \"random\" or \"checkpoint\", got \"",
                                                   spec.weights_source, "\""));
  }
  spec.precision = config.precision();
  if (!spec.precision.empty() && !IsKnownPrecision(spec.precision)) {
    return absl::InvalidArgumentError(
        absl::StrCat("precision must be \"fp32\", \"bf16\" or \"int8\", got \"", spec.precision, "\""));
  }
  spec.labels = labels;
  spec.num_classes = config.has_num_classes() ? config.num_classes() : static_cast<int>(labels.size());
  if (spec.num_classes < 1) {
    return absl::InvalidArgumentError(absl::StrCat("num_classes must be >= 1, got ", spec.num_classes));
  }
  if (static_cast<int>(labels.size()) != spec.num_classes) {
    return absl::InvalidArgumentError(absl::StrCat("num_classes is ", spec.num_classes, " but the labels file has ",
                                                   labels.size(), " labels"));
  }
  if (spec.task == Task::kSegmentation && spec.num_classes > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("a segmentation model has at most 65535 classes (16-bit mask), got ", spec.num_classes));
  }
  spec.is_default = config.has_default_() && config.default_();
  if (absl::Status s = ApplyInput(config, spec.task, &spec.input); !s.ok()) return s;
  if (absl::Status s = ApplyBatching(config, &spec.batching); !s.ok()) return s;
  if (absl::Status s = ApplyPostprocess(config, &spec.postprocess); !s.ok()) return s;
  return spec;
}

}  // namespace

absl::StatusOr<ModelSpec> ParseModelSpec(const std::string& json, const std::vector<std::string>& labels) {
  absl::StatusOr<ModelConfig> config = ParseConfig(json);
  if (!config.ok()) return config.status();
  return SpecFromConfig(*config, labels);
}

absl::StatusOr<ModelSpec> ReadModelSpec(const std::string& model_dir) {
  const std::string config_path = (fs::path(model_dir) / kConfigFile).string();
  auto json = ReadFile(config_path);
  if (!json.ok()) return json.status();

  absl::StatusOr<ModelConfig> config = ParseConfig(*json);
  if (!config.ok()) return absl::InvalidArgumentError(absl::StrCat(config_path, " is ", config.status().message()));
  const std::string labels_name = config->has_labels() ? config->labels() : "labels.txt";
  if (labels_name.empty() || fs::path(labels_name).is_absolute() || labels_name.find("..") != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat(config_path, ": labels must name a file inside the model directory, got \"", labels_name, "\""));
  }
  auto labels = ReadLabels((fs::path(model_dir) / labels_name).string());
  if (!labels.ok()) return labels.status();

  auto spec = SpecFromConfig(*config, *labels);
  if (!spec.ok()) return absl::Status(spec.status().code(), absl::StrCat(config_path, ": ", spec.status().message()));
  const std::string dir_name = fs::path(model_dir).filename().string();
  if (spec->name != dir_name) {
    return absl::InvalidArgumentError(absl::StrCat(config_path, ": name \"", spec->name,
                                                   "\" differs from the model's directory name \"", dir_name, "\""));
  }
  return spec;
}

}  // namespace careserve
