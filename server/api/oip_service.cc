#include "server/api/oip_service.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "server/api/detections.h"
#include "server/api/validation.h"
#include "server/postprocess/classify.h"
#include "server/postprocess/detect.h"
#include "server/postprocess/segment.h"

#ifndef CARE_VERSION
#define CARE_VERSION "unknown"
#endif

namespace careserve {

const char* CareserveVersion() { return CARE_VERSION; }

namespace {

namespace v1 = care::vision::v1;
using inference::InferParameter;
using inference::InferTensorContents;
using inference::ModelInferRequest;
using inference::ModelInferResponse;
using ParameterMap = google::protobuf::Map<std::string, InferParameter>;

constexpr char kInputsText[] =
    "image (BYTES [N]: encoded images), pixels (UINT8 [N, H, W, 3]: RGB) or input (FP32 [N, 3, h, w]: the "
    "network input)";

std::string ShapeText(const google::protobuf::RepeatedField<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

// "" -> 0 (the latest); else a positive version number.
absl::StatusOr<int64_t> ParseVersion(const std::string& version) {
  if (version.empty()) return 0;
  int64_t number = 0;
  if (!absl::SimpleAtoi(version, &number) || number <= 0) {
    return absl::NotFoundError(
        absl::StrCat("model version \"", version, "\" is not served: versions are positive integers"));
  }
  return number;
}

// Resolves a named model of any task, for the metadata RPCs.
absl::StatusOr<ServedModel*> ResolveNamed(const Frontend& frontend, const std::string& name,
                                          const std::string& version) {
  absl::StatusOr<const ModelRepository*> repository = frontend.Available();
  if (!repository.ok()) return repository.status();
  absl::StatusOr<int64_t> number = ParseVersion(version);
  if (!number.ok()) return number.status();
  return (*repository)->Resolve(name, *number, std::nullopt);
}

// A float parameter: double_param or string_param (Triton's clients send either); whole
// numbers too.
absl::StatusOr<std::optional<double>> FloatParameter(const ParameterMap& parameters, const std::string& key) {
  auto it = parameters.find(key);
  if (it == parameters.end()) return std::nullopt;
  const InferParameter& p = it->second;
  double value = 0;
  switch (p.parameter_choice_case()) {
    case InferParameter::kDoubleParam:
      return p.double_param();
    case InferParameter::kInt64Param:
      return static_cast<double>(p.int64_param());
    case InferParameter::kUint64Param:
      return static_cast<double>(p.uint64_param());
    case InferParameter::kStringParam:
      if (absl::SimpleAtod(p.string_param(), &value)) return value;
      return absl::InvalidArgumentError(
          absl::StrCat("parameter ", key, " must be a number, got string \"", p.string_param(), "\""));
    default:
      return absl::InvalidArgumentError(absl::StrCat("parameter ", key, " must be a number (double_param)"));
  }
}

absl::StatusOr<std::optional<int64_t>> IntParameter(const ParameterMap& parameters, const std::string& key) {
  auto it = parameters.find(key);
  if (it == parameters.end()) return std::nullopt;
  const InferParameter& p = it->second;
  int64_t value = 0;
  switch (p.parameter_choice_case()) {
    case InferParameter::kInt64Param:
      return p.int64_param();
    case InferParameter::kUint64Param:
      if (p.uint64_param() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) break;
      return static_cast<int64_t>(p.uint64_param());
    case InferParameter::kStringParam:
      if (absl::SimpleAtoi(p.string_param(), &value)) return value;
      break;
    default:
      break;
  }
  return absl::InvalidArgumentError(absl::StrCat("parameter ", key, " must be an integer (int64_param)"));
}

absl::StatusOr<DetectOptions> DetectOptionsFromParameters(const ParameterMap& parameters,
                                                          const DetectOptions& defaults) {
  v1::DetectRequest request;
  absl::StatusOr<std::optional<double>> score = FloatParameter(parameters, "score_threshold");
  if (!score.ok()) return score.status();
  absl::StatusOr<std::optional<double>> iou = FloatParameter(parameters, "iou_threshold");
  if (!iou.ok()) return iou.status();
  absl::StatusOr<std::optional<int64_t>> max_detections = IntParameter(parameters, "max_detections");
  if (!max_detections.ok()) return max_detections.status();
  if (score->has_value()) request.set_score_threshold(static_cast<float>(**score));
  if (iou->has_value()) request.set_iou_threshold(static_cast<float>(**iou));
  if (max_detections->has_value()) {
    if (**max_detections < 0 || **max_detections > kMaxDetectionsLimit) {
      return absl::InvalidArgumentError(absl::StrCat("max_detections must be in [0, ", kMaxDetectionsLimit,
                                                     "] (0: the model's default), got ", **max_detections));
    }
    request.set_max_detections(static_cast<int32_t>(**max_detections));
  }
  return DetectOptionsFor(request, defaults);
}

// The request's one input, as the frontend's images.
struct ParsedInput {
  std::vector<v1::Image> images;               // image, pixels
  std::vector<std::vector<float>> tensors;     // input
  int count() const { return static_cast<int>(images.empty() ? tensors.size() : images.size()); }
};

// The elements of a raw BYTES tensor: each a 4-byte little-endian length, then the bytes.
absl::StatusOr<std::vector<std::string>> SplitRawBytes(const std::string& raw, const std::string& name) {
  std::vector<std::string> elements;
  size_t at = 0;
  while (at < raw.size()) {
    if (raw.size() - at < 4) {
      return absl::InvalidArgumentError(absl::StrCat("input ", name, ": raw BYTES contents end inside an element's ",
                                                     "4-byte length, at byte ", at));
    }
    const auto* p = reinterpret_cast<const unsigned char*>(raw.data() + at);
    const uint32_t length = p[0] | (p[1] << 8) | (p[2] << 16) | (static_cast<uint32_t>(p[3]) << 24);
    at += 4;
    if (length > raw.size() - at) {
      return absl::InvalidArgumentError(absl::StrCat("input ", name, ": raw BYTES element ", elements.size(),
                                                     " says ", length, " bytes but only ", raw.size() - at,
                                                     " remain"));
    }
    elements.emplace_back(raw, at, length);
    at += length;
  }
  return elements;
}

absl::StatusOr<ParsedInput> ParseInput(const ModelInferRequest& request, const ModelSpec& spec) {
  if (request.inputs_size() != 1) {
    std::vector<std::string> names;
    for (const auto& input : request.inputs()) names.push_back(input.name());
    return absl::InvalidArgumentError(absl::StrCat("expected exactly one input, one of ", kInputsText, "; got ",
                                                   request.inputs_size(),
                                                   names.empty() ? "" : absl::StrCat(" (", absl::StrJoin(names, ", "), ")")));
  }
  const ModelInferRequest::InferInputTensor& input = request.inputs(0);
  const bool raw = request.raw_input_contents_size() > 0;
  if (raw && request.raw_input_contents_size() != 1) {
    return absl::InvalidArgumentError(absl::StrCat("raw_input_contents has ", request.raw_input_contents_size(),
                                                   " entries for 1 input"));
  }
  if (raw && input.has_contents()) {
    return absl::InvalidArgumentError(
        absl::StrCat("input ", input.name(), " has both contents and raw_input_contents; send one"));
  }
  const std::string& name = input.name();
  auto expect_type = [&](const char* datatype) -> absl::Status {
    if (input.datatype() == datatype) return absl::OkStatus();
    return absl::InvalidArgumentError(
        absl::StrCat("input ", name, " must be ", datatype, ", got datatype \"", input.datatype(), "\""));
  };
  const auto& shape = input.shape();
  for (int64_t d : shape) {
    if (d < 1 || d > (int64_t{1} << 31)) {
      return absl::InvalidArgumentError(
          absl::StrCat("input ", name, " has shape ", ShapeText(shape), ": every dimension must be in [1, 2^31]"));
    }
  }
  ParsedInput parsed;
  if (name == "image") {
    if (absl::Status s = expect_type("BYTES"); !s.ok()) return s;
    if (shape.empty() || shape.size() > 2 || (shape.size() == 2 && shape[1] != 1)) {
      return absl::InvalidArgumentError(
          absl::StrCat("input image must have shape [N] (or [N, 1]), got ", ShapeText(shape)));
    }
    std::vector<std::string> elements;
    if (raw) {
      absl::StatusOr<std::vector<std::string>> split = SplitRawBytes(request.raw_input_contents(0), name);
      if (!split.ok()) return split.status();
      elements = std::move(*split);
    } else {
      elements.assign(input.contents().bytes_contents().begin(), input.contents().bytes_contents().end());
    }
    if (static_cast<int64_t>(elements.size()) != shape[0]) {
      return absl::InvalidArgumentError(absl::StrCat("input image has shape ", ShapeText(shape), " but ",
                                                     elements.size(), " element(s)", raw ? " in raw_input_contents"
                                                                                         : " in bytes_contents"));
    }
    parsed.images.resize(elements.size());
    for (size_t i = 0; i < elements.size(); ++i) parsed.images[i].set_encoded(std::move(elements[i]));
    return parsed;
  }
  if (name == "pixels") {
    if (absl::Status s = expect_type("UINT8"); !s.ok()) return s;
    if (shape.size() != 4 || shape[3] != 3) {
      return absl::InvalidArgumentError(
          absl::StrCat("input pixels must have shape [N, H, W, 3] (RGB), got ", ShapeText(shape)));
    }
    const int64_t n = shape[0], height = shape[1], width = shape[2];
    const int64_t image_bytes = height * width * 3;  // < 2^64: each dimension is at most 2^31
    if (height > std::numeric_limits<int32_t>::max() / width / 3 || n > (int64_t{1} << 40) / image_bytes) {
      return absl::InvalidArgumentError(absl::StrCat("input pixels has shape ", ShapeText(shape), ": too large"));
    }
    const int64_t total = n * image_bytes;
    std::string bytes;
    if (raw) {
      if (static_cast<int64_t>(request.raw_input_contents(0).size()) != total) {
        return absl::InvalidArgumentError(absl::StrCat("input pixels has shape ", ShapeText(shape), " (", total,
                                                       " bytes) but raw_input_contents holds ",
                                                       request.raw_input_contents(0).size(), " bytes"));
      }
    } else {
      const auto& values = input.contents().uint_contents();
      if (values.size() != total) {
        return absl::InvalidArgumentError(absl::StrCat("input pixels has shape ", ShapeText(shape), " (", total,
                                                       " values) but uint_contents holds ", values.size()));
      }
      bytes.resize(total);
      for (int64_t i = 0; i < total; ++i) {
        if (values[i] > 255) {
          return absl::InvalidArgumentError(
              absl::StrCat("input pixels: uint_contents[", i, "] = ", values[i], " is not a UINT8 value"));
        }
        bytes[i] = static_cast<char>(values[i]);
      }
    }
    const std::string& source = raw ? request.raw_input_contents(0) : bytes;
    parsed.images.resize(n);
    for (int64_t i = 0; i < n; ++i) {
      v1::RawImage* image = parsed.images[i].mutable_raw();
      image->set_width(static_cast<int32_t>(width));
      image->set_height(static_cast<int32_t>(height));
      image->set_format(v1::RGB8);
      image->set_data(source.substr(i * image_bytes, image_bytes));
    }
    return parsed;
  }
  if (name == "input") {
    if (absl::Status s = expect_type("FP32"); !s.ok()) return s;
    if (shape.size() != 4 || shape[1] != 3 || shape[2] != spec.input.height || shape[3] != spec.input.width) {
      return absl::InvalidArgumentError(absl::StrCat("input input must have shape [N, 3, ", spec.input.height, ", ",
                                                     spec.input.width, "] (model \"", spec.name,
                                                     "\"'s preprocessed input), got ", ShapeText(shape)));
    }
    const int64_t n = shape[0];
    const int64_t floats = int64_t{3} * spec.input.height * spec.input.width;
    const float* data = nullptr;
    if (raw) {
      if (static_cast<int64_t>(request.raw_input_contents(0).size()) != n * floats * 4) {
        return absl::InvalidArgumentError(absl::StrCat("input input has shape ", ShapeText(shape), " (", n * floats * 4,
                                                       " bytes of FP32) but raw_input_contents holds ",
                                                       request.raw_input_contents(0).size(), " bytes"));
      }
    } else if (input.contents().fp32_contents_size() != n * floats) {
      return absl::InvalidArgumentError(absl::StrCat("input input has shape ", ShapeText(shape), " (", n * floats,
                                                     " values) but fp32_contents holds ",
                                                     input.contents().fp32_contents_size()));
    } else {
      data = input.contents().fp32_contents().data();
    }
    parsed.tensors.resize(n);
    for (int64_t i = 0; i < n; ++i) {
      std::vector<float>& tensor = parsed.tensors[i];
      tensor.resize(floats);
      if (raw) {
        std::memcpy(tensor.data(), request.raw_input_contents(0).data() + i * floats * 4, floats * 4);
      } else {
        std::copy(data + i * floats, data + (i + 1) * floats, tensor.begin());
      }
      for (int64_t j = 0; j < floats; ++j) {
        if (!std::isfinite(tensor[j])) {
          return absl::InvalidArgumentError(
              absl::StrCat("input input holds a non-finite value (", tensor[j], ") at element ", i * floats + j));
        }
      }
    }
    return parsed;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown input \"", name, "\"; the model takes one of ", kInputsText));
}

std::vector<std::string> OutputNames(Task task) {
  switch (task) {
    case Task::kClassification:
      return {"probabilities"};
    case Task::kDetection:
      return {"boxes", "scores", "classes", "num_detections"};
    case Task::kSegmentation:
      return {"mask"};
    case Task::kInstanceSegmentation:
      return {"boxes", "scores", "classes", "num_detections", "masks"};
  }
  return {};
}

// The outputs a request asked for (all of the task's when it named none), and Triton's
// classification extension's k for `probabilities` (0: the probabilities themselves).
struct RequestedOutputs {
  std::vector<std::string> names;
  int classification = 0;
};

absl::StatusOr<RequestedOutputs> ParseOutputs(const ModelInferRequest& request, const ModelSpec& spec) {
  const std::vector<std::string> known = OutputNames(spec.task);
  RequestedOutputs requested;
  if (request.outputs_size() == 0) {
    requested.names = known;
    return requested;
  }
  for (const auto& output : request.outputs()) {
    if (std::find(known.begin(), known.end(), output.name()) == known.end()) {
      return absl::InvalidArgumentError(absl::StrCat("unknown output \"", output.name(), "\"; a ", TaskName(spec.task),
                                                     " model returns ", absl::StrJoin(known, ", ")));
    }
    if (std::find(requested.names.begin(), requested.names.end(), output.name()) != requested.names.end()) {
      return absl::InvalidArgumentError(absl::StrCat("output \"", output.name(), "\" is requested twice"));
    }
    requested.names.push_back(output.name());
    absl::StatusOr<std::optional<int64_t>> k = IntParameter(output.parameters(), "classification");
    if (!k.ok()) return k.status();
    if (!k->has_value()) continue;
    if (output.name() != "probabilities") {
      return absl::InvalidArgumentError(absl::StrCat("the classification parameter applies to a classifier's ",
                                                     "probabilities output, not to \"", output.name(), "\""));
    }
    if (**k < 1 || **k > spec.num_classes) {
      return absl::InvalidArgumentError(absl::StrCat("classification must be in [1, ", spec.num_classes,
                                                     "] (the model's classes), got ", **k));
    }
    requested.classification = static_cast<int>(**k);
  }
  return requested;
}

// One request's answers per image, filled by the images' Respond calls.
struct InferState {
  ParsedInput input;
  RequestedOutputs outputs;
  DetectOptions detect;
  bool paste_masks = false;  // "masks" is among the outputs asked for
  bool typed = false;  // answer in InferTensorContents, as the request came
  std::vector<std::vector<float>> probabilities;
  std::vector<std::vector<ClassScore>> top;
  std::vector<ImageDetections> detections;
  std::vector<cv::Mat> masks;
};

// Appends one output tensor, raw or typed.
class OutputWriter {
 public:
  OutputWriter(ModelInferResponse* response, bool typed) : response_(response), typed_(typed) {}

