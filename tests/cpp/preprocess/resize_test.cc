// The server's decode -> resize -> normalise pipeline against reference inputs computed
// independently in Python/OpenCV (tests/tools/make_preprocess_reference.py, outputs in
// tests/data/preprocess/).
#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"
#include "gtest/gtest.h"
#include "server/preprocess/image.h"
#include "server/preprocess/resize.h"

namespace careserve {
namespace {

const char kDataDir[] = CARE_SOURCE_DIR "/tests/data/preprocess/";
const char kSkimageDir[] = "/usr/lib/python3/dist-packages/skimage/data/";

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in) << "cannot read " << path;
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

struct Case {
  std::string name;
  google::protobuf::Struct meta;
  std::vector<float> expected;
};

Case LoadCase(const std::string& name) {
  Case c;
  c.name = name;
  EXPECT_TRUE(google::protobuf::util::JsonStringToMessage(ReadFile(kDataDir + name + ".json"), &c.meta).ok());
  const std::string bytes = ReadFile(kDataDir + name + ".f32");
  c.expected.resize(bytes.size() / sizeof(float));
  std::memcpy(c.expected.data(), bytes.data(), bytes.size());
  return c;
}

double Number(const Case& c, const std::string& key) { return c.meta.fields().at(key).number_value(); }
std::string Text(const Case& c, const std::string& key) { return c.meta.fields().at(key).string_value(); }

InputSpec SpecOf(const Case& c) {
  InputSpec spec;
  spec.height = static_cast<int>(Number(c, "height"));
  spec.width = static_cast<int>(Number(c, "width"));
  spec.resize = *ParseResizeMode(Text(c, "resize"));
  spec.crop_pct = Number(c, "crop_pct");
  spec.interpolation = *ParseInterpolation(Text(c, "interpolation"));
  return spec;
}

class ReferenceTest : public ::testing::TestWithParam<const char*> {};

TEST_P(ReferenceTest, MatchesPythonOpenCvReference) {
  const Case c = LoadCase(GetParam());
  const std::string source = Text(c, "source");
  care::vision::v1::Image image;
  image.set_encoded(ReadFile((source == "exif_rotated.jpg" ? kDataDir : kSkimageDir) + source));
  absl::StatusOr<cv::Mat> rgb = DecodeImage(image, DecodeLimits{});
  ASSERT_TRUE(rgb.ok()) << rgb.status();
  EXPECT_EQ(rgb->cols, Number(c, "source_width"));
  EXPECT_EQ(rgb->rows, Number(c, "source_height"));

  const InputSpec spec = SpecOf(c);
  ASSERT_TRUE(spec.Validate().ok());
  const ResizedImage resized = ResizeForInput(*rgb, spec);
  if (spec.resize == ResizeMode::kLetterbox) {
    EXPECT_EQ(resized.pixels.rows, Number(c, "resized_height"));
    EXPECT_EQ(resized.pixels.cols, Number(c, "resized_width"));
  } else {
    EXPECT_EQ(resized.pixels.rows, spec.height);
    EXPECT_EQ(resized.pixels.cols, spec.width);
  }
  ASSERT_EQ(c.expected.size(), static_cast<size_t>(3 * spec.height * spec.width));
  std::vector<float> chw(c.expected.size(), std::nanf(""));  // garbage the letterbox must overwrite
  NormalizeInto(resized, spec, chw.data());
  double max_diff = 0;
  size_t worst = 0;
  for (size_t i = 0; i < chw.size(); ++i) {
    const double diff = std::abs(static_cast<double>(chw[i]) - c.expected[i]);
    if (!(diff <= max_diff)) {
      max_diff = std::isnan(diff) ? INFINITY : diff;
      worst = i;
    }
  }
  // The same uint8 pixels normalised in float32 vs float64: a few ulps.
  EXPECT_LT(max_diff, 2e-6) << "at flat index " << worst << ": " << chw[worst] << " vs " << c.expected[worst];
}

INSTANTIATE_TEST_SUITE_P(Cases, ReferenceTest,
                         ::testing::Values("chelsea_center_crop_64", "astronaut_center_crop_56x80",
                                           "coffee_center_crop_96x48_bilinear", "rotated_center_crop_upscale_64",
                                           "chelsea_letterbox_64x96", "astronaut_letterbox_96x64",
                                           "rotated_letterbox_upscale_96"));

TEST(Letterbox, ScaleMapsNetworkPixelsBackToTheImage) {
  cv::Mat rgb(300, 451, CV_8UC3, cv::Scalar(10, 20, 30));
  InputSpec spec;
  spec.height = 64;
  spec.width = 96;
  spec.resize = ResizeMode::kLetterbox;
  const ResizedImage r = ResizeForInput(rgb, spec);
  EXPECT_DOUBLE_EQ(r.scale_x, 96.0 / 451);
  EXPECT_DOUBLE_EQ(r.scale_y, 96.0 / 451);
  EXPECT_EQ(r.pixels.cols, 96);
  EXPECT_EQ(r.pixels.rows, 64);  // round(300 * 96 / 451) = 64
  EXPECT_EQ(r.source_width, 451);
  EXPECT_EQ(r.source_height, 300);
}

TEST(InputSpec, ValidateNamesTheField) {
  InputSpec spec;
  spec.crop_pct = 1.5;
  EXPECT_NE(spec.Validate().message().find("crop_pct"), std::string::npos);
  spec = InputSpec();
  spec.std[1] = 0;
  EXPECT_NE(spec.Validate().message().find("input.std"), std::string::npos);
  spec = InputSpec();
  spec.height = 0;
  EXPECT_NE(spec.Validate().message().find("input.height"), std::string::npos);
  EXPECT_FALSE(ParseInterpolation("lanczos").ok());
  EXPECT_FALSE(ParseResizeMode("stretch").ok());
}

}  // namespace
}  // namespace careserve
