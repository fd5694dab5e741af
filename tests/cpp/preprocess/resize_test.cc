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

// A smooth, non-constant RGB test picture.
cv::Mat Waves(int w, int h) {
  cv::Mat rgb(h, w, CV_8UC3);
  for (int y = 0; y < h; ++y) {
    for (int x = 0; x < w; ++x) {
      rgb.at<cv::Vec3b>(y, x) = cv::Vec3b(cv::saturate_cast<uint8_t>(128 + 100 * std::sin(x * 0.05 + y * 0.02)),
                                          cv::saturate_cast<uint8_t>(128 + 100 * std::cos(x * 0.03 - y * 0.07)),
                                          cv::saturate_cast<uint8_t>((x * 7 + y * 3) % 256 / 2 + 64));
    }
  }
  return rgb;
}

cv::Mat FullResizeAndCut(const cv::Mat& rgb, const InputSpec& spec) {
  const cv::Size size = ResizedSize(rgb.cols, rgb.rows, spec);
  cv::Mat resized;
  cv::resize(rgb, resized, size, 0, 0, spec.interpolation);
  const int top = static_cast<int>(std::nearbyint((size.height - spec.height) / 2.0));
  const int left = static_cast<int>(std::nearbyint((size.width - spec.width) / 2.0));
  return resized(cv::Rect(left, top, spec.width, spec.height)).clone();
}

TEST(CenterCrop, BicubicIsTheFullResizeBitForBitAtAnyAspectRatio) {
  InputSpec spec;
  spec.height = spec.width = 64;  // covers 73x73
  ASSERT_EQ(spec.interpolation, cv::INTER_CUBIC);
  for (const cv::Size size : {cv::Size(1200, 100), cv::Size(1400, 100), cv::Size(90, 2000), cv::Size(3000, 37),
                              cv::Size(50, 40), cv::Size(64, 64), cv::Size(73, 80)}) {
    const cv::Mat rgb = Waves(size.width, size.height);
    const ResizedImage r = ResizeForInput(rgb, spec);
    ASSERT_EQ(r.pixels.size(), cv::Size(64, 64));
    EXPECT_EQ(cv::norm(r.pixels, FullResizeAndCut(rgb, spec), cv::NORM_INF), 0) << size;
  }
}

TEST(CenterCrop, OtherInterpolationsUpToTwelveToOneAreTheFullResizeBitForBit) {
  InputSpec spec;
  spec.height = spec.width = 64;  // covers 73x73
  spec.interpolation = cv::INTER_LINEAR;
  const cv::Mat rgb = Waves(1200, 100);  // 12:1 -> 876x73, under 16x the input's area
  const ResizedImage r = ResizeForInput(rgb, spec);
  EXPECT_EQ(cv::norm(r.pixels, FullResizeAndCut(rgb, spec), cv::NORM_INF), 0);
}

TEST(CenterCrop, OtherInterpolationsOfElongatedImagesComputeOnlyTheCutWithinTheResizesTolerance) {
  InputSpec spec;
  spec.height = spec.width = 64;
  spec.interpolation = cv::INTER_LINEAR;
  for (const cv::Size size : {cv::Size(1400, 100), cv::Size(90, 2000), cv::Size(3000, 37)}) {
    const cv::Mat rgb = Waves(size.width, size.height);
    const ResizedImage r = ResizeForInput(rgb, spec);
    ASSERT_EQ(r.pixels.size(), cv::Size(64, 64));
    const cv::Mat full = FullResizeAndCut(rgb, spec);
    cv::Mat diff;
    cv::absdiff(r.pixels, full, diff);
    EXPECT_LE(cv::norm(diff, cv::NORM_INF), 3) << size;
    EXPECT_LE(cv::mean(diff)[0], 0.5) << size;
    EXPECT_DOUBLE_EQ(r.scale_x, static_cast<double>(ResizedSize(size.width, size.height, spec).width) / size.width);
  }
}

TEST(CenterCrop, AOnePixelHighPanoramaDoesNotBlowUp) {
  // The fuzzer's 917-byte JPEG decodes to 64811x1; at 224x224 the full resize would be
  // 16.6M x 256 pixels (12 GB).
  cv::Mat rgb(1, 64811, CV_8UC3);
  for (int x = 0; x < rgb.cols; ++x) rgb.at<cv::Vec3b>(0, x) = cv::Vec3b(x % 251, (x / 7) % 256, 200);
  InputSpec spec;
  const ResizedImage r = ResizeForInput(rgb, spec);
  ASSERT_EQ(r.pixels.size(), cv::Size(224, 224));
  for (int y = 1; y < 224; ++y) EXPECT_EQ(cv::norm(r.pixels.row(y), r.pixels.row(0), cv::NORM_INF), 0);
  // Centre of the cut: source x = 64811 / 2 - 0.5, between pixels 32404 and 32405.
  const cv::Vec3b centre = r.pixels.at<cv::Vec3b>(0, 112);
  EXPECT_NEAR(centre[2], 200, 1);
  EXPECT_NEAR(centre[1], (32404 / 7) % 256, 2);
}

// NormalizeInto (16 pixels at a time where the CPU allows) gives, bit for bit, the float
// formula value * (1 / (255 std)) - mean / std in every position, at every width (the
// vector part and the scalar tail) and with the unused letterbox area zeroed.
TEST(Normalize, EveryPixelIsTheFloatFormulaExactly) {
  cv::RNG rng(7);
  for (const cv::Size size : {cv::Size(224, 3), cv::Size(1, 1), cv::Size(15, 2), cv::Size(16, 2), cv::Size(17, 5),
                              cv::Size(47, 3), cv::Size(64, 64), cv::Size(96, 40)}) {
    InputSpec spec;
    spec.width = size.width + (size.height % 2);  // sometimes a column of letterbox padding
    spec.height = size.height + 1;                 // and a row
    ResizedImage image;
    image.pixels.create(size, CV_8UC3);
    rng.fill(image.pixels, cv::RNG::UNIFORM, 0, 256);
    std::vector<float> chw(3 * spec.height * spec.width, std::nanf(""));
    NormalizeInto(image, spec, chw.data());
    for (int c = 0; c < 3; ++c) {
      const float scale = 1.0f / (255.0f * spec.std[c]), shift = -spec.mean[c] / spec.std[c];
      for (int y = 0; y < spec.height; ++y) {
        for (int x = 0; x < spec.width; ++x) {
          const float got = chw[(static_cast<size_t>(c) * spec.height + y) * spec.width + x];
          const bool inside = y < size.height && x < size.width;
          const float want = inside ? static_cast<float>(image.pixels.at<cv::Vec3b>(y, x)[c]) * scale + shift : 0.0f;
          ASSERT_EQ(std::memcmp(&got, &want, sizeof got), 0)
              << size << " channel " << c << " at " << x << "," << y << ": " << got << " vs " << want;
        }
      }
    }
  }
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
