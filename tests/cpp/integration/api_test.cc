// care-server end to end: the RPCs' answers for every task, the contract's status codes for bad
// input, ListModels, health, reflection, and a model that fails to load.
#include "clients/draw.h"
#include "tests/cpp/integration/server_harness.h"

namespace careserve {
namespace {

TEST_F(ServerTest, ConcurrentClassifyCallsGetTheirOwnImagesLogits) {
  constexpr int kCalls = 64;
  const std::vector<cv::Mat> photos = Photos();
  std::vector<v1::ClassifyRequest> requests(kCalls);
  for (int i = 0; i < kCalls; ++i) {
    requests[i].set_model("care_s0_cls");
    requests[i].set_top_k(1000);
    *requests[i].mutable_image() = TestImage(photos, i);
  }
  const std::string metrics_before = HttpGet(server_->metrics_port(), "/metrics");

  // All 64 at once, on gRPC's callback client API.
  std::vector<v1::ClassifyResponse> responses(kCalls);
  std::vector<grpc::Status> statuses(kCalls);
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
  absl::Mutex mu;
  int done = 0;
  for (int i = 0; i < kCalls; ++i) {
    contexts.push_back(std::make_unique<grpc::ClientContext>());
    contexts.back()->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
    stub_->async()->Classify(contexts.back().get(), &requests[i], &responses[i], [&, i](grpc::Status status) {
      absl::MutexLock lock(&mu);
      statuses[i] = std::move(status);
      ++done;
    });
  }
  {
    absl::MutexLock lock(&mu);
    mu.Await(absl::Condition(
        +[](int* d) { return *d == kCalls; }, &done));
  }

  // The reference: each image alone through the same TorchScript file (not optimised),
  // preprocessed by the pipeline the reference tests check against Python/OpenCV.
  const std::string repository = Env("CARE_TEST_REPOSITORY");
  ConfigureTorch(2, 1);
  EngineOptions plain;
  plain.optimize = false;
  auto model = TorchModel::Load(repository + "/care_s0_cls/1/model.pt", plain);
  ASSERT_TRUE(model.ok()) << model.status();
  auto spec = ReadModelSpec(repository + "/care_s0_cls");
  ASSERT_TRUE(spec.ok()) << spec.status();
  std::vector<std::vector<float>> expected(kCalls, std::vector<float>(1000));
  std::vector<float> input(3 * 64 * 64);
  for (int i = 0; i < kCalls; ++i) {
    // The served pipeline, reduced-size JPEG decoding included (its tolerance against
    // decoding every pixel is image_test's).
    auto decoded = DecodeForInput(requests[i].image(), DecodeLimits{}, spec->input);
    ASSERT_TRUE(decoded.ok()) << decoded.status();
    NormalizeInto(ResizeForInput(decoded->rgb, spec->input, decoded->source_width, decoded->source_height),
                  spec->input, input.data());
    auto outputs = (*model)->Run(input.data(), 1, 64, 64);
    ASSERT_TRUE(outputs.ok()) << outputs.status();
    for (const ClassScore& c : SoftmaxTopK(outputs->tensors[0].f32(), 1000, 1000)) expected[i][c.index] = c.score;
  }

  // Relative distance between a response's probabilities and a reference's.
  auto distance = [&](int response, int reference) {
    double worst = 0;
    for (const v1::Classification& c : responses[response].classes()) {
      const double e = expected[reference][c.index()];
      worst = std::max(worst, std::abs(c.score() - e) / e);
    }
    return worst;
  };
  constexpr double kTolerance = 1e-4;  // batched + optimised vs alone + plain TorchScript
  for (int i = 0; i < kCalls; ++i) {
    ASSERT_TRUE(statuses[i].ok()) << i << ": " << statuses[i].error_message();
    ASSERT_EQ(responses[i].classes_size(), 1000);
    EXPECT_EQ(responses[i].model(), "care_s0_cls");
    EXPECT_EQ(responses[i].model_version(), 1);
    EXPECT_LT(distance(i, i), kTolerance) << "request " << i << " did not get its own image's answer";
    for (int j = 0; j < kCalls; ++j) {
      // Every other image's answer is far off: a mix-up could not hide within the tolerance.
      if (j != i) EXPECT_GT(distance(i, j), 100 * kTolerance) << i << " vs " << j;
    }
  }

  // Batches of more than one request really formed, and ran exactly these requests.
  const std::string metrics = HttpGet(server_->metrics_port(), "/metrics");
  const std::string model_label = "{model=\"care_s0_cls\"}";
  auto delta = [&](const std::string& series) {
    return Sample(metrics, series) - std::max(0.0, Sample(metrics_before, series));
  };
  const double batches = delta("care_batch_size_count" + model_label);
  const double singles = delta("care_batch_size_bucket{model=\"care_s0_cls\",le=\"1\"}");
  const double images = delta("care_batch_size_sum" + model_label);
  EXPECT_EQ(images, kCalls);
  EXPECT_GT(batches, 0);
  EXPECT_LT(batches, kCalls) << "no batch held more than one request";
  EXPECT_LT(singles, batches);
  EXPECT_EQ(delta("care_requests_total{api=\"vision\",code=\"OK\",method=\"Classify\",model=\"care_s0_cls\"}"), kCalls);
}

TEST_F(ServerTest, BadRequestsGetTheContractsStatusCodes) {
  v1::Image good = TestImage(Photos(), 0);
  v1::Image garbage;
  garbage.set_encoded("definitely not an image");
  v1::Image truncated = good;
  truncated.set_encoded(good.encoded().substr(0, good.encoded().size() / 3));

  struct Case {
    const char* what;
    std::string model;
    v1::Image image;
    int top_k;
    int64_t version;
    StatusCode code;
    const char* message;
  };
  const std::vector<Case> cases = {
      {"undecodable bytes", "care_s0_cls", garbage, 0, 0, StatusCode::INVALID_ARGUMENT, "is not a JPEG, PNG"},
      {"truncated PNG", "care_s0_cls", truncated, 0, 0, StatusCode::INVALID_ARGUMENT, "cannot decode the PNG"},
      {"no image", "care_s0_cls", v1::Image(), 0, 0, StatusCode::INVALID_ARGUMENT, "image is missing"},
      {"top_k above the classes", "care_s0_cls", good, 1001, 0, StatusCode::INVALID_ARGUMENT,
       "top_k must be between 0 and 1000"},
      {"negative top_k", "care_s0_cls", good, -1, 0, StatusCode::INVALID_ARGUMENT, "got -1"},
      {"unknown model", "no_such_model", good, 0, 0, StatusCode::NOT_FOUND,
       "model \"no_such_model\" is not in the repository"},
      {"unknown version", "care_s0_cls", good, 0, 7, StatusCode::NOT_FOUND, "has no version 7"},
      {"detection model", "care_s0_det", good, 0, 0, StatusCode::FAILED_PRECONDITION,
       "is a detection model, not a classification one; call Detect"},
      {"Mask R-CNN model", "care_s0_mask", good, 0, 0, StatusCode::FAILED_PRECONDITION,
       "instance_segmentation model, not a classification one; call Detect"},
      {"model that failed to load", "broken_model", good, 0, 0, StatusCode::FAILED_PRECONDITION,
       "failed to load: "},
      {"no default among two classifiers", "", good, 0, 0, StatusCode::NOT_FOUND,
       "serves 2 classification models (care_s0_cls, care_s0_queue1)"},
  };
  for (const Case& c : cases) {
    v1::ClassifyRequest request;
    request.set_model(c.model);
    request.set_top_k(c.top_k);
    request.set_model_version(c.version);
    *request.mutable_image() = c.image;
    grpc::ClientContext context;
    v1::ClassifyResponse response;
    const grpc::Status status = stub_->Classify(&context, request, &response);
    EXPECT_EQ(status.error_code(), c.code) << c.what << ": " << status.error_message();
    EXPECT_NE(status.error_message().find(c.message), std::string::npos) << c.what << ": " << status.error_message();
  }

  // Detect and Segment: wrong task, and out-of-range detection parameters.
  {
    grpc::ClientContext context;
    v1::DetectRequest request;
    request.set_model("care_s0_cls");
    *request.mutable_image() = good;
    v1::DetectResponse response;
    EXPECT_EQ(stub_->Detect(&context, request, &response).error_code(), StatusCode::FAILED_PRECONDITION);
  }
  {
    grpc::ClientContext context;
    v1::SegmentRequest request;
    request.set_model("care_s0_det");
    *request.mutable_image() = good;
    v1::SegmentResponse response;
    const grpc::Status status = stub_->Segment(&context, request, &response);
    EXPECT_EQ(status.error_code(), StatusCode::FAILED_PRECONDITION);
    EXPECT_NE(status.error_message().find("call Detect"), std::string::npos) << status.error_message();
  }
  struct BadDetect {
    float score, iou;
    int max_detections;
    const char* message;
  };
  for (const BadDetect& bad : {BadDetect{-0.1f, 0, 0, "score_threshold must be in [0, 1]"},
                               BadDetect{1.5f, 0, 0, "score_threshold must be in [0, 1]"},
                               BadDetect{std::nanf(""), 0, 0, "score_threshold must be in [0, 1]"},
                               BadDetect{0, 1.5f, 0, "iou_threshold must be in [0, 1] (0: the model's 0.5), got 1.5"},
                               BadDetect{0, 0, -1, "max_detections must be in [0, 10000]"},
                               BadDetect{0, 0, 10001, "max_detections must be in [0, 10000]"}}) {
    grpc::ClientContext context;
    v1::DetectRequest request;  // the only detection model is the default
    *request.mutable_image() = good;
    request.set_score_threshold(bad.score);
    request.set_iou_threshold(bad.iou);
    request.set_max_detections(bad.max_detections);
    v1::DetectResponse response;
    const grpc::Status status = stub_->Detect(&context, request, &response);
    EXPECT_EQ(status.error_code(), StatusCode::INVALID_ARGUMENT) << bad.message;
    EXPECT_NE(status.error_message().find(bad.message), std::string::npos) << status.error_message();
  }
  {
    grpc::ClientContext context;
    v1::SegmentRequest request;  // the default segmentation model, a bad image
    request.mutable_image()->set_encoded("GIF89a not supported");
    v1::SegmentResponse response;
    EXPECT_EQ(stub_->Segment(&context, request, &response).error_code(), StatusCode::INVALID_ARGUMENT);
  }

  // And the server keeps serving.
  v1::ClassifyRequest request;
  request.set_model("care_s0_cls");
  *request.mutable_image() = good;
  grpc::ClientContext context;
  v1::ClassifyResponse response;
  ASSERT_TRUE(stub_->Classify(&context, request, &response).ok());
  EXPECT_EQ(response.classes_size(), 5);  // top_k 0 -> 5
}

// tests/data/bad_inputs (made by tests/tools/make_bad_inputs.py): every case gets its
// status code and a message saying what was wrong, the valid oddities are answered, an
// oversized message is refused by gRPC, and afterwards a good request gets the same answer
// as before the corpus.
TEST_F(ServerTest, TheBadInputCorpusGetsItsStatusCodesAndTheServerKeepsServing) {
  const std::string dir = std::string(CARE_SOURCE_DIR) + "/tests/data/bad_inputs/";
  google::protobuf::Struct manifest;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(ReadFile(dir + "manifest.json"), &manifest).ok());
  const auto& cases = manifest.fields().at("cases").list_value().values();
  ASSERT_GE(cases.size(), 25);

