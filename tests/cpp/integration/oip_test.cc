// The Open Inference Protocol (KServe v2) over gRPC, end to end: a client generated from the
// test's own copy of the published protocol (oip/grpc_predict_v2.proto) against a real
// care-server, for every task: the same answers as care.vision.v1 for the same images,
// batches of N images, every input form (BYTES raw and typed, UINT8 pixels, FP32 network
// input), the classification extension, metadata and readiness, and the status codes of
// every kind of bad request.
#include <numeric>

#include "grpc_predict_v2.grpc.pb.h"
#include "clients/draw.h"
#include "tests/cpp/integration/server_harness.h"

namespace careserve {
namespace {

namespace oip = ::inference;

// A request with one input; raw (raw_input_contents) unless `typed`.
oip::ModelInferRequest ImageRequest(const std::string& model, const std::vector<std::string>& images, bool typed) {
  oip::ModelInferRequest request;
  request.set_model_name(model);
  request.set_id("request-42");
  auto* input = request.add_inputs();
  input->set_name("image");
  input->set_datatype("BYTES");
  input->add_shape(static_cast<int64_t>(images.size()));
  if (typed) {
    for (const std::string& image : images) input->mutable_contents()->add_bytes_contents(image);
  } else {
    request.add_raw_input_contents(LengthPrefixed(images));
  }
  return request;
}

// Output `name` of a response: its index, or -1.
int OutputIndex(const oip::ModelInferResponse& response, const std::string& name) {
  for (int i = 0; i < response.outputs_size(); ++i) {
    if (response.outputs(i).name() == name) return i;
  }
  return -1;
}

std::vector<int64_t> Shape(const oip::ModelInferResponse& response, const std::string& name) {
  const int i = OutputIndex(response, name);
  if (i < 0) return {};
  return {response.outputs(i).shape().begin(), response.outputs(i).shape().end()};
}

// FP32 output values, raw or typed.
std::vector<float> Floats(const oip::ModelInferResponse& response, const std::string& name) {
  const int i = OutputIndex(response, name);
  EXPECT_GE(i, 0) << "no output " << name;
  if (i < 0) return {};
  EXPECT_EQ(response.outputs(i).datatype(), "FP32") << name;
  if (response.raw_output_contents_size() == 0) {
    const auto& typed = response.outputs(i).contents().fp32_contents();
    return {typed.begin(), typed.end()};
  }
  const std::string& raw = response.raw_output_contents(i);
  std::vector<float> values(raw.size() / 4);
  std::memcpy(values.data(), raw.data(), values.size() * 4);
  return values;
}

std::vector<int32_t> Ints(const oip::ModelInferResponse& response, const std::string& name) {
  const int i = OutputIndex(response, name);
  EXPECT_GE(i, 0) << "no output " << name;
  if (i < 0) return {};
  EXPECT_EQ(response.outputs(i).datatype(), "INT32") << name;
  if (response.raw_output_contents_size() == 0) {
    const auto& typed = response.outputs(i).contents().int_contents();
    return {typed.begin(), typed.end()};
  }
  const std::string& raw = response.raw_output_contents(i);
  std::vector<int32_t> values(raw.size() / 4);
  std::memcpy(values.data(), raw.data(), values.size() * 4);
  return values;
}

std::vector<std::string> Strings(const oip::ModelInferResponse& response, const std::string& name) {
  const int i = OutputIndex(response, name);
  EXPECT_GE(i, 0) << "no output " << name;
  if (i < 0) return {};
  EXPECT_EQ(response.outputs(i).datatype(), "BYTES") << name;
  if (response.raw_output_contents_size() == 0) {
    const auto& typed = response.outputs(i).contents().bytes_contents();
    return {typed.begin(), typed.end()};
  }
  return SplitLengthPrefixed(response.raw_output_contents(i));
}

class OipTest : public ServerTest {
 protected:
  void SetUp() override {
    ServerTest::SetUp();
    oip_ = oip::GRPCInferenceService::NewStub(server_->channel());
  }

  grpc::Status Infer(const oip::ModelInferRequest& request, oip::ModelInferResponse* response) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
    return oip_->ModelInfer(&context, request, response);
  }

