#include "clients/oip_client.h"

#include <httplib.h>

#include <cstring>
#include <map>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "clients/tls_flags.h"
#include "nlohmann/json.hpp"
#include "opencv2/imgcodecs.hpp"
#include "opencv2/imgproc.hpp"

namespace careserve {
namespace {

namespace v1 = care::vision::v1;
using inference::ModelInferRequest;
using inference::ModelInferResponse;
using json = nlohmann::json;

grpc::Status Invalid(const std::string& message) { return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, message); }
grpc::Status BadAnswer(const std::string& message) {
  return grpc::Status(grpc::StatusCode::INTERNAL, "the server's ModelInfer answer: " + message);
}

grpc::Status Start(const std::string& model, int64_t version, const v1::Image& image, ModelInferRequest* out) {
  if (model.empty()) return Invalid("the Open Inference Protocol needs a model name (--model)");
  out->set_model_name(model);
  if (version != 0) out->set_model_version(std::to_string(version));
  auto* input = out->add_inputs();
  if (image.has_raw()) {
    const v1::RawImage& raw = image.raw();
    const int type = raw.format() == v1::GRAY8 ? CV_8UC1 : CV_8UC3;
    const size_t channels = raw.format() == v1::GRAY8 ? 1 : 3;
    if (raw.width() <= 0 || raw.height() <= 0 ||
        raw.data().size() != static_cast<size_t>(raw.width()) * raw.height() * channels) {
      return Invalid("raw image: data does not match its width, height and format");
    }
    const cv::Mat pixels(raw.height(), raw.width(), type, const_cast<char*>(raw.data().data()));
    cv::Mat rgb;
    if (raw.format() == v1::GRAY8) {
      cv::cvtColor(pixels, rgb, cv::COLOR_GRAY2RGB);
    } else if (raw.format() == v1::BGR8) {
      cv::cvtColor(pixels, rgb, cv::COLOR_BGR2RGB);
    } else {
      rgb = pixels;
    }
    input->set_name("pixels");
    input->set_datatype("UINT8");
    for (int64_t d : {1, raw.height(), raw.width(), 3}) input->add_shape(d);
    out->add_raw_input_contents(std::string(reinterpret_cast<const char*>(rgb.data), rgb.total() * 3));
    return grpc::Status::OK;
  }
  input->set_name("image");
  input->set_datatype("BYTES");
  input->add_shape(1);
  const uint32_t n = static_cast<uint32_t>(image.encoded().size());
  std::string raw(4, '\0');
  for (int k = 0; k < 4; ++k) raw[k] = static_cast<char>((n >> (8 * k)) & 0xff);
  raw += image.encoded();
  out->add_raw_input_contents(std::move(raw));
  return grpc::Status::OK;
}

// Output `name`: its index, or -1.
int Find(const ModelInferResponse& response, const std::string& name) {
  for (int i = 0; i < response.outputs_size(); ++i) {
    if (response.outputs(i).name() == name) return i;
  }
  return -1;
}

// The requests above send raw inputs, so the protocol answers raw outputs.
bool AllRaw(const ModelInferResponse& response) {
  return response.raw_output_contents_size() == response.outputs_size();
}

template <typename T>
std::vector<T> Values(const ModelInferResponse& response, int i) {
  const std::string& raw = response.raw_output_contents(i);
  std::vector<T> values(raw.size() / sizeof(T));
  std::memcpy(values.data(), raw.data(), values.size() * sizeof(T));
  return values;
}

void Header(const ModelInferResponse& response, std::string* model, int64_t* version) {
  *model = response.model_name();
  int64_t v = 0;
  *version = absl::SimpleAtoi(response.model_version(), &v) ? v : 0;
}

}  // namespace

grpc::Status OipClassifyRequest(const v1::ClassifyRequest& request, ModelInferRequest* out) {
  if (grpc::Status s = Start(request.model(), request.model_version(), request.image(), out); !s.ok()) return s;
  auto* output = out->add_outputs();
  output->set_name("probabilities");
  (*output->mutable_parameters())["classification"].set_int64_param(request.top_k() == 0 ? 5 : request.top_k());
  return grpc::Status::OK;
}