  auto classify = [&](const v1::Image& image, int top_k, v1::ClassifyResponse* response) {
    v1::ClassifyRequest request;
    request.set_model("care_s0_cls");
    request.set_top_k(top_k);
    *request.mutable_image() = image;
    grpc::ClientContext context;
    return stub_->Classify(&context, request, response);
  };
  v1::Image good;
  good.set_encoded(ReadFile(dir + "good.jpg"));
  v1::ClassifyResponse before;
  ASSERT_TRUE(classify(good, 5, &before).ok());

  auto number = [](const google::protobuf::Value& v) {
    if (v.kind_case() == google::protobuf::Value::kStringValue) return std::stod(v.string_value());  // nan, inf
    return v.number_value();
  };
  const std::map<StatusCode, std::string> names = {
      {StatusCode::OK, "OK"}, {StatusCode::INVALID_ARGUMENT, "INVALID_ARGUMENT"},
      {StatusCode::RESOURCE_EXHAUSTED, "RESOURCE_EXHAUSTED"}, {StatusCode::NOT_FOUND, "NOT_FOUND"}};
  int answered_ok = 0;
  for (const auto& value : cases) {
    const auto& c = value.struct_value().fields();
    const auto& fields = c.at("request").struct_value().fields();
    const std::string what = c.at("name").string_value() + (c.count("case") ? " " + c.at("case").string_value() : "");
    v1::Image image;
    if (fields.count("raw")) {
      const auto& raw = fields.at("raw").struct_value().fields();
      image.mutable_raw()->set_width(static_cast<int>(raw.at("width").number_value()));
      image.mutable_raw()->set_height(static_cast<int>(raw.at("height").number_value()));
      v1::PixelFormat format;
      if (raw.at("format").kind_case() == google::protobuf::Value::kStringValue) {
        ASSERT_TRUE(v1::PixelFormat_Parse(raw.at("format").string_value(), &format)) << what;
      } else {
        format = static_cast<v1::PixelFormat>(static_cast<int>(raw.at("format").number_value()));
      }
      image.mutable_raw()->set_format(format);
      image.mutable_raw()->set_data(ReadFile(dir + c.at("name").string_value()));
    } else {
      image.set_encoded(ReadFile(dir + c.at("name").string_value()));
    }
    grpc::Status status;
    int classes = -1;
    if (c.at("rpc").string_value() == "Classify") {
      v1::ClassifyResponse response;
      status = classify(image, fields.count("top_k") ? static_cast<int>(fields.at("top_k").number_value()) : 0,
                        &response);
      classes = response.classes_size();
    } else {
      v1::DetectRequest request;
      *request.mutable_image() = image;
      if (fields.count("score_threshold")) request.set_score_threshold(number(fields.at("score_threshold")));
      if (fields.count("iou_threshold")) request.set_iou_threshold(number(fields.at("iou_threshold")));
      if (fields.count("max_detections")) request.set_max_detections(number(fields.at("max_detections")));
      grpc::ClientContext context;
      v1::DetectResponse response;
      status = stub_->Detect(&context, request, &response);
    }
    const auto name = names.find(status.error_code());
    EXPECT_EQ(name == names.end() ? std::to_string(status.error_code()) : name->second, c.at("code").string_value())
        << what << ": " << status.error_message();
    EXPECT_NE(status.error_message().find(c.at("message").string_value()), std::string::npos)
        << what << ": " << status.error_message();
    if (status.ok()) {
      EXPECT_EQ(classes, 5) << what;
      ++answered_ok;
    }
  }
  EXPECT_GE(answered_ok, 5);

