// care-client: the command-line client of care-server.
//
//   care-client list
//   care-client classify --image cat.jpg [--model NAME] [--top_k 5]
//   care-client detect   --image street.jpg [--score_threshold 0.3] [--draw boxes.png]
//   care-client segment  --image room.jpg [--mask_out mask.png] [--draw overlay.png]
//   care-client health   [--service care.vision.v1.VisionService]
//
// Prints readable text, or the response as JSON with --json. Exit status: 0 on success,
// the gRPC status code (1-16) when the server answers an error, 64 for a usage error, 66
// when the image file cannot be read; `health` exits 1 unless the answer is SERVING.
#include <httplib.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "care/vision/v1/vision.grpc.pb.h"
#include "clients/oip_client.h"
#include "clients/draw.h"
#include "google/protobuf/util/json_util.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "clients/tls_flags.h"
#include "opencv2/imgcodecs.hpp"
#include "opencv2/imgproc.hpp"

ABSL_FLAG(std::string, server, "localhost:50051",
          "care-server address: host:port, or a gRPC target such as dns:///careserve.ns.svc.cluster.local:50051.");
ABSL_FLAG(std::string, load_balancing, "pick_first",
          "gRPC load-balancing policy: pick_first, or round_robin to spread calls over every address the "
          "target resolves to (a headless Kubernetes Service).");
ABSL_FLAG(std::string, image, "", "Image file (JPEG, PNG, BMP, WebP, TIFF).");
ABSL_FLAG(bool, raw, false, "Decode the image here and send raw RGB pixels instead of the file.");
ABSL_FLAG(std::string, model, "", "Model name (default: the server's default model for the task).");
ABSL_FLAG(int64_t, model_version, 0, "Model version (0: latest).");
ABSL_FLAG(int, top_k, 0, "classify: how many classes (0: the server's default, 5).");
ABSL_FLAG(double, score_threshold, 0, "detect: lowest score kept (0: the model's default).");
ABSL_FLAG(double, iou_threshold, 0, "detect: NMS overlap threshold (0: the model's default).");
ABSL_FLAG(int, max_detections, 0, "detect: most detections (0: the model's default).");
ABSL_FLAG(std::string, mask_out, "", "segment: write the class-index mask PNG here.");
ABSL_FLAG(std::string, draw, "",
          "detect/segment: write a picture here (PNG/JPEG by extension): boxes with labels and scores, or the "
          "image blended with the class mask and a legend.");
ABSL_FLAG(std::string, service, "", "health: service name (empty: the whole server).");
ABSL_FLAG(bool, json, false, "Print the response as JSON.");
ABSL_FLAG(double, timeout, 30, "Deadline of the call, in seconds.");
ABSL_FLAG(std::string, protocol, "vision",
          "vision (care.vision.v1) | oip-grpc | oip-http (the Open Inference Protocol, KServe v2, over gRPC on "
          "--server or HTTP on --http_server: ModelInfer; --model is required; health asks server or model "
          "readiness; metadata prints server or model metadata).");
ABSL_FLAG(std::string, http_server, "localhost:8000", "care-server's HTTP address (host:port) for --protocol=oip-http.");