  ModelInferResponse::InferOutputTensor* Add(const std::string& name, const char* datatype,
                                              std::vector<int64_t> shape) {
    auto* out = response_->add_outputs();
    out->set_name(name);
    out->set_datatype(datatype);
    for (int64_t d : shape) out->add_shape(d);
    return out;
  }
  void Fp32(const std::string& name, std::vector<int64_t> shape, const std::vector<float>& values) {
    auto* out = Add(name, "FP32", std::move(shape));
    if (typed_) {
      out->mutable_contents()->mutable_fp32_contents()->Add(values.begin(), values.end());
    } else {
      response_->add_raw_output_contents(std::string(reinterpret_cast<const char*>(values.data()), values.size() * 4));
    }
  }
  void Int32(const std::string& name, std::vector<int64_t> shape, const std::vector<int32_t>& values) {
    auto* out = Add(name, "INT32", std::move(shape));
    if (typed_) {
      out->mutable_contents()->mutable_int_contents()->Add(values.begin(), values.end());
    } else {
      response_->add_raw_output_contents(std::string(reinterpret_cast<const char*>(values.data()), values.size() * 4));
    }
  }
  void Bytes(const std::string& name, std::vector<int64_t> shape, const std::vector<std::string>& values) {
    auto* out = Add(name, "BYTES", std::move(shape));
    if (typed_) {
      for (const std::string& v : values) out->mutable_contents()->add_bytes_contents(v);
    } else {
      std::string raw;
      for (const std::string& v : values) {
        const uint32_t n = static_cast<uint32_t>(v.size());
        const char length[4] = {static_cast<char>(n & 0xff), static_cast<char>((n >> 8) & 0xff),
                                static_cast<char>((n >> 16) & 0xff), static_cast<char>(n >> 24)};
        raw.append(length, 4);
        raw += v;
      }
      response_->add_raw_output_contents(std::move(raw));
    }
  }
  // Masks of one size, CV_8U or CV_16U, as UINT8 or UINT16 [N, H, W].
  void Masks(const std::string& name, const std::vector<cv::Mat>& masks, bool wide) {
    const int height = masks[0].rows, width = masks[0].cols;
    auto* out = Add(name, wide ? "UINT16" : "UINT8", {static_cast<int64_t>(masks.size()), height, width});
    const size_t pixels = static_cast<size_t>(height) * width;
    if (typed_) {
      auto* values = out->mutable_contents()->mutable_uint_contents();
      values->Reserve(static_cast<int>(pixels * masks.size()));
      for (const cv::Mat& m : masks) {
        cv::Mat wide_mask;
        m.convertTo(wide_mask, CV_32S);
        for (int y = 0; y < height; ++y) {
          const int32_t* row = wide_mask.ptr<int32_t>(y);
          for (int x = 0; x < width; ++x) values->Add(static_cast<uint32_t>(row[x]));
        }
      }
    } else {
      const int depth = wide ? CV_16U : CV_8U;
      const size_t element = wide ? 2 : 1;
      std::string raw;
      raw.reserve(pixels * element * masks.size());
      for (const cv::Mat& m : masks) {
        cv::Mat converted;
        m.convertTo(converted, depth);  // little-endian host: UINT16 as the protocol wants it
        for (int y = 0; y < height; ++y) raw.append(converted.ptr<char>(y), width * element);
      }
      response_->add_raw_output_contents(std::move(raw));
    }
  }