  // A message over --max_message_bytes (32 MiB): refused by gRPC before the service reads it.
  {
    v1::Image huge;
    huge.set_encoded(std::string(33 << 20, 'x'));
    v1::ClassifyResponse response;
    const grpc::Status status = classify(huge, 0, &response);
    EXPECT_EQ(status.error_code(), StatusCode::RESOURCE_EXHAUSTED) << status.error_message();
    EXPECT_NE(status.error_message().find("larger than max"), std::string::npos) << status.error_message();
  }

  // Still serving, with the same answer as before.
  v1::ClassifyResponse after;
  ASSERT_TRUE(classify(good, 5, &after).ok());
  ASSERT_EQ(after.classes_size(), before.classes_size());
  for (int i = 0; i < after.classes_size(); ++i) {
    EXPECT_EQ(after.classes(i).index(), before.classes(i).index());
    EXPECT_EQ(after.classes(i).score(), before.classes(i).score());
  }
}

// The dense references (tests/tools/dense_reference.py, run by the test fixture).
struct DenseReference {
  google::protobuf::Struct json;
  std::string dir;

  static DenseReference Load() {
    DenseReference r;
    r.dir = Env("CARE_TEST_REPOSITORY") + "_reference";
    EXPECT_TRUE(google::protobuf::util::JsonStringToMessage(ReadFile(r.dir + "/reference.json"), &r.json).ok())
        << r.dir;
    return r;
  }
  const google::protobuf::ListValue& images() const { return json.fields().at("images").list_value(); }
  double detect(const char* key) const { return json.fields().at("detect").struct_value().fields().at(key).number_value(); }
  double instances(const char* key) const {
    return json.fields().at("instances").struct_value().fields().at(key).number_value();
  }
};

// Greedy match of the server's detections to the reference's: same class, same score
// within 1e-4, same box within 0.05 px. Returns what did not match.
std::vector<std::string> DetectionMismatches(const v1::DetectResponse& response,
                                             const google::protobuf::ListValue& reference) {
  std::vector<std::string> problems;
  std::vector<bool> used(response.detections_size(), false);
  for (const auto& value : reference.values()) {
    const auto& fields = value.struct_value().fields();
    const auto& box = fields.at("box").list_value();
    bool found = false;
    for (int i = 0; i < response.detections_size() && !found; ++i) {
      const v1::Detection& d = response.detections(i);
      if (used[i] || d.class_index() != fields.at("class_index").number_value() ||
          std::abs(d.score() - fields.at("score").number_value()) > 1e-4) {
        continue;
      }
      const double coords[4] = {d.box().x_min(), d.box().y_min(), d.box().x_max(), d.box().y_max()};
      double worst = 0;
      for (int k = 0; k < 4; ++k) worst = std::max(worst, std::abs(coords[k] - box.values(k).number_value()));
      if (worst <= 0.05) used[i] = found = true;
    }
    if (!found) {
      problems.push_back(absl::StrFormat("reference class %d score %.6f box [%.2f %.2f %.2f %.2f] not answered",
                                         static_cast<int>(fields.at("class_index").number_value()),
                                         fields.at("score").number_value(), box.values(0).number_value(),
                                         box.values(1).number_value(), box.values(2).number_value(),
                                         box.values(3).number_value()));
    }
  }
  for (int i = 0; i < response.detections_size(); ++i) {
    if (!used[i]) problems.push_back(absl::StrFormat("extra detection class %d score %.6f",
                                                     response.detections(i).class_index(),
                                                     response.detections(i).score()));
  }
  return problems;
}

TEST_F(ServerTest, DetectAndSegmentMatchTheReferenceUnderConcurrency) {
  const DenseReference reference = DenseReference::Load();
  const int images = reference.images().values_size();
  ASSERT_GE(images, 5);
  constexpr int kRepeats = 3;
  const int calls = images * kRepeats;
  std::vector<v1::DetectRequest> detect_requests(calls);
  std::vector<v1::SegmentRequest> segment_requests(calls);
  std::vector<v1::DetectResponse> detect_responses(calls);
  std::vector<v1::SegmentResponse> segment_responses(calls);
  std::vector<grpc::Status> detect_statuses(calls), segment_statuses(calls);
  std::vector<grpc::ClientContext> detect_contexts(calls), segment_contexts(calls);
  for (int i = 0; i < calls; ++i) {
    const std::string name = reference.images().values(i % images).struct_value().fields().at("name").string_value();
    const std::string bytes = ReadFile(reference.dir + "/images/" + name + ".png");
    detect_requests[i].set_model("care_s0_det");
    detect_requests[i].mutable_image()->set_encoded(bytes);
    detect_requests[i].set_score_threshold(static_cast<float>(reference.detect("score_threshold")));
    detect_requests[i].set_iou_threshold(static_cast<float>(reference.detect("iou_threshold")));
    detect_requests[i].set_max_detections(static_cast<int>(reference.detect("max_detections")));
    segment_requests[i].set_model("care_s0_seg");
    segment_requests[i].mutable_image()->set_encoded(bytes);
  }
  absl::Mutex mu;
  int done = 0;
  for (int i = 0; i < calls; ++i) {
    stub_->async()->Detect(&detect_contexts[i], &detect_requests[i], &detect_responses[i], [&, i](grpc::Status s) {
      absl::MutexLock lock(&mu);
      detect_statuses[i] = std::move(s);
      ++done;
    });
    stub_->async()->Segment(&segment_contexts[i], &segment_requests[i], &segment_responses[i],
                            [&, i](grpc::Status s) {
                              absl::MutexLock lock(&mu);
                              segment_statuses[i] = std::move(s);
                              ++done;
                            });
  }
  {
    absl::MutexLock lock(&mu);
    auto all_done = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return done == 2 * calls; };
    mu.Await(absl::Condition(&all_done));
  }

