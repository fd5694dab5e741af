#include "server/api/vision_service.h"

#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "server/api/detections.h"
#include "server/api/validation.h"
#include "server/postprocess/classify.h"
#include "server/postprocess/detect.h"
#include "server/postprocess/instance_mask.h"
#include "server/postprocess/segment.h"

namespace careserve {

namespace v1 = care::vision::v1;

GrpcCall* VisionService::NewCall(grpc::CallbackServerContext* context, const char* method) {
  return new GrpcCall(context, frontend_->metrics(), frontend_->active(), "vision", method);
}

grpc::ServerUnaryReactor* VisionService::Classify(grpc::CallbackServerContext* context,
                                                  const v1::ClassifyRequest* request,
                                                  v1::ClassifyResponse* response) {
  GrpcCall* call = NewCall(context, "Classify");
  ServedModel* model = frontend_->ResolveOrAnswer(call, request->model(), request->model_version(), Task::kClassification);
  if (model == nullptr) return call;
  absl::StatusOr<int> top_k_or = TopKFor(request->top_k(), model->spec->num_classes);
  if (!top_k_or.ok()) {
    call->Answer(top_k_or.status());
    return call;
  }
  const int top_k = *top_k_or;
  frontend_->Infer(call, model, {ImageInput{&request->image()}}, Frontend::RespondOn::kExecutor,
        [model, response, top_k](int, const RowOutputs& outputs, const ResizedImage&) {
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
  }, [] { return absl::OkStatus(); });
  return call;
}


grpc::ServerUnaryReactor* VisionService::Detect(grpc::CallbackServerContext* context,
                                                const v1::DetectRequest* request, v1::DetectResponse* response) {
  GrpcCall* call = NewCall(context, "Detect");
  ServedModel* model = frontend_->ResolveOrAnswer(call, request->model(), request->model_version(), Task::kDetection);
  if (model == nullptr) return call;
  absl::StatusOr<DetectOptions> options = DetectOptionsFor(*request, model->spec->postprocess);
  if (!options.ok()) {
    call->Answer(options.status());
    return call;
  }
  frontend_->Infer(call, model, {ImageInput{&request->image()}}, Frontend::RespondOn::kPool,
        [model, response, options = *options](int, const RowOutputs& outputs, const ResizedImage& image) {
          absl::StatusOr<ImageDetections> answer = SelectImageDetections(*model->spec, outputs, image, options);
          if (!answer.ok()) return answer.status();
          response->set_model(model->spec->name);
          response->set_model_version(model->version);
          response->set_image_width(image.source_width);
          response->set_image_height(image.source_height);
          for (size_t j = 0; j < answer->boxes.size(); ++j) {
            const BoxDetection& d = answer->boxes[j];
            v1::Detection* out = response->add_detections();
            out->mutable_box()->set_x_min(d.x_min);
            out->mutable_box()->set_y_min(d.y_min);
            out->mutable_box()->set_x_max(d.x_max);
            out->mutable_box()->set_y_max(d.y_max);
            out->set_class_index(d.label);
            out->set_label(model->spec->labels[d.label]);
            out->set_score(d.score);
            if (j < answer->masks.size()) {
              CocoRle& rle = answer->masks[j];
              out->mutable_mask()->add_size(rle.height);
              out->mutable_mask()->add_size(rle.width);
              out->mutable_mask()->set_counts(std::move(rle.counts));
            }
          }
          return absl::OkStatus();
        }, [] { return absl::OkStatus(); });
  return call;
}

grpc::ServerUnaryReactor* VisionService::Segment(grpc::CallbackServerContext* context,
                                                 const v1::SegmentRequest* request, v1::SegmentResponse* response) {
  GrpcCall* call = NewCall(context, "Segment");
  ServedModel* model = frontend_->ResolveOrAnswer(call, request->model(), request->model_version(), Task::kSegmentation);
  if (model == nullptr) return call;
  frontend_->Infer(call, model, {ImageInput{&request->image()}}, Frontend::RespondOn::kPool,
        [model, response](int, const RowOutputs& outputs, const ResizedImage& image) -> absl::Status {
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
        }, [] { return absl::OkStatus(); });
  return call;
}

grpc::ServerUnaryReactor* VisionService::ListModels(grpc::CallbackServerContext* context,
                                                    const v1::ListModelsRequest*, v1::ListModelsResponse* response) {
  GrpcCall* call = NewCall(context, "ListModels");
  absl::StatusOr<const ModelRepository*> repository = frontend_->Available();
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
    if (!m->versions.empty()) {
      info->set_precision(m->versions.rbegin()->second->precision);
      info->set_precision_note(m->versions.rbegin()->second->precision_note);
    }
    info->set_ready(m->ready());
    info->set_error(absl::StrJoin(m->errors, "; "));
  }
  call->Answer(absl::OkStatus());
  return call;
}

}  // namespace careserve