namespace {

namespace v1 = care::vision::v1;

constexpr int kUsageError = 64;
constexpr int kNoInput = 66;

// The stubs of both protocols on one channel, and which one the calls use.
struct Stubs {
  std::unique_ptr<v1::VisionService::Stub> vision;
  std::unique_ptr<inference::GRPCInferenceService::Stub> oip;
  std::unique_ptr<httplib::Client> http;  // --protocol=oip-http
  bool use_oip = false;                   // oip-grpc or oip-http
};

// A vision call made over the Open Inference Protocol (clients/oip_client.h).
template <typename Request, typename Response>
grpc::Status CallOip(Stubs* stubs, grpc::ClientContext* context, const Request& request, Response* response,
                     grpc::Status (*to)(const Request&, inference::ModelInferRequest*),
                     grpc::Status (*from)(const inference::ModelInferResponse&, Response*)) {
  inference::ModelInferRequest infer;
  if (grpc::Status s = to(request, &infer); !s.ok()) return s;
  inference::ModelInferResponse answer;
  grpc::Status status = stubs->http != nullptr
                            ? careserve::OipHttpInfer(stubs->http.get(), infer, &answer, absl::GetFlag(FLAGS_timeout))
                            : stubs->oip->ModelInfer(context, infer, &answer);
  if (!status.ok()) return status;
  return from(answer, response);
}

int Fail(const grpc::Status& status) {
  std::fprintf(stderr, "error: %s: %s\n", absl::StatusCodeToString(static_cast<absl::StatusCode>(status.error_code())).c_str(),
               status.error_message().c_str());
  return static_cast<int>(status.error_code());
}

void SetDeadline(grpc::ClientContext* context) {
  context->set_deadline(std::chrono::system_clock::now() +
                        std::chrono::microseconds(static_cast<int64_t>(absl::GetFlag(FLAGS_timeout) * 1e6)));
}

void PrintJson(const google::protobuf::Message& message) {
  std::string json;
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  (void)google::protobuf::util::MessageToJsonString(message, &json, options);
  std::cout << json;
}

// Fills `image` from --image; returns an exit status, 0 when done.
int LoadImage(v1::Image* image) {
  const std::string path = absl::GetFlag(FLAGS_image);
  if (path.empty()) {
    std::fprintf(stderr, "error: --image FILE is required\n");
    return kUsageError;
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "error: cannot read %s\n", path.c_str());
    return kNoInput;
  }
  std::ostringstream bytes;
  bytes << in.rdbuf();
  if (!absl::GetFlag(FLAGS_raw)) {
    image->set_encoded(bytes.str());
    return 0;
  }
  const std::string data = bytes.str();
  cv::Mat bgr = cv::imdecode(cv::Mat(1, static_cast<int>(data.size()), CV_8UC1, const_cast<char*>(data.data())),
                             cv::IMREAD_COLOR);
  if (bgr.empty()) {
    std::fprintf(stderr, "error: cannot decode %s\n", path.c_str());
    return kNoInput;
  }
  v1::RawImage* raw = image->mutable_raw();
  raw->set_width(bgr.cols);
  raw->set_height(bgr.rows);
  raw->set_format(v1::BGR8);
  cv::Mat packed = bgr.isContinuous() ? bgr : bgr.clone();
  raw->set_data(packed.data, packed.total() * packed.elemSize());
  return 0;
}

// The --image file as the server saw it (EXIF orientation applied), for drawing on.
cv::Mat ImageForDrawing() {
  return cv::imread(absl::GetFlag(FLAGS_image), cv::IMREAD_COLOR);
}

// Writes `picture` to --draw; an exit status.
int WritePicture(const cv::Mat& picture) {
  const std::string path = absl::GetFlag(FLAGS_draw);
  if (!cv::imwrite(path, picture)) {
    std::fprintf(stderr, "error: cannot write %s\n", path.c_str());
    return 73;  // EX_CANTCREAT
  }
  std::fprintf(stderr, "wrote %s (%dx%d)\n", path.c_str(), picture.cols, picture.rows);
  return 0;
}

int List(Stubs* stubs) {
  if (stubs->use_oip) {
    std::fprintf(stderr, "error: the Open Inference Protocol has no model list; use --protocol=vision, or metadata "
                         "--model=NAME\n");
    return kUsageError;
  }
  v1::VisionService::Stub* stub = stubs->vision.get();
  grpc::ClientContext context;
  SetDeadline(&context);
  v1::ListModelsResponse response;
  grpc::Status status = stub->ListModels(&context, v1::ListModelsRequest(), &response);
  if (!status.ok()) return Fail(status);
  if (absl::GetFlag(FLAGS_json)) {
    PrintJson(response);
    return 0;
  }
  std::printf("%-28s %-21s %-10s %-9s %7s %-8s %-10s %-9s %s\n", "MODEL", "TASK", "ARCH", "INPUT", "CLASSES",
              "VERSIONS", "WEIGHTS", "PRECISION", "STATUS");
  for (const v1::ModelInfo& m : response.models()) {
    std::string status = m.ready() ? "ready" : "FAILED: " + m.error();
    if (m.ready() && !m.error().empty()) status += "; " + m.error();
    if (!m.precision_note().empty()) status += "; " + m.precision_note();
    std::printf("%-28s %-21s %-10s %-9s %7d %-8s %-10s %-9s %s\n", m.name().c_str(), m.task().c_str(),
                m.architecture().c_str(), absl::StrCat(m.input_height(), "x", m.input_width()).c_str(),
                m.num_classes(), absl::StrJoin(m.versions(), ",").c_str(), m.weights_source().c_str(),
                m.precision().empty() ? "-" : m.precision().c_str(), status.c_str());
  }
  return 0;
}