  for (int i = 0; i < calls; ++i) {
    const auto& ref = reference.images().values(i % images).struct_value().fields();
    const std::string name = ref.at("name").string_value();
    const int width = static_cast<int>(ref.at("width").number_value());
    const int height = static_cast<int>(ref.at("height").number_value());

    ASSERT_TRUE(detect_statuses[i].ok()) << name << ": " << detect_statuses[i].error_message();
    const v1::DetectResponse& det = detect_responses[i];
    EXPECT_EQ(det.image_width(), width);
    EXPECT_EQ(det.image_height(), height);
    EXPECT_EQ(det.detections_size(), ref.at("detections").list_value().values_size()) << name;
    for (const std::string& problem : DetectionMismatches(det, ref.at("detections").list_value())) {
      ADD_FAILURE() << name << ": " << problem;
    }
    for (int k = 1; k < det.detections_size(); ++k) {
      EXPECT_GE(det.detections(k - 1).score(), det.detections(k).score()) << name << ": not sorted by score";
    }

    ASSERT_TRUE(segment_statuses[i].ok()) << name << ": " << segment_statuses[i].error_message();
    const v1::SegmentResponse& seg = segment_responses[i];
    EXPECT_EQ(seg.width(), width);
    EXPECT_EQ(seg.height(), height);
    const std::string& png = seg.mask_png();
    const cv::Mat mask = cv::imdecode(std::vector<uchar>(png.begin(), png.end()), cv::IMREAD_UNCHANGED);
    const cv::Mat expected = cv::imread(reference.dir + "/masks/" + name + ".png", cv::IMREAD_UNCHANGED);
    ASSERT_EQ(mask.type(), CV_8UC1) << name << ": 150 classes fit an 8-bit PNG";
    ASSERT_EQ(mask.size(), expected.size()) << name;
    const double agreement = 1.0 - cv::countNonZero(mask != expected) / static_cast<double>(mask.total());
    EXPECT_GE(agreement, 0.999) << name;
    // Coverage: the fractions of the mask's own pixels, largest first, summing to 1.
    double total = 0;
    for (int k = 0; k < seg.classes_size(); ++k) {
      const auto& c = seg.classes(k);
      total += c.fraction();
      EXPECT_NEAR(c.fraction(), cv::countNonZero(mask == c.class_index()) / static_cast<double>(mask.total()), 1e-6);
      if (k > 0) EXPECT_LE(c.fraction(), seg.classes(k - 1).fraction());
    }
    EXPECT_NEAR(total, 1.0, 1e-5) << name;
  }
}