grpc::Status OipDetectRequest(const v1::DetectRequest& request, ModelInferRequest* out) {
  if (grpc::Status s = Start(request.model(), request.model_version(), request.image(), out); !s.ok()) return s;
  auto& parameters = *out->mutable_parameters();
  if (request.score_threshold() != 0) parameters["score_threshold"].set_double_param(request.score_threshold());
  if (request.iou_threshold() != 0) parameters["iou_threshold"].set_double_param(request.iou_threshold());
  if (request.max_detections() != 0) parameters["max_detections"].set_int64_param(request.max_detections());
  return grpc::Status::OK;
}

grpc::Status OipSegmentRequest(const v1::SegmentRequest& request, ModelInferRequest* out) {
  return Start(request.model(), request.model_version(), request.image(), out);
}

// The elements of a raw BYTES tensor: each a 4-byte little-endian length, then the bytes.
bool SplitLengthPrefixed(const std::string& raw, std::vector<std::string>* out) {
  out->clear();
  size_t at = 0;
  while (at + 4 <= raw.size()) {
    const auto* p = reinterpret_cast<const unsigned char*>(raw.data() + at);
    const uint32_t n = p[0] | (p[1] << 8) | (p[2] << 16) | (static_cast<uint32_t>(p[3]) << 24);
    if (n > raw.size() - at - 4) return false;
    out->push_back(raw.substr(at + 4, n));
    at += 4 + n;
  }
  return at == raw.size();
}

// {"size": [h, w], "counts": "..."}: a COCO RLE object.
bool ParseRleJson(const std::string& text, v1::CocoRle* rle) {
  const json parsed = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!parsed.is_object() || !parsed.contains("size") || !parsed.contains("counts")) return false;
  const json& size = parsed["size"];
  if (!size.is_array() || size.size() != 2 || !size[0].is_number_integer() || !size[1].is_number_integer() ||
      !parsed["counts"].is_string()) {
    return false;
  }
  rle->add_size(size[0].get<int>());
  rle->add_size(size[1].get<int>());
  rle->set_counts(parsed["counts"].get<std::string>());
  return true;
}

grpc::Status VisionClassifyResponse(const ModelInferResponse& response, v1::ClassifyResponse* out) {
  int64_t version = 0;
  Header(response, out->mutable_model(), &version);
  out->set_model_version(version);
  if (!AllRaw(response)) return BadAnswer("outputs not in raw form");
  const int i = Find(response, "probabilities");
  if (i < 0 || response.outputs(i).datatype() != "BYTES") return BadAnswer("no BYTES output probabilities");
  std::vector<std::string> entries;
  if (!SplitLengthPrefixed(response.raw_output_contents(i), &entries)) {
    return BadAnswer("probabilities: malformed BYTES elements");
  }
  for (const std::string& entry : entries) {
    std::vector<std::string> parts = absl::StrSplit(entry, absl::MaxSplits(':', 2));
    float score = 0;
    int index = 0;
    if (parts.size() != 3 || !absl::SimpleAtof(parts[0], &score) || !absl::SimpleAtoi(parts[1], &index)) {
      return BadAnswer(absl::StrCat("classification entry \"", entry, "\" is not score:index:label"));
    }
    v1::Classification* c = out->add_classes();
    c->set_score(score);
    c->set_index(index);
    c->set_label(parts[2]);
  }
  return grpc::Status::OK;
}

grpc::Status VisionDetectResponse(const ModelInferResponse& response, v1::DetectResponse* out) {
  int64_t version = 0;
  Header(response, out->mutable_model(), &version);
  out->set_model_version(version);
  const int b = Find(response, "boxes"), s = Find(response, "scores"), c = Find(response, "classes"),
            n = Find(response, "num_detections");
  if (b < 0 || s < 0 || c < 0 || n < 0) return BadAnswer("missing boxes, scores, classes or num_detections");
  if (!AllRaw(response)) return BadAnswer("outputs not in raw form");
  const std::vector<float> boxes = Values<float>(response, b), scores = Values<float>(response, s);
  const std::vector<int32_t> classes = Values<int32_t>(response, c), counts = Values<int32_t>(response, n);
  if (counts.size() != 1 || static_cast<size_t>(counts[0]) > scores.size() || boxes.size() != 4 * scores.size() ||
      classes.size() != scores.size()) {
    return BadAnswer("detection outputs of inconsistent sizes");
  }
  // Mask R-CNN models add `masks`: one COCO RLE JSON object per detection.
  const int m = Find(response, "masks");
  std::vector<std::string> masks;
  if (m >= 0) {
    if (!SplitLengthPrefixed(response.raw_output_contents(m), &masks) || masks.size() != scores.size()) {
      return BadAnswer("masks output not one BYTES element per detection");
    }
  }
  for (int j = 0; j < counts[0]; ++j) {
    v1::Detection* d = out->add_detections();
    d->mutable_box()->set_x_min(boxes[4 * j]);
    d->mutable_box()->set_y_min(boxes[4 * j + 1]);
    d->mutable_box()->set_x_max(boxes[4 * j + 2]);
    d->mutable_box()->set_y_max(boxes[4 * j + 3]);
    d->set_class_index(classes[j]);
    d->set_score(scores[j]);
    if (m >= 0 && !ParseRleJson(masks[j], d->mutable_mask())) {
      return BadAnswer(absl::StrCat("masks[", j, "] is not COCO RLE JSON: ", masks[j].substr(0, 80)));
    }
  }
  return grpc::Status::OK;
}