int Classify(Stubs* stubs) {
  v1::ClassifyRequest request;
  if (int rc = LoadImage(request.mutable_image())) return rc;
  request.set_model(absl::GetFlag(FLAGS_model));
  request.set_model_version(absl::GetFlag(FLAGS_model_version));
  request.set_top_k(absl::GetFlag(FLAGS_top_k));
  grpc::ClientContext context;
  SetDeadline(&context);
  v1::ClassifyResponse response;
  grpc::Status status = stubs->use_oip ? CallOip(stubs, &context, request, &response, careserve::OipClassifyRequest,
                                                 careserve::VisionClassifyResponse)
                                       : stubs->vision->Classify(&context, request, &response);
  if (!status.ok()) return Fail(status);
  if (absl::GetFlag(FLAGS_json)) {
    PrintJson(response);
    return 0;
  }
  std::printf("%s version %lld\n", response.model().c_str(), static_cast<long long>(response.model_version()));
  int rank = 0;
  for (const v1::Classification& c : response.classes()) {
    std::printf("%3d. %8.4f%%  %s (class %d)\n", ++rank, 100.0 * c.score(), c.label().c_str(), c.index());
  }
  return 0;
}

int Detect(Stubs* stubs) {
  v1::DetectRequest request;
  if (int rc = LoadImage(request.mutable_image())) return rc;
  request.set_model(absl::GetFlag(FLAGS_model));
  request.set_model_version(absl::GetFlag(FLAGS_model_version));
  request.set_score_threshold(static_cast<float>(absl::GetFlag(FLAGS_score_threshold)));
  request.set_iou_threshold(static_cast<float>(absl::GetFlag(FLAGS_iou_threshold)));
  request.set_max_detections(absl::GetFlag(FLAGS_max_detections));
  grpc::ClientContext context;
  SetDeadline(&context);
  v1::DetectResponse response;
  grpc::Status status = stubs->use_oip ? CallOip(stubs, &context, request, &response, careserve::OipDetectRequest,
                                                 careserve::VisionDetectResponse)
                                       : stubs->vision->Detect(&context, request, &response);
  if (!status.ok()) return Fail(status);
  if (!absl::GetFlag(FLAGS_draw).empty()) {
    const cv::Mat image = ImageForDrawing();
    if (image.empty()) return kNoInput;
    if (int rc = WritePicture(careserve::DrawDetections(image, response))) return rc;
  }
  if (absl::GetFlag(FLAGS_json)) {
    PrintJson(response);
    return 0;
  }
  std::printf("%s version %lld: %d detections in %dx%d\n", response.model().c_str(),
              static_cast<long long>(response.model_version()), response.detections_size(), response.image_width(),
              response.image_height());
  for (const v1::Detection& d : response.detections()) {
    std::printf("  %6.3f  %-20s [%.1f, %.1f, %.1f, %.1f]", d.score(),
                careserve::DisplayLabel(d.label(), d.class_index()).c_str(), d.box().x_min(),
                d.box().y_min(), d.box().x_max(), d.box().y_max());
    if (d.has_mask()) {
      const cv::Mat mask = careserve::DecodeInstanceMask(d.mask());
      if (mask.empty()) {
        std::printf("  mask malformed");
      } else {
        std::printf("  mask %d px", cv::countNonZero(mask));
      }
    }
    std::printf("\n");
  }
  return 0;
}