TEST_F(ServerTest, DetectOnMaskRcnnAnswersTheReferencesBoxesAndMasks) {
  const DenseReference reference = DenseReference::Load();
  const int images = reference.images().values_size();
  std::vector<v1::DetectRequest> requests(images);
  std::vector<v1::DetectResponse> responses(images);
  std::vector<grpc::Status> statuses(images);
  std::vector<grpc::ClientContext> contexts(images);
  absl::Mutex mu;
  int done = 0;
  for (int i = 0; i < images; ++i) {  // concurrent: they share batches
    const std::string name = reference.images().values(i).struct_value().fields().at("name").string_value();
    requests[i].set_model("care_s0_mask");
    requests[i].mutable_image()->set_encoded(ReadFile(reference.dir + "/images/" + name + ".png"));
    requests[i].set_score_threshold(static_cast<float>(reference.instances("score_threshold")));
    requests[i].set_iou_threshold(static_cast<float>(reference.instances("iou_threshold")));
    requests[i].set_max_detections(static_cast<int>(reference.instances("max_detections")));
    stub_->async()->Detect(&contexts[i], &requests[i], &responses[i], [&, i](grpc::Status s) {
      absl::MutexLock lock(&mu);
      statuses[i] = std::move(s);
      ++done;
    });
  }
  {
    absl::MutexLock lock(&mu);
    auto all_done = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return done == images; };
    mu.Await(absl::Condition(&all_done));
  }
  int masks_compared = 0;
  for (int i = 0; i < images; ++i) {
    const auto& ref = reference.images().values(i).struct_value().fields();
    const std::string name = ref.at("name").string_value();
    const int width = static_cast<int>(ref.at("width").number_value());
    const int height = static_cast<int>(ref.at("height").number_value());
    ASSERT_TRUE(statuses[i].ok()) << name << ": " << statuses[i].error_message();
    const v1::DetectResponse& det = responses[i];
    const auto& expected = ref.at("instances").list_value();
    ASSERT_EQ(det.detections_size(), expected.values_size()) << name;
    for (const std::string& problem : DetectionMismatches(det, expected)) ADD_FAILURE() << name << ": " << problem;
    // Masks of matched detections: the same order (scores are distinct here) after the match above.
    for (int j = 0; j < det.detections_size(); ++j) {
      const auto& fields = expected.values(j).struct_value().fields();
      if (det.detections(j).class_index() != fields.at("class_index").number_value() ||
          std::abs(det.detections(j).score() - fields.at("score").number_value()) > 1e-4) {
        ADD_FAILURE() << name << ": detection " << j << " is not the reference's " << j;
        continue;
      }
      const v1::CocoRle& rle = det.detections(j).mask();
      ASSERT_EQ(rle.size_size(), 2) << name;
      EXPECT_EQ(rle.size(0), height);
      EXPECT_EQ(rle.size(1), width);
      const cv::Mat mask = DecodeInstanceMask(rle);
      ASSERT_FALSE(mask.empty()) << name << " detection " << j << ": malformed RLE " << rle.counts();
      const cv::Mat want =
          cv::imread(reference.dir + "/instances/" + name + "_" + std::to_string(j) + ".png", cv::IMREAD_GRAYSCALE);
      ASSERT_EQ(mask.size(), want.size()) << name;
      const double agreement = 1.0 - cv::countNonZero(mask != want) / static_cast<double>(mask.total());
      EXPECT_GE(agreement, 0.995) << name << " detection " << j;
      ++masks_compared;
    }
  }
  EXPECT_GE(masks_compared, 20);
}