 private:
  ModelInferResponse* const response_;
  const bool typed_;
};

absl::Status WriteOutputs(const InferState& state, const ServedModel& model, ModelInferResponse* response) {
  const ModelSpec& spec = *model.spec;
  const int64_t n = state.input.count();
  OutputWriter writer(response, state.typed);
  // Detection: K is the most detections any image has; rows past an image's count are zero.
  size_t k = 0;
  for (const auto& d : state.detections) k = std::max(k, d.boxes.size());
  const int64_t kk = static_cast<int64_t>(k);
  for (const std::string& name : state.outputs.names) {
    if (name == "probabilities" && state.outputs.classification > 0) {
      std::vector<std::string> values;
      for (const auto& top : state.top) {
        // %.9g: the float itself, not a rounding of it.
        for (const ClassScore& c : top) {
          values.push_back(absl::StrFormat("%.9g:%d:%s", c.score, c.index, spec.labels[c.index]));
        }
      }
      writer.Bytes(name, {n, state.outputs.classification}, values);
    } else if (name == "probabilities") {
      std::vector<float> values;
      values.reserve(n * spec.num_classes);
      for (const auto& p : state.probabilities) values.insert(values.end(), p.begin(), p.end());
      writer.Fp32(name, {n, spec.num_classes}, values);
    } else if (name == "boxes") {
      std::vector<float> values(n * kk * 4, 0.0f);
      for (int64_t i = 0; i < n; ++i) {
        for (size_t j = 0; j < state.detections[i].boxes.size(); ++j) {
          const BoxDetection& d = state.detections[i].boxes[j];
          float* box = &values[(i * kk + j) * 4];
          box[0] = d.x_min, box[1] = d.y_min, box[2] = d.x_max, box[3] = d.y_max;
        }
      }
      writer.Fp32(name, {n, kk, 4}, values);
    } else if (name == "scores") {
      std::vector<float> values(n * kk, 0.0f);
      for (int64_t i = 0; i < n; ++i) {
        for (size_t j = 0; j < state.detections[i].boxes.size(); ++j) values[i * kk + j] = state.detections[i].boxes[j].score;
      }
      writer.Fp32(name, {n, kk}, values);
    } else if (name == "classes") {
      std::vector<int32_t> values(n * kk, 0);
      for (int64_t i = 0; i < n; ++i) {
        for (size_t j = 0; j < state.detections[i].boxes.size(); ++j) values[i * kk + j] = state.detections[i].boxes[j].label;
      }
      writer.Int32(name, {n, kk}, values);
    } else if (name == "masks") {
      // COCO RLE objects as JSON; the counts alphabet (ASCII 48-111) holds JSON's escape
      // character, the backslash.
      std::vector<std::string> values(n * kk);
      for (int64_t i = 0; i < n; ++i) {
        for (size_t j = 0; j < state.detections[i].masks.size(); ++j) {
          const CocoRle& rle = state.detections[i].masks[j];
          values[i * kk + j] = absl::StrCat("{\"size\":[", rle.height, ",", rle.width, "],\"counts\":\"",
                                            absl::StrReplaceAll(rle.counts, {{"\\", "\\\\"}}), "\"}");
        }
      }
      writer.Bytes(name, {n, kk}, values);
    } else if (name == "num_detections") {
      std::vector<int32_t> values;
      for (const auto& d : state.detections) values.push_back(static_cast<int32_t>(d.boxes.size()));
      writer.Int32(name, {n}, values);
    } else if (name == "mask") {
      for (int64_t i = 1; i < n; ++i) {
        if (state.masks[i].size() != state.masks[0].size()) {
          return absl::InvalidArgumentError(absl::StrCat(
              "the images of one segmentation request must have one size, for one mask tensor [N, H, W]: image 0 is ",
              state.masks[0].cols, "x", state.masks[0].rows, ", image ", i, " is ", state.masks[i].cols, "x",
              state.masks[i].rows, " (send them in separate requests)"));
        }
      }
      writer.Masks(name, state.masks, spec.num_classes > 256);
    }
  }
  return absl::OkStatus();
}

}  // namespace

void OipInfer(Frontend* frontend, PendingCall* call, const ModelInferRequest* request, ModelInferResponse* response,
              bool raw_outputs) {
  absl::StatusOr<int64_t> version = ParseVersion(request->model_version());
  if (!version.ok()) return call->Answer(version.status());
  ServedModel* model = frontend->ResolveOrAnswer(call, request->model_name(), *version, std::nullopt);
  if (model == nullptr) return;
  const ModelSpec& spec = *model->spec;
  auto state = std::make_shared<InferState>();
  absl::StatusOr<ParsedInput> input = ParseInput(*request, spec);
  if (!input.ok()) return call->Answer(input.status());
  state->input = std::move(*input);
  absl::StatusOr<RequestedOutputs> outputs = ParseOutputs(*request, spec);
  if (!outputs.ok()) return call->Answer(outputs.status());
  state->outputs = std::move(*outputs);
  state->paste_masks = std::find(state->outputs.names.begin(), state->outputs.names.end(), "masks") !=
                       state->outputs.names.end();
  const bool detects = ServingTask(spec.task) == Task::kDetection;
  if (detects) {
    absl::StatusOr<DetectOptions> options = DetectOptionsFromParameters(request->parameters(), spec.postprocess);
    if (!options.ok()) return call->Answer(options.status());
    state->detect = *options;
  }
  state->typed = !raw_outputs && request->raw_input_contents_size() == 0;
  const int n = state->input.count();
  state->probabilities.resize(spec.task == Task::kClassification ? n : 0);
  state->top.resize(spec.task == Task::kClassification ? n : 0);
  state->detections.resize(detects ? n : 0);
  state->masks.resize(spec.task == Task::kSegmentation ? n : 0);

  std::vector<ImageInput> images(n);
  for (int i = 0; i < n; ++i) {
    if (!state->input.images.empty()) {
      images[i].image = &state->input.images[i];
    } else {
      images[i].tensor = std::move(state->input.tensors[i]);
    }
  }
  Frontend::Respond respond = [state, model](int index, const RowOutputs& outputs,
                                             const ResizedImage& image) -> absl::Status {
    const ModelSpec& spec = *model->spec;
    switch (spec.task) {
      case Task::kClassification: {
        const float* logits = outputs[0].f32.data();
        for (int i = 0; i < spec.num_classes; ++i) {
          if (!std::isfinite(logits[i])) {
            return absl::InternalError(absl::StrCat("model \"", spec.name, "\" produced a non-finite logit (",
                                                    logits[i], ") for class ", i));
          }
        }
        if (state->outputs.classification > 0) {
          state->top[index] = SoftmaxTopK(logits, spec.num_classes, state->outputs.classification);
        } else {
          state->probabilities[index] = Softmax(logits, spec.num_classes);
        }
        return absl::OkStatus();
      }
      case Task::kDetection:
      case Task::kInstanceSegmentation: {
        absl::StatusOr<ImageDetections> answer =
            SelectImageDetections(spec, outputs, image, state->detect, state->paste_masks);
        if (!answer.ok()) return answer.status();
        state->detections[index] = std::move(*answer);
        return absl::OkStatus();
      }
      case Task::kSegmentation: {
        const OutputRow& logits = outputs[0];  // [C, H/4, W/4]
        const double stride = static_cast<double>(spec.input.height) / logits.shape[1];
        state->masks[index] = ArgmaxResize(logits.f32.data(), static_cast<int>(logits.shape[0]),
                                           static_cast<int>(logits.shape[1]), static_cast<int>(logits.shape[2]),
                                           image.scale_x, stride, image.source_width, image.source_height)
                                  .mask;
        return absl::OkStatus();
      }
    }
    return absl::InternalError("unknown task");
  };
  Frontend::Complete complete = [state, model, request, response]() -> absl::Status {
    response->set_model_name(model->spec->name);
    response->set_model_version(std::to_string(model->version));
    response->set_id(request->id());
    return WriteOutputs(*state, *model, response);
  };
  frontend->Infer(call, model, std::move(images),
                  spec.task == Task::kClassification ? Frontend::RespondOn::kExecutor : Frontend::RespondOn::kPool,
                  std::move(respond), std::move(complete));
}

absl::StatusOr<inference::ModelMetadataResponse> OipModelMetadata(const Frontend& frontend, const std::string& name,
                                                                  const std::string& version) {
  absl::StatusOr<ServedModel*> resolved = ResolveNamed(frontend, name, version);
  if (!resolved.ok()) return resolved.status();
  const ModelSpec& spec = *(*resolved)->spec;
  inference::ModelMetadataResponse response;
  response.set_name(spec.name);
  for (const auto& [v, served] : (*frontend.Available())->Find(spec.name)->versions) {
    response.add_versions(std::to_string(v));
  }
  response.set_platform("careserve_torchscript");
  auto tensor = [](google::protobuf::RepeatedPtrField<inference::ModelMetadataResponse::TensorMetadata>* list,
                   const std::string& name, const std::string& datatype, std::vector<int64_t> shape) {
    auto* t = list->Add();
    t->set_name(name);
    t->set_datatype(datatype);
    for (int64_t d : shape) t->add_shape(d);
  };
  tensor(response.mutable_inputs(), "image", "BYTES", {-1});
  tensor(response.mutable_inputs(), "pixels", "UINT8", {-1, -1, -1, 3});
  tensor(response.mutable_inputs(), "input", "FP32", {-1, 3, spec.input.height, spec.input.width});
  switch (spec.task) {
    case Task::kClassification:
      tensor(response.mutable_outputs(), "probabilities", "FP32", {-1, spec.num_classes});
      break;
    case Task::kDetection:
    case Task::kInstanceSegmentation:
      tensor(response.mutable_outputs(), "boxes", "FP32", {-1, -1, 4});
      tensor(response.mutable_outputs(), "scores", "FP32", {-1, -1});
      tensor(response.mutable_outputs(), "classes", "INT32", {-1, -1});
      tensor(response.mutable_outputs(), "num_detections", "INT32", {-1});
      if (spec.task == Task::kInstanceSegmentation) tensor(response.mutable_outputs(), "masks", "BYTES", {-1, -1});
      break;
    case Task::kSegmentation:
      tensor(response.mutable_outputs(), "mask", spec.num_classes > 256 ? "UINT16" : "UINT8", {-1, -1, -1});
      break;
  }
  return response;
}

absl::StatusOr<bool> OipModelReady(const Frontend& frontend, const std::string& name, const std::string& version) {
  if (!frontend.Available().ok()) return false;
  absl::StatusOr<ServedModel*> resolved = ResolveNamed(frontend, name, version);
  if (resolved.ok()) return true;
  if (resolved.status().code() == absl::StatusCode::kFailedPrecondition) return false;  // failed to load
  return resolved.status();
}

inference::ServerMetadataResponse OipServerMetadata() {
  inference::ServerMetadataResponse response;
  response.set_name("careserve");
  response.set_version(CareserveVersion());
  response.add_extensions("classification");
  response.add_extensions("binary_tensor_data");
  return response;
}

GrpcCall* OipService::NewCall(grpc::CallbackServerContext* context, const char* method) {
  return new GrpcCall(context, frontend_->metrics(), frontend_->active(), "oip_grpc", method);
}

grpc::ServerUnaryReactor* OipService::ServerLive(grpc::CallbackServerContext* context,
                                                 const inference::ServerLiveRequest*,
                                                 inference::ServerLiveResponse* response) {
  GrpcCall* call = NewCall(context, "ServerLive");
  response->set_live(true);
  call->Answer(absl::OkStatus());
  return call;
}

grpc::ServerUnaryReactor* OipService::ServerReady(grpc::CallbackServerContext* context,
                                                  const inference::ServerReadyRequest*,
                                                  inference::ServerReadyResponse* response) {
  GrpcCall* call = NewCall(context, "ServerReady");
  response->set_ready(frontend_->Available().ok());
  call->Answer(absl::OkStatus());
  return call;
}

grpc::ServerUnaryReactor* OipService::ModelReady(grpc::CallbackServerContext* context,
                                                 const inference::ModelReadyRequest* request,
                                                 inference::ModelReadyResponse* response) {
  GrpcCall* call = NewCall(context, "ModelReady");
  absl::StatusOr<bool> ready = OipModelReady(*frontend_, request->name(), request->version());
  if (ready.ok()) response->set_ready(*ready);
  call->Answer(ready.status());
  return call;
}

grpc::ServerUnaryReactor* OipService::ServerMetadata(grpc::CallbackServerContext* context,
                                                     const inference::ServerMetadataRequest*,
                                                     inference::ServerMetadataResponse* response) {
  GrpcCall* call = NewCall(context, "ServerMetadata");
  *response = OipServerMetadata();
  call->Answer(absl::OkStatus());
  return call;
}

grpc::ServerUnaryReactor* OipService::ModelMetadata(grpc::CallbackServerContext* context,
                                                    const inference::ModelMetadataRequest* request,
                                                    inference::ModelMetadataResponse* response) {
  GrpcCall* call = NewCall(context, "ModelMetadata");
  absl::StatusOr<inference::ModelMetadataResponse> metadata =
      OipModelMetadata(*frontend_, request->name(), request->version());
  if (metadata.ok()) {
    *response = std::move(*metadata);
    call->SetModelLabel(response->name());
  }
  call->Answer(metadata.status());
  return call;
}

grpc::ServerUnaryReactor* OipService::ModelInfer(grpc::CallbackServerContext* context,
                                                 const inference::ModelInferRequest* request,
                                                 inference::ModelInferResponse* response) {
  GrpcCall* call = NewCall(context, "ModelInfer");
  OipInfer(frontend_, call, request, response);
  return call;
}

}  // namespace careserve