  // care.vision.v1's probabilities of every class for one image.
  std::vector<float> VisionProbabilities(const v1::Image& image, int num_classes) {
    v1::ClassifyRequest request;
    request.set_model("care_s0_cls");
    request.set_top_k(num_classes);
    *request.mutable_image() = image;
    v1::ClassifyResponse response;
    grpc::ClientContext context;
    const grpc::Status status = stub_->Classify(&context, request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    std::vector<float> probabilities(num_classes, -1.0f);
    for (const auto& c : response.classes()) probabilities[c.index()] = c.score();
    return probabilities;
  }

  std::unique_ptr<oip::GRPCInferenceService::Stub> oip_;
};

TEST_F(OipTest, ServerAndModelMetadataDescribeTheModels) {
  grpc::ClientContext c1, c2, c3;
  oip::ServerLiveResponse live;
  ASSERT_TRUE(oip_->ServerLive(&c1, {}, &live).ok());
  EXPECT_TRUE(live.live());
  oip::ServerReadyResponse ready;
  ASSERT_TRUE(oip_->ServerReady(&c2, {}, &ready).ok());
  EXPECT_TRUE(ready.ready());
  oip::ServerMetadataResponse server;
  ASSERT_TRUE(oip_->ServerMetadata(&c3, {}, &server).ok());
  EXPECT_EQ(server.name(), "careserve");
  EXPECT_FALSE(server.version().empty());
  const std::vector<std::string> extensions(server.extensions().begin(), server.extensions().end());
  EXPECT_NE(std::find(extensions.begin(), extensions.end(), "classification"), extensions.end());
  EXPECT_NE(std::find(extensions.begin(), extensions.end(), "binary_tensor_data"), extensions.end());

  struct Expected {
    std::string model;
    std::map<std::string, std::pair<std::string, std::vector<int64_t>>> outputs;
  };
  const std::vector<Expected> models = {
      {"care_s0_cls", {{"probabilities", {"FP32", {-1, 1000}}}}},
      {"care_s0_det",
       {{"boxes", {"FP32", {-1, -1, 4}}},
        {"scores", {"FP32", {-1, -1}}},
        {"classes", {"INT32", {-1, -1}}},
        {"num_detections", {"INT32", {-1}}}}},
      {"care_s0_seg", {{"mask", {"UINT8", {-1, -1, -1}}}}},
      {"care_s0_mask",
       {{"boxes", {"FP32", {-1, -1, 4}}},
        {"scores", {"FP32", {-1, -1}}},
        {"classes", {"INT32", {-1, -1}}},
        {"num_detections", {"INT32", {-1}}},
        {"masks", {"BYTES", {-1, -1}}}}}};
  const std::map<std::string, std::vector<int64_t>> input_sizes = {
      {"care_s0_cls", {64, 64}}, {"care_s0_det", {96, 128}}, {"care_s0_seg", {64, 96}}, {"care_s0_mask", {128, 160}}};
  for (const Expected& expected : models) {
    for (const std::string& version : {std::string(), std::string("1")}) {
      oip::ModelMetadataRequest request;
      request.set_name(expected.model);
      request.set_version(version);
      oip::ModelMetadataResponse metadata;
      grpc::ClientContext context;
      const grpc::Status status = oip_->ModelMetadata(&context, request, &metadata);
      ASSERT_TRUE(status.ok()) << expected.model << ": " << status.error_message();
      EXPECT_EQ(metadata.name(), expected.model);
      EXPECT_EQ(std::vector<std::string>(metadata.versions().begin(), metadata.versions().end()),
                std::vector<std::string>{"1"});
      EXPECT_EQ(metadata.platform(), "careserve_torchscript");
      std::map<std::string, std::pair<std::string, std::vector<int64_t>>> inputs, outputs;
      for (const auto& t : metadata.inputs()) inputs[t.name()] = {t.datatype(), {t.shape().begin(), t.shape().end()}};
      for (const auto& t : metadata.outputs()) outputs[t.name()] = {t.datatype(), {t.shape().begin(), t.shape().end()}};
      const auto& hw = input_sizes.at(expected.model);
      EXPECT_EQ(inputs, (std::map<std::string, std::pair<std::string, std::vector<int64_t>>>{
                            {"image", {"BYTES", {-1}}},
                            {"pixels", {"UINT8", {-1, -1, -1, 3}}},
                            {"input", {"FP32", {-1, 3, hw[0], hw[1]}}}}))
          << expected.model;
      EXPECT_EQ(outputs, expected.outputs) << expected.model;
    }
  }

  auto model_ready = [&](const std::string& name, const std::string& version, bool* is_ready) {
    oip::ModelReadyRequest request;
    request.set_name(name);
    request.set_version(version);
    oip::ModelReadyResponse response;
    grpc::ClientContext context;
    const grpc::Status status = oip_->ModelReady(&context, request, &response);
    *is_ready = response.ready();
    return status;
  };
  bool is_ready = false;
  EXPECT_TRUE(model_ready("care_s0_det", "", &is_ready).ok());
  EXPECT_TRUE(is_ready);
  EXPECT_TRUE(model_ready("care_s0_det", "1", &is_ready).ok());
  EXPECT_TRUE(is_ready);
  // A model that failed to load is known, and not ready.
  EXPECT_TRUE(model_ready("broken_model", "", &is_ready).ok());
  EXPECT_FALSE(is_ready);
  EXPECT_EQ(model_ready("no_such_model", "", &is_ready).error_code(), StatusCode::NOT_FOUND);
  const grpc::Status no_version = model_ready("care_s0_det", "7", &is_ready);
  EXPECT_EQ(no_version.error_code(), StatusCode::NOT_FOUND);
  EXPECT_NE(no_version.error_message().find("no version 7"), std::string::npos) << no_version.error_message();

  oip::ModelMetadataRequest unknown;
  unknown.set_name("no_such_model");
  oip::ModelMetadataResponse metadata;
  grpc::ClientContext context;
  const grpc::Status status = oip_->ModelMetadata(&context, unknown, &metadata);
  EXPECT_EQ(status.error_code(), StatusCode::NOT_FOUND);
  EXPECT_NE(status.error_message().find("no_such_model"), std::string::npos) << status.error_message();
}

TEST_F(OipTest, ClassificationMatchesVisionForEveryInputForm) {
  constexpr int kImages = 5;
  const std::vector<cv::Mat> crops = Crops(kImages);
  std::vector<std::string> pngs;
  for (const cv::Mat& crop : crops) pngs.push_back(Png(crop));
  std::vector<std::vector<float>> expected;
  for (const std::string& png : pngs) expected.push_back(VisionProbabilities(Encoded(png), 1000));

  // BYTES, raw and typed: N images in one request, answered in the request's form.
  for (bool typed : {false, true}) {
    SCOPED_TRACE(typed ? "typed" : "raw");
    oip::ModelInferResponse response;
    const grpc::Status status = Infer(ImageRequest("care_s0_cls", pngs, typed), &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(response.model_name(), "care_s0_cls");
    EXPECT_EQ(response.model_version(), "1");
    EXPECT_EQ(response.id(), "request-42");
    EXPECT_EQ(response.raw_output_contents_size(), typed ? 0 : 1);
    EXPECT_EQ(Shape(response, "probabilities"), (std::vector<int64_t>{kImages, 1000}));
    const std::vector<float> probabilities = Floats(response, "probabilities");
    ASSERT_EQ(probabilities.size(), static_cast<size_t>(kImages * 1000));
    for (int i = 0; i < kImages; ++i) {
      double sum = 0;
      for (int c = 0; c < 1000; ++c) {
        sum += probabilities[i * 1000 + c];
        ASSERT_NEAR(probabilities[i * 1000 + c], expected[i][c], 1e-4) << "image " << i << " class " << c;
      }
      EXPECT_NEAR(sum, 1.0, 1e-4);
    }
  }

  // UINT8 pixels [N, H, W, 3]: the images of a request share one size.
  cv::Mat a = crops[0](cv::Rect(0, 0, 120, 90)).clone(), b = crops[1](cv::Rect(0, 0, 120, 90)).clone();
  std::string pixels;
  std::vector<std::vector<float>> expected_pixels;
  for (const cv::Mat& bgr : {a, b}) {
    cv::Mat rgb;
    cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
    pixels.append(reinterpret_cast<const char*>(rgb.data), rgb.total() * 3);
    v1::Image raw;
    raw.mutable_raw()->set_width(120);
    raw.mutable_raw()->set_height(90);
    raw.mutable_raw()->set_format(v1::RGB8);
    raw.mutable_raw()->set_data(rgb.data, rgb.total() * 3);
    expected_pixels.push_back(VisionProbabilities(raw, 1000));
  }
  for (bool typed : {false, true}) {
    SCOPED_TRACE(typed ? "pixels typed" : "pixels raw");
    oip::ModelInferRequest request;
    request.set_model_name("care_s0_cls");
    auto* input = request.add_inputs();
    input->set_name("pixels");
    input->set_datatype("UINT8");
    for (int64_t d : {2, 90, 120, 3}) input->add_shape(d);
    if (typed) {
      for (unsigned char v : pixels) input->mutable_contents()->add_uint_contents(v);
    } else {
      request.add_raw_input_contents(pixels);
    }
    oip::ModelInferResponse response;
    const grpc::Status status = Infer(request, &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
    const std::vector<float> probabilities = Floats(response, "probabilities");
    ASSERT_EQ(probabilities.size(), 2000u);
    for (int i = 0; i < 2; ++i) {
      for (int c = 0; c < 1000; ++c) ASSERT_NEAR(probabilities[i * 1000 + c], expected_pixels[i][c], 1e-4);
    }
  }

  // FP32 network input [N, 3, 64, 64], preprocessed by the client exactly as the server
  // would (center crop, ImageNet normalisation): the same answer as the image itself.
  absl::StatusOr<ModelSpec> spec = ReadModelSpec(Env("CARE_TEST_REPOSITORY") + "/care_s0_cls");
  ASSERT_TRUE(spec.ok()) << spec.status();
  std::vector<float> tensor(3 * 64 * 64);
  cv::Mat rgb;
  cv::cvtColor(a, rgb, cv::COLOR_BGR2RGB);
  NormalizeInto(ResizeForInput(rgb, spec->input), spec->input, tensor.data());
  for (bool typed : {false, true}) {
    SCOPED_TRACE(typed ? "input typed" : "input raw");
    oip::ModelInferRequest request;
    request.set_model_name("care_s0_cls");
    auto* input = request.add_inputs();
    input->set_name("input");
    input->set_datatype("FP32");
    for (int64_t d : {1, 3, 64, 64}) input->add_shape(d);
    if (typed) {
      input->mutable_contents()->mutable_fp32_contents()->Add(tensor.begin(), tensor.end());
    } else {
      request.add_raw_input_contents(std::string(reinterpret_cast<const char*>(tensor.data()), tensor.size() * 4));
    }
    oip::ModelInferResponse response;
    const grpc::Status status = Infer(request, &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
    const std::vector<float> probabilities = Floats(response, "probabilities");
    ASSERT_EQ(probabilities.size(), 1000u);
    for (int c = 0; c < 1000; ++c) ASSERT_NEAR(probabilities[c], expected_pixels[0][c], 1e-4) << c;
  }

  // Triton's classification extension: the best k as "score:index:label", best first.
  for (bool typed : {false, true}) {
    SCOPED_TRACE(typed ? "classification typed" : "classification raw");
    oip::ModelInferRequest request = ImageRequest("care_s0_cls", {pngs[0], pngs[1]}, typed);
    auto* output = request.add_outputs();
    output->set_name("probabilities");
    (*output->mutable_parameters())["classification"].set_int64_param(3);
    oip::ModelInferResponse response;
    const grpc::Status status = Infer(request, &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
    ASSERT_EQ(response.outputs_size(), 1);
    EXPECT_EQ(response.outputs(0).datatype(), "BYTES");
    EXPECT_EQ(Shape(response, "probabilities"), (std::vector<int64_t>{2, 3}));
    std::vector<std::string> entries =
        typed ? std::vector<std::string>(response.outputs(0).contents().bytes_contents().begin(),
                                         response.outputs(0).contents().bytes_contents().end())
              : SplitLengthPrefixed(response.raw_output_contents(0));
    ASSERT_EQ(entries.size(), 6u);
    const std::vector<std::string> labels = absl::StrSplit(ReadFile(Env("CARE_TEST_REPOSITORY") +
                                                                    "/care_s0_cls/labels.txt"), '\n');
    for (int i = 0; i < 2; ++i) {
      std::vector<int> order(1000);
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(), [&](int x, int y) { return expected[i][x] > expected[i][y]; });
      for (int r = 0; r < 3; ++r) {
        const std::vector<std::string> parts = absl::StrSplit(entries[i * 3 + r], absl::MaxSplits(':', 2));
        ASSERT_EQ(parts.size(), 3u) << entries[i * 3 + r];
        EXPECT_NEAR(std::stod(parts[0]), expected[i][order[r]], 1e-4) << entries[i * 3 + r];
        EXPECT_EQ(std::stoi(parts[1]), order[r]) << entries[i * 3 + r];
        EXPECT_EQ(parts[2], labels[order[r]]) << entries[i * 3 + r];
      }
    }
  }
}

TEST_F(OipTest, DetectionAndSegmentationMatchVision) {
  const std::vector<cv::Mat> crops = Crops(3);
  std::vector<std::string> pngs;
  for (const cv::Mat& crop : crops) pngs.push_back(Png(crop));

  // Detection: the thresholds as parameters, N images of different sizes in one request.
  std::vector<v1::DetectResponse> expected;
  for (const std::string& png : pngs) {
    v1::DetectRequest request;
    request.set_model("care_s0_det");
    *request.mutable_image() = Encoded(png);
    request.set_score_threshold(0.2f);
    request.set_max_detections(7);
    v1::DetectResponse response;
    grpc::ClientContext context;
    ASSERT_TRUE(stub_->Detect(&context, request, &response).ok());
    expected.push_back(response);
  }
  int answered = 0;
  for (const auto& e : expected) answered += e.detections_size();
  ASSERT_GT(answered, 0) << "the test detector finds nothing: the comparison would be empty";
  for (bool typed : {false, true}) {
    SCOPED_TRACE(typed ? "typed" : "raw");
    oip::ModelInferRequest request = ImageRequest("care_s0_det", pngs, typed);
    (*request.mutable_parameters())["score_threshold"].set_double_param(0.2);
    (*request.mutable_parameters())["max_detections"].set_int64_param(7);
    oip::ModelInferResponse response;
    const grpc::Status status = Infer(request, &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
    const std::vector<int64_t> boxes_shape = Shape(response, "boxes");
    ASSERT_EQ(boxes_shape.size(), 3u);
    const int64_t k = boxes_shape[1];
    EXPECT_EQ(boxes_shape, (std::vector<int64_t>{3, k, 4}));
    EXPECT_EQ(Shape(response, "scores"), (std::vector<int64_t>{3, k}));
    EXPECT_EQ(Shape(response, "classes"), (std::vector<int64_t>{3, k}));
    EXPECT_EQ(Shape(response, "num_detections"), (std::vector<int64_t>{3}));
    const std::vector<float> boxes = Floats(response, "boxes"), scores = Floats(response, "scores");
    const std::vector<int32_t> classes = Ints(response, "classes"), counts = Ints(response, "num_detections");
    ASSERT_EQ(counts.size(), 3u);
    int64_t most = 0;
    for (int i = 0; i < 3; ++i) {
      most = std::max<int64_t>(most, counts[i]);
      ASSERT_EQ(counts[i], expected[i].detections_size()) << "image " << i;
      for (int j = 0; j < k; ++j) {
        const float* box = &boxes[(i * k + j) * 4];
        if (j >= counts[i]) {
          // Rows past an image's count are zero.
          EXPECT_EQ(scores[i * k + j], 0.0f);
          EXPECT_EQ(classes[i * k + j], 0);
          EXPECT_EQ(box[0] + box[1] + box[2] + box[3], 0.0f);
          continue;
        }
        const v1::Detection& d = expected[i].detections(j);
        EXPECT_EQ(classes[i * k + j], d.class_index()) << i << "/" << j;
        EXPECT_NEAR(scores[i * k + j], d.score(), 1e-4) << i << "/" << j;
        EXPECT_NEAR(box[0], d.box().x_min(), 0.05);
        EXPECT_NEAR(box[1], d.box().y_min(), 0.05);
        EXPECT_NEAR(box[2], d.box().x_max(), 0.05);
        EXPECT_NEAR(box[3], d.box().y_max(), 0.05);
      }
    }
    EXPECT_EQ(k, most) << "K is the most detections of any image";
  }

  // Segmentation: one mask tensor [N, H, W] for images of one size.
  const cv::Mat a = crops[0](cv::Rect(0, 0, 150, 100)).clone(), b = crops[2](cv::Rect(10, 0, 150, 100)).clone();
  std::vector<cv::Mat> expected_masks;
  for (const cv::Mat& image : {a, b}) {
    v1::SegmentRequest request;
    request.set_model("care_s0_seg");
    *request.mutable_image() = Encoded(Png(image));
    v1::SegmentResponse response;
    grpc::ClientContext context;
    ASSERT_TRUE(stub_->Segment(&context, request, &response).ok());
    const std::string& png = response.mask_png();
    expected_masks.push_back(cv::imdecode(std::vector<uchar>(png.begin(), png.end()), cv::IMREAD_UNCHANGED));
  }
  for (bool typed : {false, true}) {
    SCOPED_TRACE(typed ? "typed" : "raw");
    oip::ModelInferResponse response;
    const grpc::Status status = Infer(ImageRequest("care_s0_seg", {Png(a), Png(b)}, typed), &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
    ASSERT_EQ(Shape(response, "mask"), (std::vector<int64_t>{2, 100, 150}));
    ASSERT_EQ(response.outputs(0).datatype(), "UINT8");
    std::vector<uint8_t> mask;
    if (typed) {
      for (uint32_t v : response.outputs(0).contents().uint_contents()) mask.push_back(static_cast<uint8_t>(v));
    } else {
      mask.assign(response.raw_output_contents(0).begin(), response.raw_output_contents(0).end());
    }
    ASSERT_EQ(mask.size(), 2u * 100 * 150);
    for (int i = 0; i < 2; ++i) {
      const cv::Mat got(100, 150, CV_8UC1, mask.data() + i * 100 * 150);
      const double agreement = 1.0 - cv::countNonZero(got != expected_masks[i]) / 15000.0;
      EXPECT_GE(agreement, 0.999) << "image " << i;
    }
  }
  // Images of different sizes cannot share one mask tensor.
  oip::ModelInferResponse response;
  const grpc::Status sizes = Infer(ImageRequest("care_s0_seg", {Png(a), pngs[1]}, false), &response);
  EXPECT_EQ(sizes.error_code(), StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(sizes.error_message().find("150x100"), std::string::npos) << sizes.error_message();
}

// Mask R-CNN: the detection outputs plus `masks`, one COCO RLE JSON object per detection
// ({"size": [h, w], "counts": ...}), the masks care.vision.v1's Detect answers (to within
// the pixels that float noise between batch compositions may flip: 99.5%).
TEST_F(OipTest, MaskRcnnMasksMatchVision) {
  const std::vector<cv::Mat> crops = Crops(2);
  std::vector<std::string> pngs;
  std::vector<v1::DetectResponse> expected;
  for (const cv::Mat& crop : crops) {
    pngs.push_back(Png(crop));
    v1::DetectRequest request;
    request.set_model("care_s0_mask");
    *request.mutable_image() = Encoded(pngs.back());
    request.set_score_threshold(0.6f);  // well-separated scores (tests/tools/make_test_checkpoints.py)
    v1::DetectResponse response;
    grpc::ClientContext context;
    ASSERT_TRUE(stub_->Detect(&context, request, &response).ok());
    expected.push_back(response);
  }
  ASSERT_GT(expected[0].detections_size() + expected[1].detections_size(), 0);
  const std::regex rle_json(R"re(\{"size":\[(\d+),(\d+)\],"counts":"((?:[^"\\]|\\.)*)"\})re");
  for (bool typed : {false, true}) {
    SCOPED_TRACE(typed ? "typed" : "raw");
    oip::ModelInferRequest request = ImageRequest("care_s0_mask", pngs, typed);
    (*request.mutable_parameters())["score_threshold"].set_double_param(0.6);
    oip::ModelInferResponse response;
    const grpc::Status status = Infer(request, &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
    const std::vector<int32_t> counts = Ints(response, "num_detections");
    const std::vector<std::string> masks = Strings(response, "masks");
    const std::vector<int64_t> shape = Shape(response, "masks");
    ASSERT_EQ(shape.size(), 2u);
    ASSERT_EQ(counts.size(), 2u);
    const int64_t k = shape[1];
    ASSERT_EQ(masks.size(), static_cast<size_t>(2 * k));
    for (int i = 0; i < 2; ++i) {
      ASSERT_EQ(counts[i], expected[i].detections_size());
      for (int j = 0; j < k; ++j) {
        const std::string& mask = masks[i * k + j];
        if (j >= counts[i]) {
          EXPECT_EQ(mask, "") << "rows past an image's count are empty";
          continue;
        }
        std::smatch m;
        ASSERT_TRUE(std::regex_match(mask, m, rle_json)) << mask;
        v1::CocoRle got;
        got.add_size(std::stoi(m[1]));
        got.add_size(std::stoi(m[2]));
        got.set_counts(std::regex_replace(m[3].str(), std::regex(R"(\\(.))"), "$1"));
        const cv::Mat got_mask = DecodeInstanceMask(got);
        const cv::Mat want_mask = DecodeInstanceMask(expected[i].detections(j).mask());
        ASSERT_FALSE(got_mask.empty()) << mask;
        ASSERT_EQ(got_mask.size(), want_mask.size()) << i << "/" << j;
        EXPECT_GE(1.0 - cv::countNonZero(got_mask != want_mask) / static_cast<double>(got_mask.total()), 0.995)
            << i << "/" << j;
      }
    }
  }
}

TEST_F(OipTest, BadRequestsGetTheContractsStatusCodes) {
  const std::string png = Png(Crops(1)[0]);
  struct Case {
    std::string what;
    oip::ModelInferRequest request;
    StatusCode code;
    std::string message;  // a part of the error message
  };
  std::vector<Case> cases;
  auto add = [&](const std::string& what, StatusCode code, const std::string& message,
                 const std::function<void(oip::ModelInferRequest*)>& edit) {
    Case c{what, ImageRequest("care_s0_cls", {png}, false), code, message};
    edit(&c.request);
    cases.push_back(std::move(c));
  };
  add("unknown model", StatusCode::NOT_FOUND, "no_such_model",
      [](oip::ModelInferRequest* r) { r->set_model_name("no_such_model"); });
  add("no model name", StatusCode::INVALID_ARGUMENT, "model name", [](oip::ModelInferRequest* r) { r->clear_model_name(); });
  add("unknown version", StatusCode::NOT_FOUND, "no version 3",
      [](oip::ModelInferRequest* r) { r->set_model_version("3"); });
  add("version not a number", StatusCode::NOT_FOUND, "\"latest\"",
      [](oip::ModelInferRequest* r) { r->set_model_version("latest"); });
  add("model that failed to load", StatusCode::FAILED_PRECONDITION, "broken_model",
      [](oip::ModelInferRequest* r) { r->set_model_name("broken_model"); });
  add("unknown input name", StatusCode::INVALID_ARGUMENT, "unknown input \"images\"",
      [](oip::ModelInferRequest* r) { r->mutable_inputs(0)->set_name("images"); });
  add("no input", StatusCode::INVALID_ARGUMENT, "exactly one input", [](oip::ModelInferRequest* r) {
    r->clear_inputs();
    r->clear_raw_input_contents();
  });
  add("two inputs", StatusCode::INVALID_ARGUMENT, "exactly one input",
      [](oip::ModelInferRequest* r) { *r->add_inputs() = r->inputs(0); });
  add("wrong datatype", StatusCode::INVALID_ARGUMENT, "must be BYTES",
      [](oip::ModelInferRequest* r) { r->mutable_inputs(0)->set_datatype("UINT8"); });
  add("shape larger than the contents", StatusCode::INVALID_ARGUMENT, "element",
      [](oip::ModelInferRequest* r) { r->mutable_inputs(0)->set_shape(0, 2); });
  add("raw BYTES cut short", StatusCode::INVALID_ARGUMENT, "remain", [](oip::ModelInferRequest* r) {
    r->mutable_raw_input_contents(0)->resize(r->raw_input_contents(0).size() - 10);
  });
  add("both raw and typed contents", StatusCode::INVALID_ARGUMENT, "both", [&](oip::ModelInferRequest* r) {
    r->mutable_inputs(0)->mutable_contents()->add_bytes_contents(png);
  });
  add("bad image", StatusCode::INVALID_ARGUMENT, "image", [](oip::ModelInferRequest* r) {
    r->set_raw_input_contents(0, LengthPrefixed({"this is not an image"}));
  });
  add("pixels not a multiple of the shape", StatusCode::INVALID_ARGUMENT, "bytes", [](oip::ModelInferRequest* r) {
    auto* input = r->mutable_inputs(0);
    input->set_name("pixels");
    input->set_datatype("UINT8");
    input->clear_shape();
    for (int64_t d : {1, 10, 10, 3}) input->add_shape(d);
    r->set_raw_input_contents(0, std::string(299, '\x7f'));
  });
  add("pixels with four channels", StatusCode::INVALID_ARGUMENT, "[N, H, W, 3]", [](oip::ModelInferRequest* r) {
    auto* input = r->mutable_inputs(0);
    input->set_name("pixels");
    input->set_datatype("UINT8");
    input->clear_shape();
    for (int64_t d : {1, 10, 10, 4}) input->add_shape(d);
    r->set_raw_input_contents(0, std::string(400, '\x7f'));
  });
  add("network input of another size", StatusCode::INVALID_ARGUMENT, "[N, 3, 64, 64]", [](oip::ModelInferRequest* r) {
    auto* input = r->mutable_inputs(0);
    input->set_name("input");
    input->set_datatype("FP32");
    input->clear_shape();
    for (int64_t d : {1, 3, 32, 32}) input->add_shape(d);
    r->set_raw_input_contents(0, std::string(3 * 32 * 32 * 4, '\0'));
  });
  add("network input not finite", StatusCode::INVALID_ARGUMENT, "non-finite", [](oip::ModelInferRequest* r) {
    auto* input = r->mutable_inputs(0);
    input->set_name("input");
    input->set_datatype("FP32");
    input->clear_shape();
    for (int64_t d : {1, 3, 64, 64}) input->add_shape(d);
    r->clear_raw_input_contents();
    for (int i = 0; i < 3 * 64 * 64; ++i) input->mutable_contents()->add_fp32_contents(i == 5 ? NAN : 0.5f);
  });
  add("unknown output", StatusCode::INVALID_ARGUMENT, "unknown output \"logits\"",
      [](oip::ModelInferRequest* r) { r->add_outputs()->set_name("logits"); });
  add("masks from a detector without them", StatusCode::INVALID_ARGUMENT,
      "unknown output \"masks\"; a detection model returns boxes, scores, classes, num_detections",
      [](oip::ModelInferRequest* r) {
        r->set_model_name("care_s0_det");
        r->add_outputs()->set_name("masks");
      });
  add("classification out of range", StatusCode::INVALID_ARGUMENT, "classification", [](oip::ModelInferRequest* r) {
    auto* output = r->add_outputs();
    output->set_name("probabilities");
    (*output->mutable_parameters())["classification"].set_int64_param(1001);
  });
  add("detection threshold out of range", StatusCode::INVALID_ARGUMENT, "score_threshold",
      [](oip::ModelInferRequest* r) {
        r->set_model_name("care_s0_det");
        (*r->mutable_parameters())["score_threshold"].set_string_param("1.5");
      });
  add("detection threshold not a number", StatusCode::INVALID_ARGUMENT, "score_threshold",
      [](oip::ModelInferRequest* r) {
        r->set_model_name("care_s0_det");
        (*r->mutable_parameters())["score_threshold"].set_bool_param(true);
      });
  add("more images than the queue holds", StatusCode::INVALID_ARGUMENT, "queue_capacity",
      [&](oip::ModelInferRequest* r) { *r = ImageRequest("care_s0_queue1", {png, png}, false); });

  for (const Case& c : cases) {
    oip::ModelInferResponse response;
    const grpc::Status status = Infer(c.request, &response);
    EXPECT_EQ(status.error_code(), c.code) << c.what << ": " << status.error_message();
    EXPECT_NE(status.error_message().find(c.message), std::string::npos)
        << c.what << ": \"" << status.error_message() << "\" does not say \"" << c.message << "\"";
  }

  // A message over the server's limit (--max_message_bytes, 64 MiB by default) is refused
  // by gRPC before any handler.
  oip::ModelInferResponse response;
  const grpc::Status oversized = Infer(ImageRequest("care_s0_cls", {std::string(65 << 20, 'x')}, false), &response);
  EXPECT_EQ(oversized.error_code(), StatusCode::RESOURCE_EXHAUSTED) << oversized.error_message();

  // The server still answers.
  const grpc::Status after = Infer(ImageRequest("care_s0_cls", {png}, false), &response);
  EXPECT_TRUE(after.ok()) << after.error_message();
}

TEST_F(OipTest, AFullQueueAndEveryApisRequestsShareTheBatches) {
  // care_s0_queue1 holds one request: a burst of ModelInfer calls overflows it.
  const std::string png = Png(Crops(1)[0]);
  constexpr int kBurst = 24;
  std::vector<oip::ModelInferRequest> requests(kBurst, ImageRequest("care_s0_queue1", {png}, false));
  std::vector<oip::ModelInferResponse> responses(kBurst);
  std::vector<grpc::ClientContext> contexts(kBurst);
  std::vector<grpc::Status> statuses(kBurst);
  absl::Mutex mu;
  int done = 0;
  for (int i = 0; i < kBurst; ++i) {
    oip_->async()->ModelInfer(&contexts[i], &requests[i], &responses[i], [&, i](grpc::Status s) {
      absl::MutexLock lock(&mu);
      statuses[i] = std::move(s);
      ++done;
    });
  }
  {
    absl::MutexLock lock(&mu);
    mu.Await(absl::Condition(+[](int* d) { return *d == kBurst; }, &done));
  }
  int ok = 0, full = 0;
  for (const grpc::Status& s : statuses) {
    ok += s.ok();
    if (s.error_code() == StatusCode::RESOURCE_EXHAUSTED) {
      ++full;
      EXPECT_NE(s.error_message().find("care_s0_queue1"), std::string::npos) << s.error_message();
    }
  }
  EXPECT_GT(ok, 0);
  EXPECT_GT(full, 0);
  EXPECT_EQ(ok + full, kBurst);

  // Vision and OIP requests to one model at once: one ModelInfer of 8 images and 8
  // Classify calls, each answered right, run in fewer batches than images (care_s0_cls
  // waits up to 20 ms to fill a batch of 16).
  const std::vector<cv::Mat> crops = Crops(8);
  std::vector<std::string> pngs;
  std::vector<std::vector<float>> expected;
  for (const cv::Mat& crop : crops) {
    pngs.push_back(Png(crop));
    expected.push_back(VisionProbabilities(Encoded(pngs.back()), 1000));
  }
  const std::string before = HttpGet(server_->metrics_port(), "/metrics");
  const std::string count = R"(care_batch_size_count{model="care_s0_cls"})";
  const std::string sum = R"(care_batch_size_sum{model="care_s0_cls"})";
  oip::ModelInferRequest mixed = ImageRequest("care_s0_cls", pngs, false);
  oip::ModelInferResponse mixed_response;
  grpc::ClientContext mixed_context;
  grpc::Status mixed_status;
  std::vector<v1::ClassifyRequest> classify(8);
  std::vector<v1::ClassifyResponse> classified(8);
  std::vector<grpc::ClientContext> classify_contexts(8);
  std::vector<grpc::Status> classify_statuses(8);
  done = 0;
  oip_->async()->ModelInfer(&mixed_context, &mixed, &mixed_response, [&](grpc::Status s) {
    absl::MutexLock lock(&mu);
    mixed_status = std::move(s);
    ++done;
  });
  for (int i = 0; i < 8; ++i) {
    classify[i].set_model("care_s0_cls");
    classify[i].set_top_k(1);
    *classify[i].mutable_image() = Encoded(pngs[7 - i]);
    stub_->async()->Classify(&classify_contexts[i], &classify[i], &classified[i], [&, i](grpc::Status s) {
      absl::MutexLock lock(&mu);
      classify_statuses[i] = std::move(s);
      ++done;
    });
  }
  {
    absl::MutexLock lock(&mu);
    mu.Await(absl::Condition(+[](int* d) { return *d == 9; }, &done));
  }
  ASSERT_TRUE(mixed_status.ok()) << mixed_status.error_message();
  const std::vector<float> probabilities = Floats(mixed_response, "probabilities");
  ASSERT_EQ(probabilities.size(), 8000u);
  for (int i = 0; i < 8; ++i) {
    for (int c = 0; c < 1000; ++c) ASSERT_NEAR(probabilities[i * 1000 + c], expected[i][c], 1e-4);
    ASSERT_TRUE(classify_statuses[i].ok()) << classify_statuses[i].error_message();
    const auto& top = classified[i].classes(0);
    EXPECT_NEAR(top.score(), expected[7 - i][top.index()], 1e-4);
    EXPECT_NEAR(top.score(), *std::max_element(expected[7 - i].begin(), expected[7 - i].end()), 1e-4);
  }
  const std::string after = HttpGet(server_->metrics_port(), "/metrics");
  const double images = Sample(after, sum) - Sample(before, sum);
  const double batches = Sample(after, count) - Sample(before, count);
  EXPECT_EQ(images, 16);
  EXPECT_LT(batches, 16) << "16 images of two APIs ran one batch each";

  // Requests are counted by API.
  EXPECT_GE(Sample(after, R"(care_requests_total{api="oip_grpc",code="OK",method="ModelInfer",model="care_s0_cls"})"),
            1);
  EXPECT_GE(Sample(after, R"(care_requests_total{api="oip_grpc",code="RESOURCE_EXHAUSTED",method="ModelInfer",model="care_s0_queue1"})"),
            1);
}

TEST_F(OipTest, CareBenchAndCareClientSpeakTheProtocol) {
  const std::string server = "--server=127.0.0.1:" + std::to_string(server_->grpc_port());
  // Both protocols at once, closed loop: every call answered, batches shared.
  const std::string before = HttpGet(server_->metrics_port(), "/metrics");
  int status = 0;
  const std::string report =
      RunCommand(Env("CARE_BENCH") + " " + server + " --model=care_s0_cls --protocol=vision,oip-grpc --concurrency=16 "
                 "--duration=2 --warmup=0.5 --generate=96x80 --json",
                 &status);
  ASSERT_EQ(status, 0) << report;
  EXPECT_NE(report.find("\"errors\": {}"), std::string::npos) << report;
  EXPECT_NE(report.find("\"protocol\": \"vision,oip-grpc\""), std::string::npos) << report;
  const std::string after = HttpGet(server_->metrics_port(), "/metrics");
  auto delta = [&](const std::string& series) { return Sample(after, series) - std::max(0.0, Sample(before, series)); };
  const double vision = delta(R"(care_requests_total{api="vision",code="OK",method="Classify",model="care_s0_cls"})");
  const double oip = delta(R"(care_requests_total{api="oip_grpc",code="OK",method="ModelInfer",model="care_s0_cls"})");
  EXPECT_GT(vision, 20);
  EXPECT_GT(oip, 20);
  EXPECT_LE(std::abs(vision - oip), 32) << "the calls alternate between the protocols";
  const double images = delta(R"(care_batch_size_sum{model="care_s0_cls"})");
  const double batches = delta(R"(care_batch_size_count{model="care_s0_cls"})");
  EXPECT_GT(images / batches, 1.5) << "16 calls in flight of two protocols share batches";

  // care-client: the same answer either way (the labels come back with the
  // classification extension).
  const std::string image = std::string(CARE_SOURCE_DIR) + "/docs/demo/ankle_boot.png";
  int vision_status = 0, oip_status = 0;
  const std::string by_vision = RunCommand(Env("CARE_CLIENT") + " classify " + server +
                                               " --model=care_s0_cls --top_k=3 --image=" + image, &vision_status);
  const std::string by_oip = RunCommand(Env("CARE_CLIENT") + " classify " + server +
                                            " --model=care_s0_cls --top_k=3 --protocol=oip-grpc --image=" + image,
                                        &oip_status);
  ASSERT_EQ(vision_status, 0) << by_vision;
  ASSERT_EQ(oip_status, 0) << by_oip;
  EXPECT_EQ(by_oip, by_vision);
  int detect_status = 0;
  const std::string detected = RunCommand(Env("CARE_CLIENT") + " detect " + server +
                                              " --model=care_s0_det --protocol=oip-grpc --image=" + image,
                                          &detect_status);
  EXPECT_EQ(detect_status, 0) << detected;
  EXPECT_NE(detected.find("care_s0_det version 1"), std::string::npos) << detected;
  int no_model_status = 0;
  const std::string no_model =
      RunCommand(Env("CARE_CLIENT") + " classify " + server + " --protocol=oip-grpc --image=" + image + " 2>&1",
                 &no_model_status);
  EXPECT_NE(no_model_status, 0);
  EXPECT_NE(no_model.find("model name"), std::string::npos) << no_model;
}

TEST(OipDrain, ModelInferIsRefusedWhileTheServerDrains) {
  Server server;
  server.Start({"--drain_timeout=30s"}, "care_server_oip_drain");
  ASSERT_FALSE(::testing::Test::HasFatalFailure());
  auto stub = oip::GRPCInferenceService::NewStub(server.channel());
  auto vision = v1::VisionService::NewStub(server.channel());
  // 250 requests hold the drain open for about a second; SIGTERM once the server holds some.
  std::vector<v1::Image> images;
  for (int i = 0; i < 8; ++i) images.push_back(Raw64(i));
  Burst burst(vision.get(), 250, "care_s0_cls", images);
  ASSERT_GE(WaitUntilHeld(server, 20), 20);
  server.Signal(SIGTERM);
  bool ready = true;
  for (int i = 0; i < 200 && ready; ++i) {
    grpc::ClientContext context;
    oip::ServerReadyResponse response;
    ASSERT_TRUE(stub->ServerReady(&context, {}, &response).ok());
    ready = response.ready();
  }
  EXPECT_FALSE(ready) << "ServerReady while draining";
  grpc::ClientContext context;
  oip::ModelInferResponse response;
  const grpc::Status refused = stub->ModelInfer(&context, ImageRequest("care_s0_cls", {Png(Crops(1)[0])}, false),
                                                &response);
  EXPECT_EQ(refused.error_code(), StatusCode::UNAVAILABLE) << refused.error_message();
  EXPECT_NE(refused.error_message().find("shutting down"), std::string::npos) << refused.error_message();
  burst.Wait();
  EXPECT_EQ(server.WaitExit(std::chrono::seconds(60)), 0) << server.log();
}

}  // namespace
}  // namespace careserve