TEST_F(ServerTest, CareClientDrawsPicturesOfTheInputsSize) {
  const DenseReference reference = DenseReference::Load();
  const std::string client = Env("CARE_CLIENT");
  ASSERT_FALSE(client.empty()) << "CARE_CLIENT is not set (run through ctest)";
  const std::string server = "--server=127.0.0.1:" + std::to_string(server_->grpc_port());
  for (const char* name : {"astronaut_portrait_200x480", "coffee_wide_600x150"}) {
    const std::string image = reference.dir + "/images/" + name + ".png";
    const cv::Mat input = cv::imread(image, cv::IMREAD_COLOR);
    for (const char* command : {"detect", "segment"}) {
      const std::string out = ::testing::TempDir() + "/" + name + "_" + command + ".png";
      std::remove(out.c_str());
      const std::string line = client + " " + command + " " + server + " --image=" + image + " --draw=" + out +
                               " --score_threshold=0.33 > /dev/null 2>&1";
      ASSERT_EQ(std::system(line.c_str()), 0) << line;
      const cv::Mat picture = cv::imread(out, cv::IMREAD_COLOR);
      ASSERT_FALSE(picture.empty()) << out;
      EXPECT_EQ(picture.size(), input.size()) << out;
      EXPECT_GT(cv::norm(picture, input, cv::NORM_L1), 0) << out << " has nothing drawn on it";
    }
  }
}

// Detect with no model names the default detection model, else (a repository without
// one) the default Mask R-CNN.
TEST(MaskRcnnDefault, DetectWithNoModelFallsBackToTheMaskRcnn) {
  const std::string repository = ::testing::TempDir() + "/mask_rcnn_only";
  std::filesystem::remove_all(repository);
  std::filesystem::create_directories(repository);
  std::filesystem::create_directory_symlink(Env("CARE_TEST_REPOSITORY") + "/care_s0_mask", repository + "/care_s0_mask");
  Server server;
  server.Start({"--model_repository=" + repository}, "care_server_mask_rcnn_only");
  auto stub = v1::VisionService::NewStub(server.channel());
  v1::DetectRequest request;
  request.mutable_image()->set_encoded(
      ReadFile(DenseReference::Load().dir + "/images/astronaut_square_512.png"));
  request.set_score_threshold(0.6f);
  v1::DetectResponse response;
  grpc::ClientContext context;
  const grpc::Status status = stub->Detect(&context, request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.model(), "care_s0_mask");
  ASSERT_GT(response.detections_size(), 0);
  EXPECT_TRUE(response.detections(0).has_mask());
}

