#include "server/api/frontend.h"

#include <chrono>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/api/grpc_status.h"
#include "server/common/log.h"

#if defined(__SANITIZE_THREAD__)
#include <sanitizer/tsan_interface.h>
#endif

namespace careserve {

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

namespace {

absl::Time DeadlineOf(grpc::CallbackServerContext* context) {
  const auto deadline = context->deadline();
  return deadline == std::chrono::system_clock::time_point::max() ? absl::InfiniteFuture()
                                                                  : absl::FromChrono(deadline);
}

std::string ModelText(const ServedModel& model) {
  return absl::StrCat("model \"", model.spec->name, "\" version ", model.version);
}

}  // namespace

PendingCall::PendingCall(ServerMetrics* metrics, std::atomic<int>* active, const char* api, const char* method,
                         absl::Time deadline)
    : metrics_(metrics), active_(active), api_(api), method_(method), start_(absl::Now()), deadline_(deadline) {
  active_->fetch_add(1);
}

void PendingCall::Accept(ServedModel* model) {
  inflight_ = model->metrics->inflight;
  inflight_->Increment();
}

void PendingCall::Answer(const absl::Status& status) {
  metrics_->ObserveRequest(api_, method_, model_label_, CodeName(status.code()), absl::Now() - start_);
  if (inflight_ != nullptr) inflight_->Decrement();
  if (!status.ok() && LogEnabled(LogLevel::kDebug)) {
    Log(LogLevel::kDebug, "request failed",
        {{"api", api_}, {"method", method_}, {"model", model_label_}, {"code", CodeName(status.code())},
         {"error", std::string(status.message())}});
  }
  std::atomic<int>* active = active_;
  Send(status);  // `this` may be deleted from here on
  active->fetch_sub(1);
}

GrpcCall::GrpcCall(grpc::CallbackServerContext* context, ServerMetrics* metrics, std::atomic<int>* active,
                   const char* api, const char* method)
    : PendingCall(metrics, active, api, method, DeadlineOf(context)) {
  CARE_REACTOR_PUBLISHED(static_cast<grpc::ServerUnaryReactor*>(this));
  CARE_HAPPENS_BEFORE(this);
}

void GrpcCall::OnCancel() {
  CARE_HAPPENS_AFTER(this);
  Cancel();
}

void GrpcCall::OnDone() {
  CARE_HAPPENS_AFTER(this);
  delete this;
}

void GrpcCall::Send(const absl::Status& status) {
  CARE_HAPPENS_BEFORE(this);
  Finish(ToGrpcStatus(status));
}

Frontend::Frontend(ServerMetrics* metrics, ThreadPool* preprocess, DecodeLimits limits)
    : metrics_(metrics), preprocess_(preprocess), limits_(limits) {}

absl::StatusOr<const ModelRepository*> Frontend::Available() const {
  if (draining_.load()) return absl::UnavailableError("the server is shutting down; retry on another replica");
  const ModelRepository* repository = repository_.load();
  if (repository == nullptr) {
    return absl::UnavailableError("the models are still loading (health reports NOT_SERVING until they are ready)");
  }
  return repository;
}

ServedModel* Frontend::ResolveOrAnswer(PendingCall* call, const std::string& name, int64_t version,
                                       std::optional<Task> task) {
  absl::StatusOr<const ModelRepository*> repository = Available();
  if (!repository.ok()) {
    call->Answer(repository.status());
    return nullptr;
  }
  absl::StatusOr<ServedModel*> model = (*repository)->Resolve(name, version, task);
  if (!model.ok()) {
    // Label only names the repository knows: a client cannot grow the metric's series.
    if ((*repository)->Find(name) != nullptr) call->SetModelLabel(name);
    call->Answer(model.status());
    return nullptr;
  }
  call->SetModelLabel((*model)->spec->name);
  return *model;
}

// One request's images on their way; shared by the steps of every image, answered by the
// last to finish.
struct Frontend::Job {
  Frontend* frontend;
  PendingCall* call;
  ServedModel* model;
  std::vector<ImageInput> images;
  RespondOn where;
  Respond respond;
  Complete complete;
  std::atomic<int> remaining{0};
  std::atomic<bool> failed{false};
  absl::Status first_error;  // written by the first failure only, read by the last image
};

void Frontend::Infer(PendingCall* call, ServedModel* model, std::vector<ImageInput> images, RespondOn where,
                     Respond respond, Complete complete) {
  const int n = static_cast<int>(images.size());
  if (n == 0) return call->Answer(absl::InvalidArgumentError("the request has no image"));
  const int capacity = model->spec->batching.queue_capacity;
  if (n > capacity) {
    return call->Answer(absl::InvalidArgumentError(absl::StrCat(
        "the request has ", n, " images; ", ModelText(*model), " queues at most ", capacity,
        " (its queue_capacity): send them in several requests")));
  }
  for (int i = 0; i < n; ++i) {
    if (absl::Status admitted = model->scheduler->Admit(); !admitted.ok()) {
      for (int j = 0; j < i; ++j) model->scheduler->Abandon();
      return call->Answer(absl::Status(admitted.code(), absl::StrCat(ModelText(*model), ": ", admitted.message())));
    }
  }
  call->Accept(model);
  auto job = std::make_shared<Job>();
  job->frontend = this;
  job->call = call;
  job->model = model;
  job->images = std::move(images);
  job->where = where;
  job->respond = std::move(respond);
  job->complete = std::move(complete);
  job->remaining.store(n);
  for (int i = 0; i < n; ++i) {
    absl::AnyInvocable<void() &&> step = [this, job, i]() mutable { Preprocess(std::move(job), i); };
    // A small JPEG (at most twice the network input's pixels: decoding and resizing take
    // ~0.3 ms) is preprocessed right here on the API's thread when a preprocessing thread
    // is idle and nothing waits for one: handing it over would wake a sleeping thread,
    // which at low load costs a noticeable part of the request. Anything else, or when
    // the pool is busy, goes to the pool, whose size bounds preprocessing either way.
    const care::vision::v1::Image* image = job->images[i].image;
    int width = 0, height = 0;
    const bool small_jpeg = image != nullptr && image->has_encoded() &&
                            JpegFrameSize(image->encoded(), &width, &height) &&
                            static_cast<int64_t>(width) * height <=
                                2 * static_cast<int64_t>(model->spec->input.width) * model->spec->input.height;
    if (!small_jpeg || !preprocess_->RunHereIfIdle(step)) preprocess_->Schedule(std::move(step));
  }
}

void Frontend::ImageDone(const std::shared_ptr<Job>& job, absl::Status status) {
  if (!status.ok() && !job->failed.exchange(true)) {
    job->first_error = std::move(status);
    job->call->Cancel();  // the other images are not needed any more
  }
  if (job->remaining.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
  if (job->failed.load()) return job->call->Answer(job->first_error);
  job->call->Answer(std::move(job->complete)());
}

void Frontend::Preprocess(std::shared_ptr<Job> job, int index) {
  PendingCall* call = job->call;
  ServedModel* model = job->model;
  const InputSpec& spec = model->spec->input;
  const absl::Time start = absl::Now();
  if (start >= call->deadline()) {
    model->scheduler->Abandon();
    return ImageDone(job, absl::DeadlineExceededError(absl::StrCat(
                              "deadline passed after ", absl::FormatDuration(start - call->start()),
                              ", before preprocessing")));
  }
  if (call->cancelled()) {
    model->scheduler->Abandon();
    return ImageDone(job, absl::CancelledError("cancelled before preprocessing"));
  }
  ImageInput& input = job->images[index];
  ResizedImage resized;
  std::vector<float> tensor;
  if (input.image != nullptr) {
    absl::StatusOr<DecodedImage> decoded = DecodeForInput(*input.image, limits_, spec);
    if (!decoded.ok()) {
      model->scheduler->Abandon();
      absl::Status status = decoded.status();
      if (job->images.size() > 1) {
        status = absl::Status(status.code(), absl::StrCat("image ", index, ": ", status.message()));
      }
      return ImageDone(job, status);
    }
    resized = ResizeForInput(decoded->rgb, spec, decoded->source_width, decoded->source_height);
  } else {
    // The network input itself: it maps back onto itself.
    resized.source_width = resized.width = spec.width;
    resized.source_height = resized.height = spec.height;
    tensor = std::move(input.tensor);
  }
  ResizedImage geometry = resized;
  geometry.pixels = cv::Mat();
  model->metrics->preprocess_seconds->Observe(absl::ToDoubleSeconds(absl::Now() - start));

  auto done = [job, index, geometry](absl::Status status, const BatchOutputs* outputs, int row) mutable {
    if (!status.ok()) return ImageDone(job, std::move(status));
    auto finish = [job, index, geometry, rows = CopyRow(*outputs, row)]() {
      const absl::Time post_start = absl::Now();
      absl::Status answered = job->respond(index, rows, geometry);
      job->model->metrics->postprocess_seconds->Observe(absl::ToDoubleSeconds(absl::Now() - post_start));
      ImageDone(job, std::move(answered));
    };
    if (job->where == RespondOn::kExecutor) {
      finish();
    } else {
      job->frontend->preprocess_->Schedule(std::move(finish));
    }
  };
  auto request = std::make_unique<InferenceRequest>(std::move(resized), std::move(tensor), call->deadline(),
                                                    call->cancelled_flag(), std::move(done));
  absl::Status submitted = model->scheduler->Submit(&request);
  if (!submitted.ok()) {
    ImageDone(job, absl::Status(submitted.code(), absl::StrCat(ModelText(*model), ": ", submitted.message())));
  }
}

}  // namespace careserve
