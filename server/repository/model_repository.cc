#include "server/repository/model_repository.h"

#include <algorithm>
#include <filesystem>
#include <system_error>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "server/common/log.h"
#include "server/engine/precision.h"

namespace careserve {
namespace {

namespace fs = std::filesystem;

bool IsVersionName(const std::string& name, int64_t* version) {
  if (name.empty() || name.size() > 18 || !std::all_of(name.begin(), name.end(), absl::ascii_isdigit)) return false;
  return absl::SimpleAtoi(name, version) && *version > 0;
}

std::string NameList(const std::vector<std::string>& names) {
  return names.empty() ? "none" : absl::StrJoin(names, ", ");
}

}  // namespace

ModelRepository::~ModelRepository() { Stop(); }

void ModelRepository::Stop() {
  for (auto& model : models_) {
    for (auto& [version, served] : model->versions) served->scheduler->Stop();
  }
}

absl::StatusOr<std::unique_ptr<ModelRepository>> ModelRepository::Load(const std::string& root,
                                                                        const RepositoryOptions& options,
                                                                        ServerMetrics* metrics) {
  std::error_code ec;
  if (!fs::is_directory(root, ec)) {
    return absl::NotFoundError(absl::StrCat("model repository ", root, " is not a directory"));
  }
  std::vector<fs::path> dirs;
  for (auto it = fs::directory_iterator(root, ec); !ec && it != fs::directory_iterator(); it.increment(ec)) {
    if (it->is_directory() && it->path().filename().string()[0] != '.') dirs.push_back(it->path());
  }
  if (ec) return absl::InternalError(absl::StrCat("cannot list ", root, ": ", ec.message()));
  std::sort(dirs.begin(), dirs.end());

  std::unique_ptr<ModelRepository> repo(new ModelRepository());
  for (const fs::path& dir : dirs) {
    auto model = std::make_unique<RepositoryModel>();
    model->name = dir.filename().string();
    repo->LoadModel(dir.string(), model.get(), options, metrics);
    metrics->SetModelReady(model->name, model->ready());
    if (!model->errors.empty()) {
      Log(LogLevel::kError, model->ready() ? "model partly loaded" : "model not served",
          {{"model", model->name}, {"error", absl::StrJoin(model->errors, "; ")}});
      if (options.strict) {
        return absl::FailedPreconditionError(absl::StrCat("--strict: model ", model->name, ": ",
                                                          absl::StrJoin(model->errors, "; ")));
      }
    }
    repo->models_.push_back(std::move(model));
  }
  if (repo->models_.empty()) Log(LogLevel::kWarning, "model repository is empty", {{"path", root}});
  repo->ChooseDefaults();
  return repo;
}

void ModelRepository::LoadModel(const std::string& dir, RepositoryModel* model, const RepositoryOptions& options,
                                ServerMetrics* metrics) {
  absl::StatusOr<ModelSpec> spec = ReadModelSpec(dir);
  if (!spec.ok()) {
    model->errors.push_back(std::string(spec.status().message()));
    return;
  }
  model->spec = std::move(*spec);
  const ModelSpec& s = *model->spec;

  std::vector<int64_t> versions;
  std::error_code ec;
  for (auto it = fs::directory_iterator(dir, ec); !ec && it != fs::directory_iterator(); it.increment(ec)) {
    int64_t version = 0;
    if (it->is_directory() && IsVersionName(it->path().filename().string(), &version)) versions.push_back(version);
  }
  std::sort(versions.begin(), versions.end());
  if (versions.empty()) {
    model->errors.push_back(absl::StrCat(dir, " has no version directory (1/, 2/, ... holding model.pt)"));
    return;
  }
  ModelMetrics* model_metrics = metrics->ForModel(s.name);
  for (int64_t version : versions) {
    const std::string path = (fs::path(dir) / std::to_string(version) / "model.pt").string();
    const absl::Time start = absl::Now();
    auto served = std::make_unique<ServedModel>();
    served->spec = &s;
    served->version = version;
    served->metrics = model_metrics;
    if (!fs::is_regular_file(path, ec)) {
      model->errors.push_back(absl::StrCat("version ", version, ": ", path, " is missing"));
      continue;
    }
    // On an engine thread, like all LibTorch work (batch_scheduler.h says why).
    absl::StatusOr<std::unique_ptr<TorchModel>> engine = absl::InternalError("not loaded");
    options.scheduler->RunOnEngineThread([&] { engine = TorchModel::Load(path, options.engine); });
    if (!engine.ok()) {
      model->errors.push_back(absl::StrCat("version ", version, ": ", engine.status().message()));
      continue;
    }
    absl::StatusOr<std::string> precision =
        ServedPrecision(s.precision, (*engine)->precision(), (*engine)->weight_types());
    if (!precision.ok()) {
      model->errors.push_back(absl::StrCat("version ", version, ": ", precision.status().message()));
      continue;
    }
    served->precision = *precision;
    served->precision_note = PrecisionNote(*precision, CpuFlags());
    served->engine = std::move(*engine);
    served->scheduler = std::make_unique<ModelScheduler>(s, served->engine.get(), model_metrics, options.batch_policy,
                                                         options.scheduler);
    const absl::Time loaded = absl::Now();
    if (absl::Status warm = served->scheduler->Warmup(options.warmup_runs); !warm.ok()) {
      model->errors.push_back(absl::StrCat("version ", version, ": warm-up failed: ", warm.message()));
      continue;
    }
    Log(LogLevel::kInfo, "model loaded",
        {{"model", s.name},
         {"version", std::to_string(version)},
         {"task", TaskName(s.task)},
         {"architecture", s.architecture},
         {"weights", s.weights_source},
         {"precision", served->precision},
         {"input", absl::StrCat(s.input.height, "x", s.input.width)},
         {"classes", std::to_string(s.num_classes)},
         {"max_batch_size", std::to_string(s.batching.max_batch_size)},
         {"instances", s.batching.instances > 0 ? std::to_string(s.batching.instances) : "all"},
         {"batch_ms", absl::StrCat(absl::ToDoubleMilliseconds(served->scheduler->EstimatedBatchTime(1)), " (1), ",
                                   absl::ToDoubleMilliseconds(served->scheduler->EstimatedBatchTime(
                                       s.batching.max_batch_size)),
                                   " (", s.batching.max_batch_size, ")")},
         {"load_ms", std::to_string(absl::ToInt64Milliseconds(loaded - start))},
         {"warmup_ms", std::to_string(absl::ToInt64Milliseconds(absl::Now() - loaded))}});
    if (!served->precision_note.empty()) {
      Log(LogLevel::kWarning, "model precision runs slowly on this CPU",
          {{"model", s.name}, {"version", std::to_string(version)}, {"reason", served->precision_note}});
    }
    if (s.weights_source == "random") {
      Log(LogLevel::kWarning, "model has random weights: its answers mean nothing",
          {{"model", s.name}, {"version", std::to_string(version)}});
    }
    metrics->SetModelInfo(s.name, version, TaskName(s.task), s.architecture, s.weights_source, served->precision);
    model->versions[version] = std::move(served);
  }
}

void ModelRepository::ChooseDefaults() {
  for (Task task : kAllTasks) {
    std::vector<const RepositoryModel*> ready, marked;
    std::vector<std::string> ready_names;
    for (const auto& m : models_) {
      if (!m->ready() || m->spec->task != task) continue;
      ready.push_back(m.get());
      ready_names.push_back(m->name);
      if (m->spec->is_default) marked.push_back(m.get());
    }
    if (marked.size() == 1) {
      defaults_[task] = marked[0];
    } else if (marked.size() > 1) {
      std::vector<std::string> names;
      for (const auto* m : marked) names.push_back(m->name);
      no_default_reason_[task] = absl::StrCat("several ", TaskName(task), " models are marked \"default\": ",
                                              NameList(names), "; name one in the request's model field");
      Log(LogLevel::kWarning, "no default model", {{"task", TaskName(task)}, {"reason", no_default_reason_[task]}});
    } else if (ready.size() == 1) {
      defaults_[task] = ready[0];
    } else if (ready.empty()) {
      no_default_reason_[task] = absl::StrCat("the repository serves no ", TaskName(task), " model");
    } else {
      no_default_reason_[task] = absl::StrCat("the repository serves ", ready.size(), " ", TaskName(task),
                                              " models (", NameList(ready_names),
                                              ") and none is marked \"default\": true; name one in the request's "
                                              "model field");
    }
    if (defaults_.count(task)) {
      Log(LogLevel::kInfo, "default model", {{"task", TaskName(task)}, {"model", defaults_[task]->name}});
    }
  }
}

const RepositoryModel* ModelRepository::Find(const std::string& name) const {
  for (const auto& m : models_) {
    if (m->name == name) return m.get();
  }
  return nullptr;
}

absl::StatusOr<ServedModel*> ModelRepository::Resolve(const std::string& name, int64_t version,
                                                      std::optional<Task> task) const {
  const RepositoryModel* model = nullptr;
  if (name.empty() && !task.has_value()) return absl::InvalidArgumentError("no model named: the model name is required");
  if (name.empty()) {
    auto it = defaults_.find(*task);
    // Detect with no model: the default detection model, else the default Mask R-CNN.
    if (it == defaults_.end() && *task == Task::kDetection) it = defaults_.find(Task::kInstanceSegmentation);
    if (it == defaults_.end()) {
      auto reason = no_default_reason_.find(*task);
      return absl::NotFoundError(absl::StrCat("no model named and no default ", TaskName(*task), " model: ",
                                              reason == no_default_reason_.end() ? "" : reason->second));
    }
    model = it->second;
  } else {
    model = Find(name);
    if (model == nullptr) {
      std::vector<std::string> names;
      for (const auto& m : models_) names.push_back(m->name);
      return absl::NotFoundError(
          absl::StrCat("model \"", name, "\" is not in the repository (models: ", NameList(names), ")"));
    }
  }
  if (task.has_value() && model->spec.has_value() && ServingTask(model->spec->task) != *task) {
    static const char* kMethod[] = {"Classify", "Detect", "Segment"};
    return absl::FailedPreconditionError(absl::StrCat("model \"", model->name, "\" is a ", TaskName(model->spec->task),
                                                      " model, not a ", TaskName(*task), " one; call ",
                                                      kMethod[static_cast<int>(ServingTask(model->spec->task))], " for it"));
  }
  if (!model->ready()) {
    return absl::FailedPreconditionError(absl::StrCat("model \"", model->name, "\" failed to load: ",
                                                      absl::StrJoin(model->errors, "; ")));
  }
  if (version < 0) {
    return absl::InvalidArgumentError(absl::StrCat("model_version must be >= 0 (0: latest), got ", version));
  }
  if (version == 0) return model->versions.rbegin()->second.get();
  auto it = model->versions.find(version);
  if (it == model->versions.end()) {
    std::vector<std::string> loaded;
    for (const auto& [v, served] : model->versions) loaded.push_back(std::to_string(v));
    return absl::NotFoundError(absl::StrCat("model \"", model->name, "\" has no version ", version,
                                            " being served (versions: ", NameList(loaded), ")"));
  }
  return it->second.get();
}

}  // namespace careserve