// care-client on a Mask R-CNN: each detection's mask size in the text, and the masks tinted
// in the picture: inside the largest mask, pixels
// change; outside every mask and box, none do.
TEST_F(ServerTest, CareClientPrintsAndPaintsInstanceMasks) {
  const DenseReference reference = DenseReference::Load();
  const std::string image = reference.dir + "/images/astronaut_square_512.png";
  const std::string out = ::testing::TempDir() + "/instances.png";
  std::remove(out.c_str());
  int status = -1;
  const std::string text = RunCommand(Env("CARE_CLIENT") + " detect --server=127.0.0.1:" +
                                          std::to_string(server_->grpc_port()) +
                                          " --model=care_s0_mask --score_threshold=0.6 --image=" + image +
                                          " --draw=" + out,
                                      &status);
  ASSERT_EQ(status, 0) << text;
  EXPECT_TRUE(std::regex_search(text, std::regex(R"(\]  mask \d+ px)"))) << text;

  v1::DetectRequest request;
  request.set_model("care_s0_mask");
  request.mutable_image()->set_encoded(ReadFile(image));
  request.set_score_threshold(0.6f);
  v1::DetectResponse response;
  grpc::ClientContext context;
  ASSERT_TRUE(stub_->Detect(&context, request, &response).ok());
  ASSERT_GT(response.detections_size(), 0);
  const cv::Mat input = cv::imread(image, cv::IMREAD_COLOR), picture = cv::imread(out, cv::IMREAD_COLOR);
  ASSERT_EQ(picture.size(), input.size());
  cv::Mat changed;
  cv::reduce(cv::Mat(cv::abs(picture - input)).reshape(1, input.total()), changed, 1, cv::REDUCE_MAX);
  changed = changed.reshape(1, input.rows) > 0;
  cv::Mat any_mask(input.size(), CV_8UC1, cv::Scalar(0)), outlines(input.size(), CV_8UC1, cv::Scalar(0));
  for (const v1::Detection& d : response.detections()) {
    any_mask |= DecodeInstanceMask(d.mask());
    // the box with a margin for anti-aliasing, and its label's strip (above the box, or
    // inside it at the image's top; wider than a narrow box)
    cv::rectangle(outlines, cv::Point(d.box().x_min() - 4, d.box().y_min() - 4),
                  cv::Point(d.box().x_max() + 4, d.box().y_max() + 4), cv::Scalar(255), cv::FILLED);
    cv::rectangle(outlines, cv::Point(d.box().x_min() - 4, d.box().y_min() - 60),
                  cv::Point(d.box().x_min() + 400, d.box().y_min() + 60), cv::Scalar(255), cv::FILLED);
  }
  cv::Mat largest;
  for (const v1::Detection& d : response.detections()) {
    const cv::Mat mask = DecodeInstanceMask(d.mask());
    if (largest.empty() || cv::countNonZero(mask) > cv::countNonZero(largest)) largest = mask;
  }
  ASSERT_GT(cv::countNonZero(largest), 100);
  EXPECT_EQ(cv::countNonZero(largest & changed), cv::countNonZero(largest)) << "every pixel of a mask is tinted";
  EXPECT_EQ(cv::countNonZero(changed & ~any_mask & ~outlines), 0) << "nothing drawn outside the answers";
}

TEST_F(ServerTest, ListModelsReportsServedAndFailedModels) {
  grpc::ClientContext context;
  v1::ListModelsResponse response;
  ASSERT_TRUE(stub_->ListModels(&context, v1::ListModelsRequest(), &response).ok());
  std::map<std::string, v1::ModelInfo> models;
  for (const v1::ModelInfo& m : response.models()) models[m.name()] = m;
  ASSERT_EQ(models.size(), 8u);
  const v1::ModelInfo& cls = models["care_s0_cls"];
  EXPECT_TRUE(cls.ready());
  EXPECT_EQ(cls.task(), "classification");
  EXPECT_EQ(cls.architecture(), "care_s0");
  EXPECT_EQ(cls.input_height(), 64);
  EXPECT_EQ(cls.input_width(), 64);
  EXPECT_EQ(cls.num_classes(), 1000);
  EXPECT_EQ(cls.weights_source(), "random");
  ASSERT_EQ(cls.versions_size(), 1);
  EXPECT_EQ(cls.versions(0), 1);
  EXPECT_EQ(cls.error(), "");
  EXPECT_TRUE(models["care_s0_det"].ready());
  EXPECT_EQ(models["care_s0_det"].task(), "detection");
  EXPECT_EQ(models["care_s0_det"].num_classes(), 80);
  EXPECT_EQ(models["care_s0_det"].input_height(), 96);
  EXPECT_EQ(models["care_s0_det"].input_width(), 128);
  EXPECT_EQ(models["care_s0_det"].weights_source(), "checkpoint");
  EXPECT_TRUE(models["care_s0_seg"].ready());
  EXPECT_EQ(models["care_s0_seg"].task(), "segmentation");
  EXPECT_EQ(models["care_s0_seg"].num_classes(), 150);
  EXPECT_TRUE(models["care_s0_mask"].ready()) << models["care_s0_mask"].error();
  EXPECT_EQ(models["care_s0_mask"].task(), "instance_segmentation");
  const v1::ModelInfo& broken = models["broken_model"];
  EXPECT_FALSE(broken.ready());
  EXPECT_EQ(broken.versions_size(), 0);
  EXPECT_NE(broken.error().find("batching.max_batch_size must be >= 1, got 0"), std::string::npos) << broken.error();
  // A corrupt TorchScript file and a missing labels file: reported, the rest served.
  EXPECT_FALSE(models["corrupt_weights"].ready());
  EXPECT_NE(models["corrupt_weights"].error().find("version 1: cannot load TorchScript"), std::string::npos)
      << models["corrupt_weights"].error();
  EXPECT_FALSE(models["missing_labels"].ready());
  EXPECT_NE(models["missing_labels"].error().find("labels.txt"), std::string::npos) << models["missing_labels"].error();
  // In the metrics and the log too.
  const std::string metrics = HttpGet(server_->metrics_port(), "/metrics");
  EXPECT_EQ(Sample(metrics, R"(care_model_ready{model="care_s0_cls"})"), 1);
  for (const char* failed : {"broken_model", "corrupt_weights", "missing_labels"}) {
    EXPECT_EQ(Sample(metrics, absl::StrFormat(R"(care_model_ready{model="%s"})", failed)), 0) << failed;
    EXPECT_NE(server_->log().find(absl::StrFormat("msg=\"model not served\" model=%s", failed)), std::string::npos)
        << failed;
  }
}