int Segment(Stubs* stubs) {
  v1::SegmentRequest request;
  if (int rc = LoadImage(request.mutable_image())) return rc;
  request.set_model(absl::GetFlag(FLAGS_model));
  request.set_model_version(absl::GetFlag(FLAGS_model_version));
  grpc::ClientContext context;
  SetDeadline(&context);
  v1::SegmentResponse response;
  grpc::Status status = stubs->use_oip ? CallOip(stubs, &context, request, &response, careserve::OipSegmentRequest,
                                                 careserve::VisionSegmentResponse)
                                       : stubs->vision->Segment(&context, request, &response);
  if (!status.ok()) return Fail(status);
  const std::string mask_out = absl::GetFlag(FLAGS_mask_out);
  if (!mask_out.empty()) {
    std::ofstream(mask_out, std::ios::binary) << response.mask_png();
  }
  if (!absl::GetFlag(FLAGS_draw).empty()) {
    const std::string& png = response.mask_png();
    const cv::Mat mask = cv::imdecode(cv::Mat(1, static_cast<int>(png.size()), CV_8UC1, const_cast<char*>(png.data())),
                                      cv::IMREAD_UNCHANGED);
    const cv::Mat image = ImageForDrawing();
    if (image.empty()) return kNoInput;
    if (mask.size() != image.size()) {
      std::fprintf(stderr, "error: the mask is %dx%d, the image %dx%d\n", mask.cols, mask.rows, image.cols, image.rows);
      return 1;
    }
    if (int rc = WritePicture(careserve::DrawSegmentation(image, mask, response))) return rc;
  }
  if (absl::GetFlag(FLAGS_json)) {
    PrintJson(response);
    return 0;
  }
  std::printf("%s version %lld: %dx%d mask\n", response.model().c_str(),
              static_cast<long long>(response.model_version()), response.width(), response.height());
  for (const v1::ClassCoverage& c : response.classes()) {
    std::printf("  %6.2f%%  %s (class %d)\n", 100.0 * c.fraction(), c.label().c_str(), c.class_index());
  }
  return 0;
}

// ServerReady, or ModelReady of --model: exit 0 when ready.
// GET `path` on the HTTP API: prints the body (JSON); an exit status from the HTTP status.
int HttpGetAndPrint(Stubs* stubs, const std::string& path, bool readiness) {
  auto result = stubs->http->Get(path.c_str());
  if (!result) {
    std::fprintf(stderr, "error: UNAVAILABLE: HTTP request failed: %s\n", httplib::to_string(result.error()).c_str());
    return static_cast<int>(grpc::StatusCode::UNAVAILABLE);
  }
  if (readiness && (result->status == 200 || result->status == 503)) {
    std::printf("%s\n", result->status == 200 ? "READY" : "NOT_READY");
    return result->status == 200 ? 0 : 1;
  }
  if (result->status != 200) {
    std::fprintf(stderr, "error: HTTP %d: %s\n", result->status, result->body.c_str());
    return 1;
  }
  std::printf("%s\n", result->body.c_str());
  return 0;
}

std::string HttpModelPath() {
  std::string path = "/v2/models/" + absl::GetFlag(FLAGS_model);
  if (absl::GetFlag(FLAGS_model_version) != 0) path += "/versions/" + std::to_string(absl::GetFlag(FLAGS_model_version));
  return path;
}

int OipHealth(Stubs* stubs) {
  if (stubs->http != nullptr) {
    return HttpGetAndPrint(stubs, absl::GetFlag(FLAGS_model).empty() ? "/v2/health/ready" : HttpModelPath() + "/ready",
                           true);
  }
  grpc::ClientContext context;
  SetDeadline(&context);
  bool ready = false;
  grpc::Status status;
  const std::string model = absl::GetFlag(FLAGS_model);
  if (model.empty()) {
    inference::ServerReadyResponse response;
    status = stubs->oip->ServerReady(&context, {}, &response);
    ready = response.ready();
  } else {
    inference::ModelReadyRequest request;
    request.set_name(model);
    if (absl::GetFlag(FLAGS_model_version) != 0) request.set_version(std::to_string(absl::GetFlag(FLAGS_model_version)));
    inference::ModelReadyResponse response;
    status = stubs->oip->ModelReady(&context, request, &response);
    ready = response.ready();
  }
  if (!status.ok()) return Fail(status);
  std::printf("%s\n", ready ? "READY" : "NOT_READY");
  return ready ? 0 : 1;
}

