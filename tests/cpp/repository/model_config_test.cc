// config.json: the task's defaults fill what is left out, and every bad value is refused
// with a message naming the field.
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "server/repository/model_config.h"

namespace careserve {
namespace {

std::vector<std::string> Labels(int n) {
  std::vector<std::string> labels;
  for (int i = 0; i < n; ++i) labels.push_back("class " + std::to_string(i));
  return labels;
}

TEST(ModelConfig, ClassificationDefaults) {
  auto spec = ParseModelSpec(R"({"name": "m", "task": "classification", "input": {"height": 64, "width": 48}})",
                             Labels(10));
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->num_classes, 10);
  EXPECT_EQ(spec->input.resize, ResizeMode::kCenterCrop);
  EXPECT_EQ(spec->input.interpolation, cv::INTER_CUBIC);
  EXPECT_DOUBLE_EQ(spec->input.crop_pct, 0.875);
  EXPECT_FLOAT_EQ(spec->input.mean[0], 0.485f);
  EXPECT_EQ(spec->batching.max_batch_size, 16);
  EXPECT_EQ(spec->batching.max_queue_delay, absl::Microseconds(2000));
  EXPECT_EQ(spec->batching.queue_capacity, 256);
  EXPECT_EQ(spec->batching.instances, 0);  // every engine thread
  EXPECT_EQ(spec->weights_source, "unknown");
  EXPECT_EQ(spec->precision, "");  // the graph's own weight type is then reported
  EXPECT_FALSE(spec->is_default);
}

TEST(ModelConfig, PrecisionIsOneTheServerKnows) {
  const std::string head = R"({"name": "m", "task": "classification", "input": {"height": 64, "width": 48}, )";
  auto bf16 = ParseModelSpec(head + R"("precision": "bf16"})", Labels(10));
  ASSERT_TRUE(bf16.ok()) << bf16.status();
  EXPECT_EQ(bf16->precision, "bf16");
  auto bad = ParseModelSpec(head + R"("precision": "fp8"})", Labels(10));
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().message(), "precision must be \"fp32\", \"bf16\" or \"int8\", got \"fp8\"");
}

TEST(ModelConfig, DenseDefaultsAndExplicitValues) {
  auto spec = ParseModelSpec(R"({
      "name": "d", "task": "detection", "num_classes": 3, "default": true,
      "weights": {"source": "random", "seed": 0},
      "input": {"height": 512, "width": 640, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
      "batching": {"max_batch_size": 4, "max_queue_delay_us": 500, "queue_capacity": 8, "instances": 2},
      "postprocess": {"score_threshold": 0.3},
      "export": {"anything": ["the server ignores"]}})",
                             Labels(3));
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->task, Task::kDetection);
  EXPECT_EQ(spec->input.resize, ResizeMode::kLetterbox);
  EXPECT_EQ(spec->input.interpolation, cv::INTER_LINEAR);
  EXPECT_FLOAT_EQ(spec->input.std[2], 0.25f);
  EXPECT_EQ(spec->batching.max_batch_size, 4);
  EXPECT_EQ(spec->batching.max_queue_delay, absl::Microseconds(500));
  EXPECT_EQ(spec->batching.instances, 2);
  EXPECT_FLOAT_EQ(spec->postprocess.score_threshold, 0.3f);
  EXPECT_FLOAT_EQ(spec->postprocess.iou_threshold, 0.5f);
  EXPECT_EQ(spec->postprocess.max_detections, 100);
  EXPECT_EQ(spec->weights_source, "random");
  EXPECT_TRUE(spec->is_default);
}