TEST_F(ServerTest, ModelsWithoutConfiguredInstancesMayUseEveryEngineThread) {
  // --engine_runners=2: care_s0_cls leaves batching.instances out, care_s0_queue1 sets 1.
  const std::string log = server_->log();
  auto instances = [&](const std::string& model) {
    std::smatch m;
    const std::regex line("msg=\"model loaded\" model=" + model + " .* instances=([a-z0-9]+)");
    return std::regex_search(log, m, line) ? std::string(m[1]) : "-";
  };
  EXPECT_EQ(instances("care_s0_cls"), "all") << log;
  EXPECT_EQ(instances("care_s0_queue1"), "1") << log;
  EXPECT_NE(log.find("engine_runners=2 intra_op_threads=1"), std::string::npos) << log;
}

TEST_F(ServerTest, HealthIsServingOnceModelsAreWarm) {
  auto health = grpc::health::v1::Health::NewStub(server_->channel());
  for (const char* service : {"", "care.vision.v1.VisionService"}) {
    grpc::ClientContext context;
    grpc::health::v1::HealthCheckRequest request;
    request.set_service(service);
    grpc::health::v1::HealthCheckResponse response;
    ASSERT_TRUE(health->Check(&context, request, &response).ok()) << service;
    EXPECT_EQ(response.status(), grpc::health::v1::HealthCheckResponse::SERVING) << service;
  }
  grpc::ClientContext context;
  grpc::health::v1::HealthCheckRequest request;
  request.set_service("no.such.Service");
  grpc::health::v1::HealthCheckResponse response;
  EXPECT_EQ(health->Check(&context, request, &response).error_code(), StatusCode::NOT_FOUND);
}

TEST_F(ServerTest, ReflectionDescribesTheApi) {
  auto reflection = grpc::reflection::v1alpha::ServerReflection::NewStub(server_->channel());
  grpc::ClientContext context;
  auto stream = reflection->ServerReflectionInfo(&context);
  grpc::reflection::v1alpha::ServerReflectionRequest request;
  grpc::reflection::v1alpha::ServerReflectionResponse response;

  request.set_list_services("");
  ASSERT_TRUE(stream->Write(request));
  ASSERT_TRUE(stream->Read(&response));
  std::vector<std::string> services;
  for (const auto& s : response.list_services_response().service()) services.push_back(s.name());
  EXPECT_NE(std::find(services.begin(), services.end(), "care.vision.v1.VisionService"), services.end());

  request.set_file_containing_symbol("care.vision.v1.VisionService");
  ASSERT_TRUE(stream->Write(request));
  ASSERT_TRUE(stream->Read(&response));
  ASSERT_GT(response.file_descriptor_response().file_descriptor_proto_size(), 0);
  google::protobuf::FileDescriptorProto file;
  ASSERT_TRUE(file.ParseFromString(response.file_descriptor_response().file_descriptor_proto(0)));
  EXPECT_EQ(file.name(), "care/vision/v1/vision.proto");
  ASSERT_EQ(file.service_size(), 1);
  std::vector<std::string> methods;
  for (const auto& m : file.service(0).method()) methods.push_back(m.name());
  EXPECT_EQ(methods, (std::vector<std::string>{"Classify", "Detect", "Segment", "ListModels"}));
  stream->WritesDone();
  EXPECT_TRUE(stream->Finish().ok());
}

TEST(Strict, AModelThatFailsToLoadStopsTheServerAtStart) {
  int status = 0;
  const std::string out = RunCommand(Env("CARE_SERVER") + " --model_repository=" + Env("CARE_TEST_REPOSITORY") +
                                         " --strict --host=127.0.0.1 --port=0 --metrics_port=-1 --http_port=-1 2>&1",
                                     &status);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) != 0) << out;
  EXPECT_NE(out.find("--strict: model broken_model: "), std::string::npos) << out;
  EXPECT_NE(out.find("batching.max_batch_size must be >= 1, got 0"), std::string::npos) << out;
}

}  // namespace
}  // namespace careserve
