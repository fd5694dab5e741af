// Precision modes through the real server: the Fashion-MNIST demo models exported in fp32,
// bf16 and int8 (make_test_repository.sh, $CARE_TEST_REPOSITORY_precision) answer the same
// test images, and the lower-precision answers stay within the accuracy guard that their
// config.json records.
#include <cmath>
#include <filesystem>

#include "nlohmann/json.hpp"
#include "opencv2/imgcodecs.hpp"
#include "server/engine/precision.h"
#include "tests/cpp/integration/server_harness.h"

namespace careserve {
namespace {

namespace fs = std::filesystem;

std::string Repository() { return Env("CARE_TEST_REPOSITORY") + "_precision"; }

std::vector<v1::Image> Images(const std::string& kind) {
  std::vector<std::string> files;
  for (const auto& entry : fs::directory_iterator(Env("CARE_TEST_REPOSITORY") + "_precision_images/" + kind)) {
    files.push_back(entry.path());
  }
  std::sort(files.begin(), files.end());
  std::vector<v1::Image> images;
  for (const std::string& file : files) {
    v1::Image image;
    image.set_encoded(ReadFile(file));
    images.push_back(image);
  }
  return images;
}

// accuracy_check.thresholds of the model's config.json, as the exporter's guard used them.
nlohmann::json Thresholds(const std::string& model) {
  nlohmann::json config = nlohmann::json::parse(ReadFile(Repository() + "/" + model + "/config.json"));
  return config.at("accuracy_check").at("thresholds");
}

float Iou(const v1::BoundingBox& a, const v1::BoundingBox& b) {
  const float w = std::max(0.f, std::min(a.x_max(), b.x_max()) - std::max(a.x_min(), b.x_min()));
  const float h = std::max(0.f, std::min(a.y_max(), b.y_max()) - std::max(a.y_min(), b.y_min()));
  const float area = [](const v1::BoundingBox& r) { return (r.x_max() - r.x_min()) * (r.y_max() - r.y_min()); }(a) +
                     (b.x_max() - b.x_min()) * (b.y_max() - b.y_min()) - w * h;
  return area > 0 ? w * h / area : 0.f;
}

class PrecisionTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    server_ = new Server();
    server_->Start({"--model_repository=" + Repository()}, "care_server_precision_test");
  }
  static void TearDownTestSuite() {
    EXPECT_EQ(server_->Stop(), 0) << server_->log();
    delete server_;
  }
  void SetUp() override {
    if (HasFatalFailure() || server_->channel() == nullptr) GTEST_SKIP() << "the server did not start";
    stub_ = v1::VisionService::NewStub(server_->channel());
  }

  // Share of fp32's confident detections (score >= 0.3) that `precision` finds too, one to
  // one, same class and IoU >= 0.5, as an F1 over both sides (the guard's detection_agreement).
  double DetectionAgreement(const std::string& family, const std::string& low_precision, int* fp32_detections) {
    int matched = 0, total = 0;
    *fp32_detections = 0;
    for (const v1::Image& image : Images("scenes")) {
      std::vector<v1::DetectResponse> answers;
      for (const std::string& precision : {std::string("fp32"), low_precision}) {
        v1::DetectRequest request;
        request.set_model(family + "_" + precision);
        *request.mutable_image() = image;
        request.set_score_threshold(0.3f);
        grpc::ClientContext context;
        v1::DetectResponse response;
        grpc::Status status = stub_->Detect(&context, request, &response);
        EXPECT_TRUE(status.ok()) << request.model() << ": " << status.error_message();
        answers.push_back(response);
      }
      const auto& ref = answers[0].detections();
      const auto& low = answers[1].detections();
      *fp32_detections += ref.size();
      total += ref.size() + low.size();
      std::vector<bool> used(low.size(), false);
      for (const v1::Detection& r : ref) {  // by descending score, as answered
        int best = -1;
        float best_iou = 0.5f;
        for (int j = 0; j < low.size(); ++j) {
          if (used[j] || low[j].class_index() != r.class_index()) continue;
          const float iou = Iou(r.box(), low[j].box());
          if (iou >= best_iou) best = j, best_iou = iou;
        }
        if (best >= 0) used[best] = true, ++matched;
      }
    }
    return total == 0 ? 1.0 : 2.0 * matched / total;
  }

  static Server* server_;
  std::unique_ptr<v1::VisionService::Stub> stub_;
};

Server* PrecisionTest::server_ = nullptr;