TEST(ModelConfig, BadValuesNameTheField) {
  const std::string input = R"("input": {"height": 64, "width": 64})";
  struct Bad {
    std::string json;
    const char* message;
  };
  const std::vector<Bad> cases = {
      {"{not json", "not valid"},
      {R"({"task": "classification", )" + input + "}", "name is required"},
      {R"({"name": "m", "task": "regression", )" + input + "}", "task must be classification, detection, segmentation or instance_segmentation"},
      {R"({"name": "m", "task": "classification"})", "input.height and input.width are required"},
      {R"({"name": "m", "task": "classification", "num_classes": 5, )" + input + "}",
       "num_classes is 5 but the labels file has 10 labels"},
      {R"({"name": "m", "task": "classification", "input": {"height": 64, "width": 64, "resize": "stretch"}})",
       "input.resize must be"},
      {R"({"name": "m", "task": "segmentation", "input": {"height": 64, "width": 64, "resize": "center_crop"}})",
       "input.resize must be \"letterbox\" for a segmentation model"},
      {R"({"name": "m", "task": "classification", "input": {"height": 64, "width": 64, "mean": [0.5]}})",
       "input.mean and input.std need 3 values each"},
      {R"({"name": "m", "task": "classification", "input": {"height": 64, "width": 64, "crop_pct": 0}})",
       "input.crop_pct must be in (0, 1]"},
      {R"({"name": "m", "task": "classification", "batching": {"max_batch_size": 0}, )" + input + "}",
       "batching.max_batch_size must be >= 1, got 0"},
      {R"({"name": "m", "task": "classification", "batching": {"queue_capacity": -1}, )" + input + "}",
       "batching.queue_capacity must be >= 1"},
      {R"({"name": "m", "task": "detection", "postprocess": {"iou_threshold": 1.5}, )" + input + "}",
       "postprocess.iou_threshold must be in (0, 1]"},
      {R"({"name": "m", "task": "classification", "weights": {"source": "magic"}, )" + input + "}",
       "weights.source must be"},
      {R"({"name": "m", "task": "classification", "input": {"height": "tall", "width": 64}})", "not valid"},
  };
  for (const Bad& bad : cases) {
    auto spec = ParseModelSpec(bad.json, Labels(10));
    ASSERT_FALSE(spec.ok()) << bad.json;
    EXPECT_EQ(spec.status().code(), absl::StatusCode::kInvalidArgument) << bad.json;
    EXPECT_NE(spec.status().message().find(bad.message), std::string::npos)
        << bad.json << "\n  -> " << spec.status().message();
  }
}

class ModelDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::path(::testing::TempDir()) / "model_config_test" / "my_model";
    std::filesystem::remove_all(dir_.parent_path());
    std::filesystem::create_directories(dir_);
  }
  void Write(const std::string& name, const std::string& text) { std::ofstream(dir_ / name) << text; }
  std::filesystem::path dir_;
};

TEST_F(ModelDirTest, ReadsConfigAndLabels) {
  Write("config.json", R"({"name": "my_model", "task": "classification", "input": {"height": 32, "width": 32}})");
  Write("labels.txt", "cat\ndog\r\nbird\n\n");
  auto spec = ReadModelSpec(dir_.string());
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->labels, (std::vector<std::string>{"cat", "dog", "bird"}));
  EXPECT_EQ(spec->num_classes, 3);
}

TEST_F(ModelDirTest, NameMustMatchTheDirectory) {
  Write("config.json", R"({"name": "other", "task": "classification", "input": {"height": 32, "width": 32}})");
  Write("labels.txt", "cat\n");
  auto spec = ReadModelSpec(dir_.string());
  ASSERT_FALSE(spec.ok());
  EXPECT_NE(spec.status().message().find("differs from the model's directory name \"my_model\""), std::string::npos)
      << spec.status();
}

TEST_F(ModelDirTest, EmptyLabelLineAndMissingFilesAreReported) {
  Write("config.json", R"({"name": "my_model", "task": "classification", "input": {"height": 32, "width": 32}})");
  Write("labels.txt", "cat\n\ndog\n");
  auto spec = ReadModelSpec(dir_.string());
  ASSERT_FALSE(spec.ok());
  EXPECT_NE(spec.status().message().find("line 2 is empty"), std::string::npos) << spec.status();
  std::filesystem::remove(dir_ / "labels.txt");
  spec = ReadModelSpec(dir_.string());
  ASSERT_FALSE(spec.ok());
  EXPECT_NE(spec.status().message().find("labels.txt"), std::string::npos) << spec.status();
  Write("config.json",
        R"({"name": "my_model", "task": "classification", "labels": "../x", "input": {"height": 32, "width": 32}})");
  spec = ReadModelSpec(dir_.string());
  EXPECT_NE(spec.status().message().find("labels must name a file inside the model directory"), std::string::npos)
      << spec.status();
}

}  // namespace
}  // namespace careserve