grpc::Status VisionSegmentResponse(const ModelInferResponse& response, v1::SegmentResponse* out) {
  int64_t version = 0;
  Header(response, out->mutable_model(), &version);
  out->set_model_version(version);
  const int i = Find(response, "mask");
  if (i < 0 || response.outputs(i).shape_size() != 3) return BadAnswer("no mask output [1, H, W]");
  const auto& tensor = response.outputs(i);
  const int height = static_cast<int>(tensor.shape(1)), width = static_cast<int>(tensor.shape(2));
  const bool wide = tensor.datatype() == "UINT16";
  cv::Mat mask(height, width, wide ? CV_16UC1 : CV_8UC1);
  const size_t bytes = mask.total() * mask.elemSize();
  if (!AllRaw(response) || response.raw_output_contents(i).size() != bytes) {
    return BadAnswer("mask not raw [1, H, W] bytes");
  }
  std::memcpy(mask.data, response.raw_output_contents(i).data(), bytes);
  std::vector<uchar> png;
  cv::imencode(".png", mask, png);
  out->set_mask_png(std::string(png.begin(), png.end()));
  out->set_width(width);
  out->set_height(height);
  std::map<int, int64_t> pixels;
  for (size_t k = 0; k < mask.total(); ++k) ++pixels[wide ? mask.ptr<uint16_t>()[k] : mask.ptr<uint8_t>()[k]];
  std::vector<std::pair<int64_t, int>> order;
  for (const auto& [cls, count] : pixels) order.push_back({-count, cls});
  std::sort(order.begin(), order.end());
  for (const auto& [negative, cls] : order) {
    v1::ClassCoverage* coverage = out->add_classes();
    coverage->set_class_index(cls);
    coverage->set_fraction(static_cast<float>(-negative / static_cast<double>(mask.total())));
  }
  return grpc::Status::OK;
}

std::unique_ptr<httplib::Client> MakeOipHttpClient(const std::string& host_port, const HttpTls& tls) {
  std::unique_ptr<httplib::Client> client;
  const std::string url = (tls.tls ? "https://" : "http://") + host_port;
  if (tls.tls && !tls.cert.empty()) {
    client = std::make_unique<httplib::Client>(url, tls.cert, tls.key);
  } else {
    client = std::make_unique<httplib::Client>(url);
  }
  if (tls.tls && !tls.ca.empty()) client->set_ca_cert_path(tls.ca.c_str());
  client->set_keep_alive(true);
  client->set_tcp_nodelay(true);  // headers and body are separate writes (Nagle would delay the body)
  return client;
}

namespace {


grpc::StatusCode CodeForHttp(int status) {
  switch (status) {
    case 400: return grpc::StatusCode::INVALID_ARGUMENT;
    case 404: return grpc::StatusCode::NOT_FOUND;
    case 413: case 429: return grpc::StatusCode::RESOURCE_EXHAUSTED;
    case 499: return grpc::StatusCode::CANCELLED;
    case 503: return grpc::StatusCode::UNAVAILABLE;
    case 504: return grpc::StatusCode::DEADLINE_EXCEEDED;
    default: return status >= 500 ? grpc::StatusCode::INTERNAL : grpc::StatusCode::UNKNOWN;
  }
}

json ParameterJson(const inference::InferParameter& p) {
  switch (p.parameter_choice_case()) {
    case inference::InferParameter::kBoolParam: return p.bool_param();
    case inference::InferParameter::kInt64Param: return p.int64_param();
    case inference::InferParameter::kUint64Param: return p.uint64_param();
    case inference::InferParameter::kDoubleParam: return p.double_param();
    case inference::InferParameter::kStringParam: return p.string_param();
    default: return nullptr;
  }
}

}  // namespace

