// Decoding of every accepted format and pixel layout, and the errors a client sees.
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "opencv2/imgcodecs.hpp"
#include "opencv2/imgproc.hpp"
#include "server/preprocess/image.h"

namespace careserve {
namespace {

using care::vision::v1::Image;

// A small photo-like test pattern (BGR, as OpenCV encodes).
cv::Mat Pattern(int width = 40, int height = 24) {
  cv::Mat bgr(height, width, CV_8UC3);
  for (int y = 0; y < height; ++y)
    for (int x = 0; x < width; ++x) bgr.at<cv::Vec3b>(y, x) = cv::Vec3b(x * 6, y * 10, (x + y) * 3);
  return bgr;
}

Image Encoded(const cv::Mat& mat, const std::string& ext, std::vector<int> params = {}) {
  std::vector<uchar> bytes;
  EXPECT_TRUE(cv::imencode(ext, mat, bytes, params)) << ext;
  Image image;
  image.set_encoded(std::string(bytes.begin(), bytes.end()));
  return image;
}

cv::Mat Rgb(const cv::Mat& bgr) {
  cv::Mat rgb;
  cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
  return rgb;
}

double MaxDiff(const cv::Mat& a, const cv::Mat& b) { return cv::norm(a, b, cv::NORM_INF); }

class LosslessFormat : public ::testing::TestWithParam<const char*> {};

TEST_P(LosslessFormat, DecodesToTheSameRgbPixels) {
  const cv::Mat bgr = Pattern();
  auto rgb = DecodeImage(Encoded(bgr, GetParam()), DecodeLimits{});
  ASSERT_TRUE(rgb.ok()) << rgb.status();
  EXPECT_EQ(rgb->type(), CV_8UC3);
  EXPECT_EQ(MaxDiff(*rgb, Rgb(bgr)), 0);
}

INSTANTIATE_TEST_SUITE_P(Formats, LosslessFormat, ::testing::Values(".png", ".bmp", ".tiff"));

TEST(Decode, JpegAndWebpAreCloseToTheOriginal) {
  const cv::Mat bgr = Pattern();
  for (const char* ext : {".jpg", ".webp"}) {
    auto rgb = DecodeImage(Encoded(bgr, ext, {cv::IMWRITE_JPEG_QUALITY, 100, cv::IMWRITE_WEBP_QUALITY, 100}),
                           DecodeLimits{});
    ASSERT_TRUE(rgb.ok()) << ext << ": " << rgb.status();
    EXPECT_EQ(rgb->size(), bgr.size()) << ext;
    EXPECT_LT(cv::norm(*rgb, Rgb(bgr), cv::NORM_L1) / bgr.total() / 3, 4.0) << ext;
  }
}

TEST(Decode, GrayscaleBecomesThreeEqualChannels) {
  cv::Mat gray;
  cv::cvtColor(Pattern(), gray, cv::COLOR_BGR2GRAY);
  auto rgb = DecodeImage(Encoded(gray, ".png"), DecodeLimits{});
  ASSERT_TRUE(rgb.ok()) << rgb.status();
  std::vector<cv::Mat> channels;
  cv::split(*rgb, channels);
  for (const cv::Mat& c : channels) EXPECT_EQ(MaxDiff(c, gray), 0);
}

TEST(Decode, AlphaIsDroppedLikePilConvertRgb) {
  cv::Mat bgra;
  cv::cvtColor(Pattern(), bgra, cv::COLOR_BGR2BGRA);
  for (int y = 0; y < bgra.rows; ++y) bgra.at<cv::Vec4b>(y, 3)[3] = 0;  // a transparent column
  auto rgb = DecodeImage(Encoded(bgra, ".png"), DecodeLimits{});
  ASSERT_TRUE(rgb.ok()) << rgb.status();
  EXPECT_EQ(MaxDiff(*rgb, Rgb(Pattern())), 0);
}

TEST(Decode, SixteenBitPngIsScaledToEightBit) {
  cv::Mat wide;
  Pattern().convertTo(wide, CV_16UC3, 257.0);  // 0..255 -> 0..65535
  auto rgb = DecodeImage(Encoded(wide, ".png"), DecodeLimits{});
  ASSERT_TRUE(rgb.ok()) << rgb.status();
  EXPECT_EQ(rgb->depth(), CV_8U);
  EXPECT_LE(MaxDiff(*rgb, Rgb(Pattern())), 1);
}

TEST(Decode, ExifOrientationIsApplied) {
  // Stored 32 wide x 48 high with orientation 6; shown 48 x 32 (made by
  // tests/tools/make_preprocess_reference.py).
  std::ifstream in(CARE_SOURCE_DIR "/tests/data/preprocess/exif_rotated.jpg", std::ios::binary);
  Image image;
  image.set_encoded(std::string(std::istreambuf_iterator<char>(in), {}));
  auto rgb = DecodeImage(image, DecodeLimits{});
  ASSERT_TRUE(rgb.ok()) << rgb.status();
  EXPECT_EQ(rgb->cols, 48);
  EXPECT_EQ(rgb->rows, 32);
}

TEST(Decode, RawPixelsInEveryFormat) {
  const cv::Mat bgr = Pattern();
  const cv::Mat rgb = Rgb(bgr);
  cv::Mat gray;
  cv::cvtColor(bgr, gray, cv::COLOR_BGR2GRAY);
  struct Raw {
    care::vision::v1::PixelFormat format;
    cv::Mat pixels;
  };
  for (const Raw& raw : {Raw{care::vision::v1::RGB8, rgb}, Raw{care::vision::v1::BGR8, bgr},
                         Raw{care::vision::v1::GRAY8, gray}}) {
    Image image;
    image.mutable_raw()->set_width(raw.pixels.cols);
    image.mutable_raw()->set_height(raw.pixels.rows);
    image.mutable_raw()->set_format(raw.format);
    image.mutable_raw()->set_data(raw.pixels.data, raw.pixels.total() * raw.pixels.elemSize());
    auto decoded = DecodeImage(image, DecodeLimits{});
    ASSERT_TRUE(decoded.ok()) << decoded.status();
    if (raw.format == care::vision::v1::GRAY8) {
      cv::Mat expected;
      cv::cvtColor(gray, expected, cv::COLOR_GRAY2RGB);
      EXPECT_EQ(MaxDiff(*decoded, expected), 0);
    } else {
      EXPECT_EQ(MaxDiff(*decoded, rgb), 0);
    }
  }
}

// Each bad image is refused with INVALID_ARGUMENT and a message naming the problem.
struct BadImage {
  const char* what;
  Image image;
  const char* message;
};

std::vector<BadImage> BadImages() {
  std::vector<BadImage> cases;
  cases.push_back({"no image", Image(), "image is missing"});
  Image empty;
  empty.set_encoded("");
  cases.push_back({"empty bytes", empty, "image.encoded is empty"});
  Image text;
  text.set_encoded("hello, this is not a picture");
  cases.push_back({"not an image", text, "is not a JPEG, PNG, BMP, WebP or TIFF"});
  Image truncated = Encoded(Pattern(), ".png");
  truncated.set_encoded(truncated.encoded().substr(0, 60));
  cases.push_back({"truncated PNG", truncated, "cannot decode the PNG"});
  Image short_raw;
  short_raw.mutable_raw()->set_width(4);
  short_raw.mutable_raw()->set_height(3);
  short_raw.mutable_raw()->set_format(care::vision::v1::RGB8);
  short_raw.mutable_raw()->set_data(std::string(35, '\0'));
  cases.push_back({"raw too short", short_raw, "has 35 bytes; a 4x3 RGB8 image needs exactly 36"});
  Image no_format = short_raw;
  no_format.mutable_raw()->set_format(care::vision::v1::PIXEL_FORMAT_UNSPECIFIED);
  cases.push_back({"raw without format", no_format, "format must be RGB8, BGR8 or GRAY8"});
  Image zero = short_raw;
  zero.mutable_raw()->set_width(0);
  cases.push_back({"raw zero width", zero, "must be positive, got 0x3"});
  return cases;
}

TEST(Decode, BadImagesAreRefusedWithTheReason) {
  for (const BadImage& bad : BadImages()) {
    auto rgb = DecodeImage(bad.image, DecodeLimits{});
    ASSERT_FALSE(rgb.ok()) << bad.what;
    EXPECT_EQ(rgb.status().code(), absl::StatusCode::kInvalidArgument) << bad.what;
    EXPECT_NE(rgb.status().message().find(bad.message), std::string::npos)
        << bad.what << ": " << rgb.status().message();
  }
}

TEST(Decode, ImagesAboveThePixelLimitAreRefused) {
  DecodeLimits limits;
  limits.max_pixels = 40 * 24 - 1;
  auto encoded = DecodeImage(Encoded(Pattern(), ".png"), limits);
  ASSERT_FALSE(encoded.ok());
  EXPECT_EQ(encoded.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(encoded.status().message().find("more than the limit of 959 pixels"), std::string::npos)
      << encoded.status();
  Image raw;
  raw.mutable_raw()->set_width(40);
  raw.mutable_raw()->set_height(24);
  raw.mutable_raw()->set_format(care::vision::v1::GRAY8);
  raw.mutable_raw()->set_data(std::string(960, '\0'));
  EXPECT_EQ(DecodeImage(raw, limits).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace careserve
