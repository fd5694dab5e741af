#include "server/api/http_service.h"

#include <httplib.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <utility>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "server/api/console_assets.h"
#include "server/api/oip_service.h"
#include "server/common/thread_name.h"

namespace careserve {
namespace {

using json = nlohmann::json;
using inference::InferParameter;
using inference::ModelInferRequest;
using inference::ModelInferResponse;
using ParameterMap = google::protobuf::Map<std::string, InferParameter>;

constexpr char kBinaryHeader[] = "Inference-Header-Content-Length";
constexpr char kTimeoutHeader[] = "Inference-Timeout";

// One HTTP request of the protocol: the handler thread waits for its answer.
class HttpCall final : public PendingCall {
 public:
  HttpCall(Frontend* frontend, const char* method)
      : PendingCall(frontend->metrics(), frontend->active(), "oip_http", method, absl::InfiniteFuture()),
        sync_(std::make_shared<Sync>()) {}

  absl::Status Wait() {
    sync_->done.WaitForNotification();
    return sync_->status;
  }

 private:
  struct Sync {
    absl::Notification done;
    absl::Status status;
  };
  void Send(const absl::Status& status) override {
    // The handler may destroy this call as soon as it is notified: Notify works on a copy.
    std::shared_ptr<Sync> sync = sync_;
    sync->status = status;
    sync->done.Notify();
  }
  std::shared_ptr<Sync> sync_;
};

std::string Dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

void ReplyJson(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(Dump(body), "application/json");
}

void ReplyError(httplib::Response& res, const absl::Status& status) {
  ReplyJson(res, HttpStatusFor(status.code()), json{{"error", std::string(status.message())}});
}

absl::Status Invalid(const std::string& message) { return absl::InvalidArgumentError(message); }

// JSON parameters -> the protocol's InferParameter map, leaving out `skip` (the binary
// extension's and the transport's own).
absl::Status ToParameters(const json& j, ParameterMap* out, const std::string& where,
                          std::initializer_list<const char*> skip) {
  if (j.is_null()) return absl::OkStatus();
  if (!j.is_object()) return Invalid(absl::StrCat(where, " parameters must be a JSON object"));
  for (const auto& [key, value] : j.items()) {
    if (std::find_if(skip.begin(), skip.end(), [&](const char* s) { return key == s; }) != skip.end()) continue;
    InferParameter& p = (*out)[key];
    if (value.is_boolean()) {
      p.set_bool_param(value.get<bool>());
    } else if (value.is_number_unsigned() &&
               value.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      p.set_uint64_param(value.get<uint64_t>());
    } else if (value.is_number_integer()) {
      p.set_int64_param(value.get<int64_t>());
    } else if (value.is_number_float()) {
      p.set_double_param(value.get<double>());
    } else if (value.is_string()) {
      p.set_string_param(value.get<std::string>());
    } else {
      return Invalid(absl::StrCat(where, " parameter ", key, " must be a boolean, a number or a string"));
    }
  }
  return absl::OkStatus();
}

// The elements of `data`, nested arrays flattened in row-major order.
void Flatten(const json& data, std::vector<const json*>* out) {
  if (data.is_array()) {
    for (const json& element : data) Flatten(element, out);
  } else {
    out->push_back(&data);
  }
}

// JSON `data` -> typed contents of `datatype`. `base64`: BYTES elements are base64 text
// (MLServer's content_type "base64"), so that binary files fit in JSON.
absl::Status ToContents(const json& data, const std::string& name, const std::string& datatype, bool base64,
                        inference::InferTensorContents* out) {
  std::vector<const json*> elements;
  Flatten(data, &elements);
  auto fail = [&](size_t i, const char* expected) {
    return Invalid(absl::StrCat("input ", name, ": data[", i, "] is not ", expected, " (datatype ", datatype, ")"));
  };
  for (size_t i = 0; i < elements.size(); ++i) {
    const json& e = *elements[i];
    if (datatype == "BYTES") {
      if (!e.is_string()) return fail(i, "a string");
      if (!base64) {
        out->add_bytes_contents(e.get<std::string>());
        continue;
      }
      std::string decoded;
      if (!absl::Base64Unescape(e.get<std::string>(), &decoded)) return fail(i, "base64 text");
      out->add_bytes_contents(std::move(decoded));
    } else if (datatype == "UINT8" || datatype == "UINT16" || datatype == "UINT32") {
      const uint64_t limit = datatype == "UINT8" ? 0xff : datatype == "UINT16" ? 0xffff : 0xffffffffu;
      if (!e.is_number_integer() || e.get<int64_t>() < 0 || e.get<uint64_t>() > limit) {
        return fail(i, "an integer in its range");
      }
      out->add_uint_contents(static_cast<uint32_t>(e.get<uint64_t>()));
    } else if (datatype == "INT8" || datatype == "INT16" || datatype == "INT32") {
      if (!e.is_number_integer()) return fail(i, "an integer");
      out->add_int_contents(static_cast<int32_t>(e.get<int64_t>()));
    } else if (datatype == "INT64") {
      if (!e.is_number_integer()) return fail(i, "an integer");
      out->add_int64_contents(e.get<int64_t>());
    } else if (datatype == "FP32") {
      if (!e.is_number()) return fail(i, "a number");
      out->add_fp32_contents(e.get<float>());
    } else if (datatype == "FP64") {
      if (!e.is_number()) return fail(i, "a number");
      out->add_fp64_contents(e.get<double>());
    } else if (datatype == "BOOL") {
      if (!e.is_boolean()) return fail(i, "a boolean");
      out->add_bool_contents(e.get<bool>());
    } else {
      return Invalid(absl::StrCat("input ", name, ": datatype \"", datatype, "\" cannot be sent as JSON data"));
    }
  }
  return absl::OkStatus();
}

// What the HTTP request asked of the answer beyond the protocol's messages.
struct HttpOutputs {
  bool all_binary = false;              // request parameter binary_data_output
  std::map<std::string, bool> binary;   // per output: parameter binary_data
};

// An infer request's body (JSON, or JSON header + binary data) -> ModelInferRequest.
absl::Status ParseInfer(const httplib::Request& req, ModelInferRequest* request, HttpOutputs* outputs,
                        absl::Time* deadline) {
  std::string_view header = req.body, binary;
  if (req.has_header(kBinaryHeader)) {
    size_t length = 0;
    if (!absl::SimpleAtoi(req.get_header_value(kBinaryHeader), &length) || length > req.body.size()) {
      return Invalid(absl::StrCat(kBinaryHeader, " must be the JSON header's length, at most the body's ",
                                  req.body.size(), " bytes; got \"", req.get_header_value(kBinaryHeader), "\""));
    }
    header = std::string_view(req.body).substr(0, length);
    binary = std::string_view(req.body).substr(length);
  }
  const json j = json::parse(header, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return Invalid("the request body is not a JSON object");
  if (j.contains("id")) {
    if (!j["id"].is_string()) return Invalid("id must be a string");
    request->set_id(j["id"].get<std::string>());
  }
  const json parameters = j.value("parameters", json());
  if (absl::Status s = ToParameters(parameters, request->mutable_parameters(), "request",
                                    {"binary_data_output", "timeout"});
      !s.ok()) {
    return s;
  }
  if (parameters.is_object()) {
    outputs->all_binary = parameters.value("binary_data_output", false) == true;
    if (parameters.contains("timeout")) {
      // Triton's request timeout, in microseconds.
      if (!parameters["timeout"].is_number_integer() || parameters["timeout"].get<int64_t>() <= 0) {
        return Invalid("parameter timeout must be a positive number of microseconds");
      }
      *deadline = std::min(*deadline, absl::Now() + absl::Microseconds(parameters["timeout"].get<int64_t>()));
    }
  }
  if (!j.contains("inputs") || !j["inputs"].is_array()) return Invalid("inputs must be a JSON array");
  size_t at = 0;  // in `binary`
  int binary_inputs = 0;
  for (const json& input : j["inputs"]) {
    if (!input.is_object() || !input.contains("name") || !input["name"].is_string() || !input.contains("datatype") ||
        !input["datatype"].is_string() || !input.contains("shape") || !input["shape"].is_array()) {
      return Invalid("every input needs name, datatype (strings) and shape (an array)");
    }
    auto* tensor = request->add_inputs();
    tensor->set_name(input["name"].get<std::string>());
    tensor->set_datatype(input["datatype"].get<std::string>());
    for (const json& d : input["shape"]) {
      if (!d.is_number_integer()) return Invalid(absl::StrCat("input ", tensor->name(), ": shape must hold integers"));
      tensor->add_shape(d.get<int64_t>());
    }
    const json input_parameters = input.value("parameters", json());
    if (absl::Status s = ToParameters(input_parameters, tensor->mutable_parameters(),
                                      absl::StrCat("input ", tensor->name()), {"binary_data_size", "content_type"});
        !s.ok()) {
      return s;
    }
    if (input_parameters.is_object() && input_parameters.contains("binary_data_size")) {
      const json& size = input_parameters["binary_data_size"];
      if (!size.is_number_unsigned() || size.get<uint64_t>() > binary.size() - at) {
        return Invalid(absl::StrCat("input ", tensor->name(), ": binary_data_size ", Dump(size),
                                    " does not fit the ", binary.size() - at, " bytes of binary data left"));
      }
      request->add_raw_input_contents(std::string(binary.substr(at, size.get<uint64_t>())));
      at += size.get<uint64_t>();
      ++binary_inputs;
      if (input.contains("data")) return Invalid(absl::StrCat("input ", tensor->name(), " has both data and binary data"));
    } else {
      if (!input.contains("data")) {
        return Invalid(absl::StrCat("input ", tensor->name(), " has no data (nor binary_data_size)"));
      }
      const bool base64 = input_parameters.is_object() && input_parameters.value("content_type", "") == "base64";
      if (absl::Status s =
              ToContents(input["data"], tensor->name(), tensor->datatype(), base64, tensor->mutable_contents());
          !s.ok()) {
        return s;
      }
    }
  }
  if (binary_inputs > 0 && binary_inputs != request->inputs_size()) {
    return Invalid("either every input comes as binary data or none does");
  }
  if (at != binary.size()) {
    return Invalid(absl::StrCat(binary.size() - at, " bytes of binary data after the last input's binary_data_size"));
  }
  if (j.contains("outputs")) {
    if (!j["outputs"].is_array()) return Invalid("outputs must be a JSON array");
    for (const json& output : j["outputs"]) {
      if (!output.is_object() || !output.contains("name") || !output["name"].is_string()) {
        return Invalid("every requested output needs a name");
      }
      auto* requested = request->add_outputs();
      requested->set_name(output["name"].get<std::string>());
      const json output_parameters = output.value("parameters", json());
      if (absl::Status s = ToParameters(output_parameters, requested->mutable_parameters(),
                                        absl::StrCat("output ", requested->name()), {"binary_data"});
          !s.ok()) {
        return s;
      }
      if (output_parameters.is_object() && output_parameters.contains("binary_data")) {
        outputs->binary[requested->name()] = output_parameters["binary_data"] == true;
      }
    }
  }
  return absl::OkStatus();
}

// Output i's elements as JSON.
json DataOf(const ModelInferResponse& response, int i) {
  const std::string& raw = response.raw_output_contents(i);
  const std::string& datatype = response.outputs(i).datatype();
  json data = json::array();
  if (datatype == "BYTES") {
    for (size_t at = 0; at + 4 <= raw.size();) {
      const auto* p = reinterpret_cast<const unsigned char*>(raw.data() + at);
      const uint32_t n = p[0] | (p[1] << 8) | (p[2] << 16) | (static_cast<uint32_t>(p[3]) << 24);
      data.push_back(raw.substr(at + 4, n));
      at += 4 + n;
    }
  } else if (datatype == "FP32") {
    for (size_t at = 0; at + 4 <= raw.size(); at += 4) {
      float v;
      std::memcpy(&v, raw.data() + at, 4);
      data.push_back(v);
    }
  } else if (datatype == "INT32") {
    for (size_t at = 0; at + 4 <= raw.size(); at += 4) {
      int32_t v;
      std::memcpy(&v, raw.data() + at, 4);
      data.push_back(v);
    }
  } else if (datatype == "UINT16") {
    for (size_t at = 0; at + 2 <= raw.size(); at += 2) {
      uint16_t v;
      std::memcpy(&v, raw.data() + at, 2);
      data.push_back(v);
    }
  } else {  // UINT8
    for (unsigned char v : raw) data.push_back(v);
  }
  return data;
}

void ReplyInfer(httplib::Response& res, const ModelInferResponse& response, const HttpOutputs& asked) {
  json body = {{"model_name", response.model_name()}, {"model_version", response.model_version()}};
  if (!response.id().empty()) body["id"] = response.id();
  body["outputs"] = json::array();
  std::string binary;
  bool any_binary = false;
  for (int i = 0; i < response.outputs_size(); ++i) {
    const auto& out = response.outputs(i);
    json tensor = {{"name", out.name()}, {"datatype", out.datatype()}, {"shape", json::array()}};
    for (int64_t d : out.shape()) tensor["shape"].push_back(d);
    auto it = asked.binary.find(out.name());
    const bool as_binary = it != asked.binary.end() ? it->second : asked.all_binary;
    if (as_binary) {
      any_binary = true;
      const std::string& bytes = response.raw_output_contents(i);
      tensor["parameters"] = {{"binary_data_size", bytes.size()}};
      binary += bytes;
    } else {
      tensor["data"] = DataOf(response, i);
    }
    body["outputs"].push_back(std::move(tensor));
  }
  res.status = 200;
  if (!any_binary) {
    res.set_content(Dump(body), "application/json");
    return;
  }
  std::string header = Dump(body);
  res.set_header(kBinaryHeader, std::to_string(header.size()));
  res.set_content(header + binary, "application/octet-stream");
}

std::string Group(const httplib::Request& req, size_t i) { return i < req.matches.size() ? req.matches[i].str() : ""; }

// The model directory `name` of the repository, or NOT_FOUND.
absl::StatusOr<const RepositoryModel*> FindModel(const ModelRepository& repository, const std::string& name) {
  if (const RepositoryModel* m = repository.Find(name)) return m;
  return absl::NotFoundError(absl::StrCat("no model named \"", name, "\" in the repository"));
}

// GET /v2/models/{name}/config: what the server read from the model's config.json and
// labels file, and whether it loaded. For any model of the repository, failed ones too.
json ConfigJson(const RepositoryModel& m) {
  json versions = json::array();
  for (const auto& [v, served] : m.versions) versions.push_back(std::to_string(v));
  json out = {{"name", m.name}, {"versions", versions}, {"ready", m.ready()}, {"error", absl::StrJoin(m.errors, "; ")}};
  if (!m.spec.has_value()) return out;
  const ModelSpec& spec = *m.spec;
  out["task"] = TaskName(spec.task);
  out["architecture"] = spec.architecture;
  out["input"] = {{"height", spec.input.height}, {"width", spec.input.width}};
  out["num_classes"] = spec.num_classes;
  out["labels"] = spec.labels;
  out["weights"] = {{"source", spec.weights_source}};
  out["default"] = spec.is_default;
  // The weights' type of the latest version, as the engine found it.
  if (!m.versions.empty()) {
    out["precision"] = m.versions.rbegin()->second->precision;
    if (!m.versions.rbegin()->second->precision_note.empty()) {
      out["precision_note"] = m.versions.rbegin()->second->precision_note;
    }
  }
  if (spec.task == Task::kDetection || spec.task == Task::kInstanceSegmentation) {
    out["postprocess"] = {{"score_threshold", spec.postprocess.score_threshold},
                          {"iou_threshold", spec.postprocess.iou_threshold},
                          {"max_detections", spec.postprocess.max_detections}};
  }
  return out;
}

// One model's entry of GET /v2/models/stats. The histogram's bounds are strings, "+Inf"
// last, as in Prometheus's own JSON.
json StatsJson(const std::string& name, const RequestStats& stats) {
  json buckets = json::array();
  for (const auto& [le, count] : stats.buckets) {
    buckets.push_back({{"le", std::isinf(le) ? std::string("+Inf") : absl::StrFormat("%g", le)}, {"count", count}});
  }
  return {{"name", name},
          {"success_count", stats.ok},
          {"fail_count", stats.failed},
          {"duration_seconds", {{"sum", stats.seconds}, {"buckets", buckets}}}};
}

// Security headers of the console's files: nothing is loaded from elsewhere.
void ConsoleHeaders(httplib::Response& res) {
  res.set_header("Content-Security-Policy",
                 "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
                 "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'");
  res.set_header("X-Content-Type-Options", "nosniff");
  res.set_header("Referrer-Policy", "no-referrer");
  res.set_header("Cache-Control", "no-cache");
}

}  // namespace

int HttpStatusFor(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kOk:
      return 200;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kOutOfRange:
      return 400;
    case absl::StatusCode::kNotFound:
      return 404;
    case absl::StatusCode::kResourceExhausted:
      return 429;
    case absl::StatusCode::kUnavailable:
      return 503;
    case absl::StatusCode::kDeadlineExceeded:
      return 504;
    case absl::StatusCode::kCancelled:
      return 499;
    default:
      return 500;
  }
}

absl::StatusOr<std::unique_ptr<HttpService>> HttpService::Start(Frontend* frontend, const HttpOptions& options) {
  auto service = std::unique_ptr<HttpService>(new HttpService());
  if (!options.tls_cert.empty()) {
    auto server = std::make_unique<httplib::SSLServer>(
        options.tls_cert.c_str(), options.tls_key.c_str(),
        options.tls_client_ca.empty() ? nullptr : options.tls_client_ca.c_str());
    if (!server->is_valid()) {
      return absl::InvalidArgumentError(absl::StrCat("cannot set up HTTPS with --tls_cert=", options.tls_cert,
                                                     " --tls_key=", options.tls_key,
                                                     options.tls_client_ca.empty() ? "" : " --tls_client_ca=",
                                                     options.tls_client_ca));
    }
    service->server_ = std::move(server);
  } else {
    service->server_ = std::make_unique<httplib::Server>();
  }
  httplib::Server& server = *service->server_;
  const int threads = std::max(1, options.threads);
  server.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  server.set_payload_max_length(static_cast<size_t>(options.max_body_bytes));
  server.set_keep_alive_max_count(1000);
  // Headers and body go out in separate writes: without this, Nagle and delayed ACKs add
  // ~40 ms to each exchange.
  server.set_tcp_nodelay(true);
  const int64_t max_body = options.max_body_bytes;
  const bool console = options.console;
  server.set_error_handler([max_body, console](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    if (res.status == 413) {
      res.set_content(Dump(json{{"error", absl::StrCat("the request body is larger than the server's limit of ",
                                                       max_body, " bytes (--max_message_bytes)")}}),
                      "application/json");
    } else if (res.status == 404) {
      res.set_content(Dump(json{{"error", absl::StrCat("no route ", req.method, " ", req.path,
                                                       " (the KServe v2 routes are under /v2",
                                                       console ? "; the web console is at /)" : ")")}}),
                      "application/json");
    } else if (res.status == 400) {
      // httplib's own refusal, before any route ran: the body could not be read.
      res.set_content(Dump(json{{"error", absl::StrCat("cannot read the body of ", req.method, " ", req.path,
                                                       ": it needs a Content-Length or chunked transfer "
                                                       "encoding, and all the bytes it announces")}}),
                      "application/json");
    } else {
      res.set_content(Dump(json{{"error", absl::StrCat("HTTP ", res.status)}}), "application/json");
    }
  });
  server.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr e) {
    std::string what = "unknown error";
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& ex) {
      what = ex.what();
    } catch (...) {
    }
    ReplyJson(res, 500, json{{"error", absl::StrCat("internal error: ", what)}});
  });

  server.Get("/v2/health/live", [frontend](const httplib::Request&, httplib::Response& res) {
    HttpCall call(frontend, "ServerLive");
    call.Answer(absl::OkStatus());
    ReplyJson(res, 200, json{{"live", true}});
  });
  server.Get("/v2/health/ready", [frontend](const httplib::Request&, httplib::Response& res) {
    HttpCall call(frontend, "ServerReady");
    const bool ready = frontend->Available().ok();
    call.Answer(absl::OkStatus());
    ReplyJson(res, ready ? 200 : 503, json{{"ready", ready}});
  });
  server.Get(R"(/v2/?)", [frontend](const httplib::Request&, httplib::Response& res) {
    HttpCall call(frontend, "ServerMetadata");
    const inference::ServerMetadataResponse metadata = OipServerMetadata();
    call.Answer(absl::OkStatus());
    ReplyJson(res, 200,
              json{{"name", metadata.name()},
                   {"version", metadata.version()},
                   {"extensions", std::vector<std::string>(metadata.extensions().begin(), metadata.extensions().end())}});
  });
  // Before the model metadata route, which would take "stats" for a model's name.
  server.Get(R"(/v2/models(?:/([^/]+)(?:/versions/([^/]+))?)?/stats)",
             [frontend](const httplib::Request& req, httplib::Response& res) {
               HttpCall call(frontend, "ModelStatistics");
               absl::StatusOr<const ModelRepository*> repository = frontend->Available();
               absl::Status status = repository.status();
               const std::string name = Group(req, 1), version = Group(req, 2);
               std::vector<const RepositoryModel*> models;
               if (status.ok() && !name.empty()) {
                 absl::StatusOr<const RepositoryModel*> model = FindModel(**repository, name);
                 status = model.status();
                 int64_t v = 0;
                 if (model.ok() && !version.empty() &&
                     (!absl::SimpleAtoi(version, &v) || (*model)->versions.count(v) == 0)) {
                   status = absl::NotFoundError(absl::StrCat("model \"", name, "\" has no version ", version));
                 }
                 if (model.ok()) models.push_back(*model);
               } else if (status.ok()) {
                 for (const auto& m : (*repository)->models()) models.push_back(m.get());
               }
               call.Answer(status);
               if (!status.ok()) return ReplyError(res, status);
               const std::map<std::string, RequestStats> all = frontend->metrics()->InferenceStats();
               json list = json::array();
               for (const RepositoryModel* m : models) {
                 auto it = all.find(m->name);
                 list.push_back(StatsJson(m->name, it == all.end() ? RequestStats{} : it->second));
               }
               ReplyJson(res, 200, json{{"model_stats", list}});
             });
  server.Get(R"(/v2/models/([^/]+)/config)", [frontend](const httplib::Request& req, httplib::Response& res) {
    HttpCall call(frontend, "ModelConfig");
    absl::StatusOr<const ModelRepository*> repository = frontend->Available();
    absl::StatusOr<const RepositoryModel*> model =
        repository.ok() ? FindModel(**repository, Group(req, 1)) : repository.status();
    if (model.ok()) call.SetModelLabel((*model)->name);
    call.Answer(model.status());
    if (!model.ok()) return ReplyError(res, model.status());
    ReplyJson(res, 200, ConfigJson(**model));
  });
  // The model repository extension's index: every version served, and every model that
  // failed to load (state UNAVAILABLE, with the reason); {"ready": true} lists only the first.
  // With a content reader: `curl -X POST` sends no Content-Length, and a request without one
  // has no body (RFC 9112), where httplib's own reading would wait for one until it timed out.
  server.Post("/v2/repository/index", [frontend](const httplib::Request& req, httplib::Response& res,
                                                 const httplib::ContentReader& content_reader) {
    HttpCall call(frontend, "RepositoryIndex");
    std::string body;
    if (req.has_header("Content-Length") || req.has_header("Transfer-Encoding")) {
      content_reader([&](const char* data, size_t length) {
        body.append(data, length);
        return body.size() <= 4096;
      });
    }
    bool ready_only = false;
    if (!body.empty()) {
      const json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
      if (j.is_discarded() || !j.is_object() || (j.contains("ready") && !j["ready"].is_boolean())) {
        const absl::Status bad = Invalid("the index request must be a JSON object, with \"ready\" a boolean if given");
        call.Answer(bad);
        return ReplyError(res, bad);
      }
      ready_only = j.value("ready", false);
    }
    absl::StatusOr<const ModelRepository*> repository = frontend->Available();
    call.Answer(repository.status());
    if (!repository.ok()) return ReplyError(res, repository.status());
    json list = json::array();
    for (const auto& m : (*repository)->models()) {
      for (const auto& [v, served] : m->versions) {
        list.push_back({{"name", m->name}, {"version", std::to_string(v)}, {"state", "READY"}, {"reason", ""}});
      }
      if (m->versions.empty() && !ready_only) {
        list.push_back({{"name", m->name}, {"state", "UNAVAILABLE"}, {"reason", absl::StrJoin(m->errors, "; ")}});
      }
    }
    ReplyJson(res, 200, list);
  });
  if (options.console) {
    for (const ConsoleAsset& asset : ConsoleAssets()) {
      const std::string name = asset.name;
      const std::string path = name == "index.html" ? "/" : absl::StrCat("/console/", name);
      server.Get(path, [asset](const httplib::Request&, httplib::Response& res) {
        ConsoleHeaders(res);
        res.set_content(asset.body.data(), asset.body.size(), asset.content_type);
      });
    }
  }
  server.Get(R"(/v2/models/([^/]+)(?:/versions/([^/]+))?/ready)",
             [frontend](const httplib::Request& req, httplib::Response& res) {
               HttpCall call(frontend, "ModelReady");
               absl::StatusOr<bool> ready = OipModelReady(*frontend, Group(req, 1), Group(req, 2));
               call.Answer(ready.status());
               if (!ready.ok()) return ReplyError(res, ready.status());
               ReplyJson(res, *ready ? 200 : 503, json{{"name", Group(req, 1)}, {"ready", *ready}});
             });
  server.Get(R"(/v2/models/([^/]+)(?:/versions/([^/]+))?)",
             [frontend](const httplib::Request& req, httplib::Response& res) {
               HttpCall call(frontend, "ModelMetadata");
               absl::StatusOr<inference::ModelMetadataResponse> metadata =
                   OipModelMetadata(*frontend, Group(req, 1), Group(req, 2));
               if (metadata.ok()) call.SetModelLabel(metadata->name());
               call.Answer(metadata.status());
               if (!metadata.ok()) return ReplyError(res, metadata.status());
               auto tensors = [](const auto& list) {
                 json out = json::array();
                 for (const auto& t : list) {
                   out.push_back({{"name", t.name()},
                                  {"datatype", t.datatype()},
                                  {"shape", std::vector<int64_t>(t.shape().begin(), t.shape().end())}});
                 }
                 return out;
               };
               ReplyJson(res, 200,
                         json{{"name", metadata->name()},
                              {"versions", std::vector<std::string>(metadata->versions().begin(),
                                                                    metadata->versions().end())},
                              {"platform", metadata->platform()},
                              {"inputs", tensors(metadata->inputs())},
                              {"outputs", tensors(metadata->outputs())}});
             });
  server.Post(R"(/v2/models/([^/]+)(?:/versions/([^/]+))?/infer)",
              [frontend](const httplib::Request& req, httplib::Response& res) {
                HttpCall call(frontend, "ModelInfer");
                ModelInferRequest request;
                request.set_model_name(Group(req, 1));
                request.set_model_version(Group(req, 2));
                HttpOutputs outputs;
                absl::Time deadline = absl::InfiniteFuture();
                absl::Status parsed = absl::OkStatus();
                if (req.has_header(kTimeoutHeader)) {
                  double seconds = 0;
                  if (!absl::SimpleAtod(req.get_header_value(kTimeoutHeader), &seconds) || !(seconds > 0)) {
                    parsed = Invalid(absl::StrCat(kTimeoutHeader, " must be a positive number of seconds, got \"",
                                                  req.get_header_value(kTimeoutHeader), "\""));
                  } else {
                    deadline = call.start() + absl::Seconds(seconds);
                  }
                }
                if (parsed.ok()) parsed = ParseInfer(req, &request, &outputs, &deadline);
                if (!parsed.ok()) {
                  call.Answer(parsed);
                  return ReplyError(res, parsed);
                }
                call.set_deadline(deadline);
                ModelInferResponse response;
                OipInfer(frontend, &call, &request, &response, /*raw_outputs=*/true);
                const absl::Status status = call.Wait();
                if (!status.ok()) return ReplyError(res, status);
                ReplyInfer(res, response, outputs);
              });

  if (options.port == 0) {
    service->port_ = server.bind_to_any_port(options.host);
  } else if (server.bind_to_port(options.host, options.port)) {
    service->port_ = options.port;
  }
  if (service->port_ <= 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen for HTTP on ", options.host, ":", options.port));
  }
  service->thread_ = std::thread([&server] {
    NameThisThread("care-http");
    server.listen_after_bind();
  });
  return service;
}

void HttpService::Stop() {
  if (server_ != nullptr) server_->stop();
  if (thread_.joinable()) thread_.join();
}

HttpService::~HttpService() { Stop(); }

}  // namespace careserve
