#include "server/api/vision_service.h"

#include <chrono>
#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "server/api/grpc_status.h"
#include "server/api/validation.h"
#include "server/common/log.h"
#include "server/postprocess/classify.h"
#include "server/postprocess/detect.h"
#include "server/postprocess/segment.h"

#if defined(__SANITIZE_THREAD__)
#include <sanitizer/tsan_interface.h>
#endif

namespace careserve {

namespace v1 = care::vision::v1;

// gRPC calls OnCancel and OnDone on threads of its own, after the handler returned the
// reactor (OnDone also after Finish), through synchronisation of its own. Under
// ThreadSanitizer (make test-tsan) those edges are declared, since Debian's gRPC is not
// built with TSan and its synchronisation is invisible to it.
// gRPC reads the reactor's vtable pointer to make those calls, before any code of ours
// runs on that thread: that word is declared a benign race.
#if defined(__SANITIZE_THREAD__)
extern "C" void AnnotateBenignRaceSized(const char* file, int line, const volatile void* address, long size,
                                        const char* description);
#define CARE_HAPPENS_BEFORE(p) __tsan_release(p)
#define CARE_HAPPENS_AFTER(p) __tsan_acquire(p)
#define CARE_REACTOR_PUBLISHED(p) \
  AnnotateBenignRaceSized(__FILE__, __LINE__, p, sizeof(void*), "vtable pointer read by gRPC's threads")
#else
#define CARE_HAPPENS_BEFORE(p)
#define CARE_HAPPENS_AFTER(p)
#define CARE_REACTOR_PUBLISHED(p)
#endif

// One RPC in flight. Answer() finishes it exactly once, after recording its metrics; gRPC
// then calls OnDone, which deletes it.
class VisionService::Call : public grpc::ServerUnaryReactor {
 public:
  Call(grpc::CallbackServerContext* context, ServerMetrics* metrics, std::atomic<int>* active, const char* method)
      : metrics_(metrics), active_(active), method_(method), start_(absl::Now()) {
    active_->fetch_add(1);
    const auto deadline = context->deadline();
    deadline_ = deadline == std::chrono::system_clock::time_point::max() ? absl::InfiniteFuture()
                                                                         : absl::FromChrono(deadline);
    CARE_REACTOR_PUBLISHED(this);
    CARE_HAPPENS_BEFORE(this);
  }

  void OnCancel() override {
    CARE_HAPPENS_AFTER(this);
    cancelled_.store(true, std::memory_order_relaxed);
  }
  void OnDone() override {
    CARE_HAPPENS_AFTER(this);
    delete this;
  }

  void SetModelLabel(const std::string& model) { model_label_ = model; }
  // The request now counts as in flight for `model` until answered.
  void Accept(ServedModel* model) {
    inflight_ = model->metrics->inflight;
    inflight_->Increment();
  }

  void Answer(const absl::Status& status) {
    metrics_->ObserveRequest(method_, model_label_, CodeName(status.code()), absl::Now() - start_);
    if (inflight_ != nullptr) inflight_->Decrement();
    if (!status.ok() && LogEnabled(LogLevel::kDebug)) {
      Log(LogLevel::kDebug, "request failed",
          {{"method", method_}, {"model", model_label_}, {"code", CodeName(status.code())},
           {"error", std::string(status.message())}});
    }
    std::atomic<int>* active = active_;
    CARE_HAPPENS_BEFORE(this);
    Finish(ToGrpcStatus(status));  // `this` may be deleted from here on
    active->fetch_sub(1);
  }

  bool cancelled() const { return cancelled_.load(std::memory_order_relaxed); }
  const std::atomic<bool>* cancelled_flag() const { return &cancelled_; }
  absl::Time deadline() const { return deadline_; }
  absl::Time start() const { return start_; }