int Metadata(Stubs* stubs) {
  if (stubs->http != nullptr) {
    return HttpGetAndPrint(stubs, absl::GetFlag(FLAGS_model).empty() ? "/v2" : HttpModelPath(), false);
  }
  grpc::ClientContext context;
  SetDeadline(&context);
  const std::string model = absl::GetFlag(FLAGS_model);
  grpc::Status status;
  if (model.empty()) {
    inference::ServerMetadataResponse response;
    status = stubs->oip->ServerMetadata(&context, {}, &response);
    if (status.ok()) PrintJson(response);
  } else {
    inference::ModelMetadataRequest request;
    request.set_name(model);
    if (absl::GetFlag(FLAGS_model_version) != 0) request.set_version(std::to_string(absl::GetFlag(FLAGS_model_version)));
    inference::ModelMetadataResponse response;
    status = stubs->oip->ModelMetadata(&context, request, &response);
    if (status.ok()) PrintJson(response);
  }
  return status.ok() ? 0 : Fail(status);
}

int Health(const std::shared_ptr<grpc::Channel>& channel) {
  auto stub = grpc::health::v1::Health::NewStub(channel);
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(absl::GetFlag(FLAGS_service));
  grpc::ClientContext context;
  SetDeadline(&context);
  grpc::health::v1::HealthCheckResponse response;
  grpc::Status status = stub->Check(&context, request, &response);
  if (!status.ok()) return Fail(status);
  if (absl::GetFlag(FLAGS_json)) {
    PrintJson(response);
  } else {
    std::printf("%s\n", grpc::health::v1::HealthCheckResponse::ServingStatus_Name(response.status()).c_str());
  }
  return response.status() == grpc::health::v1::HealthCheckResponse::SERVING ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "care-client COMMAND [flags]\n"
      "commands: list | classify --image F | detect --image F | segment --image F | health | metadata");
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  if (args.size() != 2) {
    std::fprintf(stderr, "usage: care-client list|classify|detect|segment|health|metadata [flags] (--help for flags)\n");
    return kUsageError;
  }
  const std::string command = args[1];
  grpc::ChannelArguments channel_args;
  channel_args.SetMaxReceiveMessageSize(256 << 20);
  channel_args.SetLoadBalancingPolicyName(absl::GetFlag(FLAGS_load_balancing));
  auto credentials = careserve::ChannelCredentialsFromFlags();
  if (!credentials.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(credentials.status().message()).c_str());
    return kUsageError;
  }
  auto channel = grpc::CreateCustomChannel(absl::GetFlag(FLAGS_server), *credentials, channel_args);
  Stubs stubs;
  stubs.vision = v1::VisionService::NewStub(channel);
  stubs.oip = inference::GRPCInferenceService::NewStub(channel);
  const std::string protocol = absl::GetFlag(FLAGS_protocol);
  if (protocol != "vision" && protocol != "oip-grpc" && protocol != "oip-http") {
    std::fprintf(stderr, "error: --protocol must be vision, oip-grpc or oip-http, got \"%s\"\n", protocol.c_str());
    return kUsageError;
  }
  stubs.use_oip = protocol != "vision";
  if (protocol == "oip-http") {
    stubs.http = careserve::MakeOipHttpClient(absl::GetFlag(FLAGS_http_server), careserve::HttpTlsFromFlags());
  }
  if (command == "list") return List(&stubs);
  if (command == "classify") return Classify(&stubs);
  if (command == "detect") return Detect(&stubs);
  if (command == "segment") return Segment(&stubs);
  if (command == "health") return stubs.use_oip ? OipHealth(&stubs) : Health(channel);
  if (command == "metadata") return Metadata(&stubs);
  std::fprintf(stderr, "error: unknown command \"%s\" (list, classify, detect, segment, health, metadata)\n",
               command.c_str());
  return kUsageError;
}