TEST_F(PrecisionTest, ListModelsAndMetricsTellEachModelsPrecision) {
  grpc::ClientContext context;
  v1::ListModelsResponse response;
  ASSERT_TRUE(stub_->ListModels(&context, v1::ListModelsRequest(), &response).ok());
  int seen = 0;
  for (const v1::ModelInfo& m : response.models()) {
    if (m.name() == "precision_mismatch") {
      EXPECT_FALSE(m.ready());
      EXPECT_NE(m.error().find("config.json says precision bf16 but model.pt holds no bf16 weights"), std::string::npos)
          << m.error();
      continue;
    }
    ++seen;
    ASSERT_TRUE(m.ready()) << m.name() << ": " << m.error();
    const std::string precision = m.name().substr(m.name().rfind('_') + 1);
    EXPECT_EQ(m.precision(), precision) << m.name();
    EXPECT_EQ(m.precision_note(), PrecisionNote(precision, CpuFlags())) << m.name();
  }
  EXPECT_EQ(seen, 12);
  const std::string metrics = HttpGet(server_->metrics_port(), "/metrics");
  EXPECT_EQ(Sample(metrics, R"(care_model_info{architecture="care_s0",model="fpn_fashion_bf16",precision="bf16",)"
                            R"(task="segmentation",version="1",weights="checkpoint"})"),
            1);
  EXPECT_EQ(Sample(metrics, R"(care_model_info{architecture="care_s0",model="retinanet_fashion_int8",precision="int8",)"
                            R"(task="detection",version="1",weights="checkpoint"})"),
            1);
  EXPECT_EQ(Sample(metrics, R"(care_model_info{architecture="care_s0",model="fashion_fp32",precision="fp32",)"
                            R"(task="classification",version="1",weights="checkpoint"})"),
            1);
}

class LowPrecisionTest : public PrecisionTest, public ::testing::WithParamInterface<std::string> {};

TEST_P(LowPrecisionTest, ClassifierAgreesWithFp32WithinItsGuard) {
  const std::string low = "fashion_" + GetParam();
  const nlohmann::json limits = Thresholds(low);
  int same_top1 = 0, images = 0;
  double score_error = 0;
  for (const v1::Image& image : Images("items")) {
    std::map<int, float> scores[2];
    int top1[2] = {-1, -1};
    for (int p = 0; p < 2; ++p) {
      v1::ClassifyRequest request;
      request.set_model(p == 0 ? "fashion_fp32" : low);
      *request.mutable_image() = image;
      request.set_top_k(10);
      grpc::ClientContext context;
      v1::ClassifyResponse response;
      ASSERT_TRUE(stub_->Classify(&context, request, &response).ok());
      ASSERT_EQ(response.classes_size(), 10);
      top1[p] = response.classes(0).index();
      for (const v1::Classification& c : response.classes()) scores[p][c.index()] = c.score();
    }
    float worst = 0;
    for (const auto& [index, score] : scores[0]) worst = std::max(worst, std::abs(score - scores[1][index]));
    score_error += worst;
    same_top1 += top1[0] == top1[1];
    ++images;
  }
  ASSERT_EQ(images, 32);
  EXPECT_GE(static_cast<double>(same_top1) / images, limits.at("min_top1_agreement").get<double>()) << low;
  EXPECT_LE(score_error / images, limits.at("max_score_error").get<double>()) << low;
}

TEST_P(LowPrecisionTest, DetectorsAgreeWithFp32WithinTheirGuard) {
  for (const std::string family : {"retinanet_fashion", "maskrcnn_fashion"}) {
    int fp32_detections = 0;
    const double agreement = DetectionAgreement(family, GetParam(), &fp32_detections);
    EXPECT_GE(fp32_detections, 16) << family << ": too few confident detections for the comparison to mean much";
    EXPECT_GE(agreement, Thresholds(family + "_" + GetParam()).at("min_detection_agreement").get<double>())
        << family << "_" << GetParam();
  }
}

TEST_P(LowPrecisionTest, SegmenterAgreesWithFp32WithinItsGuard) {
  int64_t same = 0, pixels = 0;
  for (const v1::Image& image : Images("scenes")) {
    cv::Mat masks[2];
    for (int p = 0; p < 2; ++p) {
      v1::SegmentRequest request;
      request.set_model(p == 0 ? "fpn_fashion_fp32" : "fpn_fashion_" + GetParam());
      *request.mutable_image() = image;
      grpc::ClientContext context;
      v1::SegmentResponse response;
      ASSERT_TRUE(stub_->Segment(&context, request, &response).ok());
      const std::string& png = response.mask_png();
      masks[p] = cv::imdecode(std::vector<uchar>(png.begin(), png.end()), cv::IMREAD_UNCHANGED);
      ASSERT_FALSE(masks[p].empty());
    }
    ASSERT_EQ(masks[0].size(), masks[1].size());
    same += cv::countNonZero(masks[0] == masks[1]);
    pixels += masks[0].total();
  }
  EXPECT_GE(static_cast<double>(same) / pixels,
            Thresholds("fpn_fashion_" + GetParam()).at("min_pixel_agreement").get<double>())
      << GetParam();
}

INSTANTIATE_TEST_SUITE_P(Precisions, LowPrecisionTest, ::testing::Values("bf16", "int8"),
                         [](const ::testing::TestParamInfo<std::string>& info) { return info.param; });

}  // namespace
}  // namespace careserve