grpc::Status OipHttpInfer(httplib::Client* client, const ModelInferRequest& request, ModelInferResponse* response,
                          double timeout_seconds) {
  if (request.raw_input_contents_size() != request.inputs_size()) {
    return Invalid("OipHttpInfer sends raw (binary) inputs only");
  }
  json header = {{"inputs", json::array()}, {"parameters", {{"binary_data_output", true}}}};
  if (!request.id().empty()) header["id"] = request.id();
  for (const auto& [key, value] : request.parameters()) header["parameters"][key] = ParameterJson(value);
  std::string binary;
  for (int i = 0; i < request.inputs_size(); ++i) {
    const auto& input = request.inputs(i);
    header["inputs"].push_back({{"name", input.name()},
                                {"datatype", input.datatype()},
                                {"shape", std::vector<int64_t>(input.shape().begin(), input.shape().end())},
                                {"parameters", {{"binary_data_size", request.raw_input_contents(i).size()}}}});
    binary += request.raw_input_contents(i);
  }
  if (request.outputs_size() > 0) {
    header["outputs"] = json::array();
    for (const auto& output : request.outputs()) {
      json parameters = {{"binary_data", true}};
      for (const auto& [key, value] : output.parameters()) parameters[key] = ParameterJson(value);
      header["outputs"].push_back({{"name", output.name()}, {"parameters", parameters}});
    }
  }
  std::string path = "/v2/models/" + request.model_name();
  if (!request.model_version().empty()) path += "/versions/" + request.model_version();
  path += "/infer";
  const std::string text = header.dump();
  httplib::Headers headers = {{"Inference-Header-Content-Length", std::to_string(text.size())}};
  if (timeout_seconds > 0) {
    headers.emplace("Inference-Timeout", std::to_string(timeout_seconds));
    const auto seconds = static_cast<time_t>(timeout_seconds) + 1;
    client->set_read_timeout(seconds, 0);
    client->set_write_timeout(seconds, 0);
  }
  auto result = client->Post(path.c_str(), headers, text + binary, "application/octet-stream");
  if (!result) {
    return grpc::Status(grpc::StatusCode::UNAVAILABLE, "HTTP request failed: " + httplib::to_string(result.error()));
  }
  std::string body_header = result->body;
  size_t at = body_header.size();
  if (result->has_header("Inference-Header-Content-Length")) {
    at = std::stoul(result->get_header_value("Inference-Header-Content-Length"));
    if (at > result->body.size()) return BadAnswer("Inference-Header-Content-Length past the body");
    body_header = result->body.substr(0, at);
  }
  const json answer = json::parse(body_header, nullptr, false);
  if (answer.is_discarded() || !answer.is_object()) return BadAnswer("the HTTP body is not JSON");
  if (result->status != 200) {
    return grpc::Status(CodeForHttp(result->status),
                        answer.contains("error") && answer["error"].is_string() ? answer["error"].get<std::string>()
                                                                                 : result->body);
  }
  response->set_model_name(answer.value("model_name", ""));
  response->set_model_version(answer.value("model_version", ""));
  response->set_id(answer.value("id", ""));
  for (const json& output : answer.value("outputs", json::array())) {
    auto* out = response->add_outputs();
    out->set_name(output.value("name", ""));
    out->set_datatype(output.value("datatype", ""));
    for (const json& d : output.value("shape", json::array())) out->add_shape(d.get<int64_t>());
    if (!output.contains("parameters") || !output["parameters"].contains("binary_data_size")) {
      return BadAnswer("output " + out->name() + " did not come as binary data");
    }
    const size_t size = output["parameters"]["binary_data_size"].get<size_t>();
    if (size > result->body.size() - at) return BadAnswer("binary_data_size past the body");
    response->add_raw_output_contents(result->body.substr(at, size));
    at += size;
  }
  return grpc::Status::OK;
}

}  // namespace careserve