 private:
  ServerMetrics* const metrics_;
  std::atomic<int>* const active_;
  const char* const method_;
  const absl::Time start_;
  absl::Time deadline_;
  std::string model_label_;
  prometheus::Gauge* inflight_ = nullptr;
  std::atomic<bool> cancelled_{false};
};

VisionService::VisionService(ServerMetrics* metrics, ThreadPool* preprocess, DecodeLimits limits)
    : metrics_(metrics), preprocess_(preprocess), limits_(limits) {}

absl::StatusOr<const ModelRepository*> VisionService::Available() const {
  if (draining_.load()) return absl::UnavailableError("the server is shutting down; retry on another replica");
  const ModelRepository* repository = repository_.load();
  if (repository == nullptr) {
    return absl::UnavailableError("the models are still loading (health reports NOT_SERVING until they are ready)");
  }
  return repository;
}

ServedModel* VisionService::ResolveOrAnswer(Call* call, const std::string& name, int64_t version, Task task) {
  absl::StatusOr<const ModelRepository*> repository = Available();
  if (!repository.ok()) {
    call->Answer(repository.status());
    return nullptr;
  }
  absl::StatusOr<ServedModel*> model = (*repository)->Resolve(name, version, task);
  if (!model.ok()) {
    // Label only names the repository knows: a client cannot grow the metric's series.
    for (const auto& m : (*repository)->models()) {
      if (m->name == name) call->SetModelLabel(name);
    }
    call->Answer(model.status());
    return nullptr;
  }
  call->SetModelLabel((*model)->spec->name);
  return *model;
}

void VisionService::Infer(Call* call, ServedModel* model, const v1::Image* image, RespondOn where,
                          Respond respond) {
  if (absl::Status admitted = model->scheduler->Admit(); !admitted.ok()) {
    return call->Answer(absl::Status(admitted.code(), absl::StrCat("model \"", model->spec->name, "\" version ",
                                                                   model->version, ": ", admitted.message())));
  }
  call->Accept(model);
  // Admitted until submitted: an answer before that gives the place in the queue back.
  struct Admission {
    ModelScheduler* scheduler;
    explicit Admission(ModelScheduler* s) : scheduler(s) {}
    Admission(Admission&& other) : scheduler(std::exchange(other.scheduler, nullptr)) {}
    ~Admission() {
      if (scheduler != nullptr) scheduler->Abandon();
    }
    ModelScheduler* Submitting() { return std::exchange(scheduler, nullptr); }
  };
  absl::AnyInvocable<void() &&> preprocess = [this, call, model, image, where,
                                              admission = Admission(model->scheduler.get()),
                                              respond = std::move(respond)]() mutable {
    const absl::Time start = absl::Now();
    if (start >= call->deadline()) {
      return call->Answer(absl::DeadlineExceededError(absl::StrCat(
          "deadline passed after ", absl::FormatDuration(start - call->start()), ", before preprocessing")));
    }
    if (call->cancelled()) return call->Answer(absl::CancelledError("cancelled before preprocessing"));
    absl::StatusOr<DecodedImage> decoded = DecodeForInput(*image, limits_, model->spec->input);
    if (!decoded.ok()) return call->Answer(decoded.status());
    ResizedImage resized =
        ResizeForInput(decoded->rgb, model->spec->input, decoded->source_width, decoded->source_height);
    ResizedImage geometry = resized;
    geometry.pixels = cv::Mat();
    model->metrics->preprocess_seconds->Observe(absl::ToDoubleSeconds(absl::Now() - start));

    auto done = [this, call, model, where, geometry, respond = std::move(respond)](
                    absl::Status status, const BatchOutputs* outputs, int row) mutable {
      if (!status.ok()) return call->Answer(status);
      auto finish = [call, model, geometry, respond = std::move(respond),
                     rows = CopyRow(*outputs, row)]() mutable {
        const absl::Time post_start = absl::Now();
        absl::Status answered = respond(rows, geometry);
        model->metrics->postprocess_seconds->Observe(absl::ToDoubleSeconds(absl::Now() - post_start));
        call->Answer(answered);
      };
      if (where == RespondOn::kExecutor) {
        finish();
      } else {
        preprocess_->Schedule(std::move(finish));
      }
    };
    auto request = std::make_unique<InferenceRequest>(std::move(resized), call->deadline(), call->cancelled_flag(),
                                                      std::move(done));
    absl::Status submitted = admission.Submitting()->Submit(&request);
    if (!submitted.ok()) {
      call->Answer(absl::Status(submitted.code(), absl::StrCat("model \"", model->spec->name, "\" version ",
                                                               model->version, ": ", submitted.message())));
    }
  };
  // A small JPEG (at most twice the network input's pixels: decoding and resizing take
  // ~0.3 ms) is preprocessed right here on gRPC's thread when a preprocessing thread is
  // idle and nothing waits for one: handing it over would wake a sleeping thread, which
  // at low load costs a noticeable part of the request. Anything else, or when the pool
  // is busy, goes to the pool, whose size bounds preprocessing either way.
  int width = 0, height = 0;
  const bool small_jpeg = image->has_encoded() && JpegFrameSize(image->encoded(), &width, &height) &&
                          static_cast<int64_t>(width) * height <=
                              2 * static_cast<int64_t>(model->spec->input.width) * model->spec->input.height;
  if (!small_jpeg || !preprocess_->RunHereIfIdle(preprocess)) preprocess_->Schedule(std::move(preprocess));
}

grpc::ServerUnaryReactor* VisionService::Classify(grpc::CallbackServerContext* context,
                                                  const v1::ClassifyRequest* request,
                                                  v1::ClassifyResponse* response) {
  auto* call = new Call(context, metrics_, &active_, "Classify");
  ServedModel* model = ResolveOrAnswer(call, request->model(), request->model_version(), Task::kClassification);
  if (model == nullptr) return call;
  absl::StatusOr<int> top_k_or = TopKFor(request->top_k(), model->spec->num_classes);
  if (!top_k_or.ok()) {
    call->Answer(top_k_or.status());
    return call;
  }
  const int top_k = *top_k_or;
  Infer(call, model, &request->image(), RespondOn::kExecutor,
        [model, response, top_k](const RowOutputs& outputs, const ResizedImage&) {
    const int num_classes = model->spec->num_classes;
    const float* logits = outputs[0].f32.data();
    for (int i = 0; i < num_classes; ++i) {
      if (!std::isfinite(logits[i])) {
        return absl::InternalError(absl::StrCat("model \"", model->spec->name, "\" produced a non-finite logit (",
                                                logits[i], ") for class ", i));
      }
    }
    response->set_model(model->spec->name);
    response->set_model_version(model->version);
    for (const ClassScore& c : SoftmaxTopK(logits, num_classes, top_k)) {
      v1::Classification* out = response->add_classes();
      out->set_index(c.index);
      out->set_label(model->spec->labels[c.index]);
      out->set_score(c.score);
    }
    return absl::OkStatus();
  });
  return call;
}


grpc::ServerUnaryReactor* VisionService::Detect(grpc::CallbackServerContext* context,
                                                const v1::DetectRequest* request, v1::DetectResponse* response) {
  auto* call = new Call(context, metrics_, &active_, "Detect");
  ServedModel* model = ResolveOrAnswer(call, request->model(), request->model_version(), Task::kDetection);
  if (model == nullptr) return call;
  absl::StatusOr<DetectOptions> options = DetectOptionsFor(*request, model->spec->postprocess);
  if (!options.ok()) {
    call->Answer(options.status());
    return call;
  }
  Infer(call, model, &request->image(), RespondOn::kPool,
        [model, response, options = *options](const RowOutputs& outputs, const ResizedImage& image) {
          const int64_t k = outputs[1].shape[0];
          LetterboxGeometry geometry{image.scale_x, static_cast<float>(image.width),
                                     static_cast<float>(image.height), image.source_width, image.source_height};
          const int num_classes = model->spec->num_classes;
          for (int64_t i = 0; i < k; ++i) {
            if (outputs[2].i64[i] < 0 || outputs[2].i64[i] >= num_classes) {
              return absl::InternalError(absl::StrCat("model \"", model->spec->name, "\" produced class ",
                                                      outputs[2].i64[i], ", outside [0, ", num_classes, ")"));
            }
          }
          response->set_model(model->spec->name);
          response->set_model_version(model->version);
          response->set_image_width(image.source_width);
          response->set_image_height(image.source_height);
          for (const BoxDetection& d : SelectDetections(outputs[0].f32.data(), outputs[1].f32.data(),
                                                        outputs[2].i64.data(), k, options, geometry)) {
            v1::Detection* out = response->add_detections();
            out->mutable_box()->set_x_min(d.x_min);
            out->mutable_box()->set_y_min(d.y_min);
            out->mutable_box()->set_x_max(d.x_max);
            out->mutable_box()->set_y_max(d.y_max);
            out->set_class_index(d.label);
            out->set_label(model->spec->labels[d.label]);
            out->set_score(d.score);
          }
          return absl::OkStatus();
        });
  return call;
}

grpc::ServerUnaryReactor* VisionService::Segment(grpc::CallbackServerContext* context,
                                                 const v1::SegmentRequest* request, v1::SegmentResponse* response) {
  auto* call = new Call(context, metrics_, &active_, "Segment");
  ServedModel* model = ResolveOrAnswer(call, request->model(), request->model_version(), Task::kSegmentation);
  if (model == nullptr) return call;
  Infer(call, model, &request->image(), RespondOn::kPool,
        [model, response](const RowOutputs& outputs, const ResizedImage& image) -> absl::Status {
          const OutputRow& logits = outputs[0];  // [C, H/4, W/4]
          const int num_classes = static_cast<int>(logits.shape[0]);
          const double stride = static_cast<double>(model->spec->input.height) / logits.shape[1];
          const ClassMap map = ArgmaxResize(logits.f32.data(), num_classes, static_cast<int>(logits.shape[1]),
                                            static_cast<int>(logits.shape[2]), image.scale_x, stride,
                                            image.source_width, image.source_height);
          absl::StatusOr<std::string> png = EncodeMaskPng(map.mask);
          if (!png.ok()) return png.status();
          response->set_model(model->spec->name);
          response->set_model_version(model->version);
          response->set_width(image.source_width);
          response->set_height(image.source_height);
          response->set_mask_png(std::move(*png));
          const double total = static_cast<double>(map.mask.total());
          for (const ClassPixels& c : ClassesPresent(map.pixels)) {
            v1::ClassCoverage* out = response->add_classes();
            out->set_class_index(c.class_index);
            out->set_label(model->spec->labels[c.class_index]);
            out->set_fraction(static_cast<float>(c.pixels / total));
          }
          return absl::OkStatus();
        });
  return call;
}

grpc::ServerUnaryReactor* VisionService::ListModels(grpc::CallbackServerContext* context,
                                                    const v1::ListModelsRequest*, v1::ListModelsResponse* response) {
  auto* call = new Call(context, metrics_, &active_, "ListModels");
  absl::StatusOr<const ModelRepository*> repository = Available();
  if (!repository.ok()) {
    call->Answer(repository.status());
    return call;
  }
  for (const auto& m : (*repository)->models()) {
    v1::ModelInfo* info = response->add_models();
    info->set_name(m->name);
    for (const auto& [version, served] : m->versions) info->add_versions(version);
    if (m->spec.has_value()) {
      info->set_task(TaskName(m->spec->task));
      info->set_architecture(m->spec->architecture);
      info->set_input_height(m->spec->input.height);
      info->set_input_width(m->spec->input.width);
      info->set_num_classes(m->spec->num_classes);
      info->set_weights_source(m->spec->weights_source);
    }
    info->set_ready(m->ready());
    info->set_error(absl::StrJoin(m->errors, "; "));
  }
  call->Answer(absl::OkStatus());
  return call;
}

}  // namespace careserve
