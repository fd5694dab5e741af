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

// libjpeg decodes a truncated JPEG with a warning and grey rows; the service refuses it,
// also when an EXIF-style thumbnail (a whole JPEG with its own end marker) precedes the
// scan. Bytes after the end marker (camera trailers) are fine.
TEST(Decode, TruncatedJpegsAreRefusedEvenWithAThumbnailEnd) {
  const std::string jpeg = Encoded(Pattern(160, 96), ".jpg").encoded();
  const std::string thumbnail = Encoded(Pattern(16, 8), ".jpg").encoded();
  ASSERT_LT(thumbnail.size() + 8, 65535u);
  const size_t length = 2 + 6 + thumbnail.size();
  const std::string app1 = std::string("\xFF\xE1") + static_cast<char>(length >> 8) +
                           static_cast<char>(length & 0xFF) + std::string("Exif\0\0", 6) + thumbnail;
  const std::string with_thumbnail = jpeg.substr(0, 2) + app1 + jpeg.substr(2);
  Image whole, cut, trailer;
  whole.set_encoded(with_thumbnail);
  cut.set_encoded(with_thumbnail.substr(0, with_thumbnail.size() - 200));
  trailer.set_encoded(jpeg + std::string(100, '\x42'));
  ASSERT_TRUE(DecodeImage(whole, DecodeLimits{}).ok());
  EXPECT_TRUE(DecodeImage(trailer, DecodeLimits{}).ok());
  auto refused = DecodeImage(cut, DecodeLimits{});
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("is truncated: its scan data has no end-of-image marker"),
            std::string::npos)
      << refused.status();
}

// A small file whose header declares a huge image is refused from the header.
TEST(Decode, DeclaredSizesAboveTheLimitAreRefusedBeforeDecoding) {
  DecodeLimits limits;
  limits.max_pixels = 159 * 96;
  for (const char* ext : {".png", ".jpg", ".bmp", ".webp"}) {
    auto refused = DecodeImage(Encoded(Pattern(160, 96), ext), limits);
    ASSERT_FALSE(refused.ok()) << ext;
    EXPECT_NE(refused.status().message().find("header declares 160x96 (15360 pixels), more than the limit of 15264"),
              std::string::npos)
        << ext << ": " << refused.status();
  }
}


// --- Reduced-size JPEG decoding (DecodeForInput) ----------------------------------------

const char kSkimageDir[] = "/usr/lib/python3/dist-packages/skimage/data/";

// A photo of the size cameras take: one of skimage's, enlarged (bicubic) and JPEG-encoded.
Image BigPhoto(const std::string& name, int factor) {
  const cv::Mat photo = cv::imread(kSkimageDir + name, cv::IMREAD_COLOR);
  EXPECT_FALSE(photo.empty()) << name;
  cv::Mat big;
  cv::resize(photo, big, cv::Size(), factor, factor, cv::INTER_CUBIC);
  return Encoded(big, ".jpg", {cv::IMWRITE_JPEG_QUALITY, 90});
}

// The JPEG with an EXIF APP1 segment saying orientation 6 (shown turned 90 degrees).
std::string WithOrientation6(const std::string& jpeg) {
  const unsigned char app1[] = {
      0xFF, 0xE1, 0x00, 34, 'E', 'x', 'i', 'f', 0, 0,                  // APP1, length, "Exif\0\0"
      'I', 'I', 0x2A, 0x00, 0x08, 0x00, 0x00, 0x00,                    // TIFF header, IFD at 8
      0x01, 0x00,                                                      // one entry
      0x12, 0x01, 0x03, 0x00, 0x01, 0x00, 0x00, 0x00, 0x06, 0x00, 0x00, 0x00,  // Orientation = 6
      0x00, 0x00, 0x00, 0x00};                                         // no next IFD
  return jpeg.substr(0, 2) + std::string(reinterpret_cast<const char*>(app1), sizeof(app1)) + jpeg.substr(2);
}

InputSpec Classifier224() {
  InputSpec spec;  // center_crop 224, crop_pct 0.875, bicubic
  return spec;
}

InputSpec Letterbox512() {
  InputSpec spec;
  spec.height = spec.width = 512;
  spec.resize = ResizeMode::kLetterbox;
  spec.interpolation = cv::INTER_LINEAR;
  return spec;
}

double MeanAbsDiff(const cv::Mat& a, const cv::Mat& b) {
  return cv::norm(a, b, cv::NORM_L1) / (static_cast<double>(a.total()) * a.channels());
}

TEST(ReducedDecode, FrameSizeComesFromTheJpegHeader) {
  int w = 0, h = 0;
  ASSERT_TRUE(JpegFrameSize(Encoded(Pattern(40, 24), ".jpg").encoded(), &w, &h));
  EXPECT_EQ(w, 40);
  EXPECT_EQ(h, 24);
  ASSERT_TRUE(JpegFrameSize(WithOrientation6(Encoded(Pattern(40, 24), ".jpg").encoded()), &w, &h));
  EXPECT_EQ(w, 40);  // the stored size: orientation is applied later
  EXPECT_FALSE(JpegFrameSize(Encoded(Pattern(), ".png").encoded(), &w, &h));
  EXPECT_FALSE(JpegFrameSize(std::string("\xFF\xD8\xFF\xE0\x00", 5), &w, &h));  // truncated
}

TEST(ReducedDecode, KeepsTwiceThePixelsTheResizeKeeps) {
  // 4000x3000 for 224 center_crop: resized to 341x256; 1/4 gives 1000x750 >= 2x, 1/8 not.
  EXPECT_EQ(DecodeReduction(4000, 3000, Classifier224()), 4);
  // Letterbox 512: 512x384 (or 384x512 turned); 1/2 gives 2000x1500, 1/4 is too small.
  EXPECT_EQ(DecodeReduction(4000, 3000, Letterbox512()), 2);
  EXPECT_EQ(DecodeReduction(640, 480, Classifier224()), 1);
  EXPECT_EQ(DecodeReduction(8000, 8000, Classifier224()), 8);
}

TEST(ReducedDecode, StaysWithinTheResizesOwnToleranceOnPhotos) {
  // Against decoding every pixel: about a grey level on average. And closer than that path
  // to an antialiased downscale (INTER_AREA of the full image, as PIL's resize of the
  // reference pipeline antialiases): DCT scaling averages where the bicubic/bilinear
  // downscale of the full image aliases.
  struct Case {
    std::string photo;
    int factor;
  };
  int reduced = 0;
  for (const Case& c : {Case{"astronaut.png", 4}, Case{"coffee.png", 4}, Case{"chelsea.png", 8},
                        Case{"hubble_deep_field.jpg", 4}}) {
    const Image image = BigPhoto(c.photo, c.factor);
    for (const InputSpec& spec : {Classifier224(), Letterbox512()}) {
      SCOPED_TRACE(c.photo + (spec.resize == ResizeMode::kLetterbox ? " letterbox 512" : " center_crop 224"));
      auto fast = DecodeForInput(image, DecodeLimits{}, spec);
      ASSERT_TRUE(fast.ok()) << fast.status();
      DecodeLimits full_limits;
      full_limits.reduced_jpeg_decode = false;
      auto full = DecodeForInput(image, full_limits, spec);
      ASSERT_TRUE(full.ok()) << full.status();
      EXPECT_EQ(full->reduction, 1);
      EXPECT_GT(fast->reduction, 1);
      reduced += fast->reduction > 1;
      EXPECT_EQ(fast->source_width, full->rgb.cols);
      EXPECT_EQ(fast->source_height, full->rgb.rows);

      const ResizedImage a = ResizeForInput(fast->rgb, spec, fast->source_width, fast->source_height);
      const ResizedImage b = ResizeForInput(full->rgb, spec);
      InputSpec area = spec;
      area.interpolation = cv::INTER_AREA;
      const ResizedImage antialiased = ResizeForInput(full->rgb, area);
      // The same geometry: sizes and the mapping back to the image.
      ASSERT_EQ(a.pixels.size(), b.pixels.size());
      EXPECT_EQ(a.source_width, b.source_width);
      EXPECT_EQ(a.source_height, b.source_height);
      EXPECT_DOUBLE_EQ(a.scale_x, b.scale_x);
      EXPECT_DOUBLE_EQ(a.scale_y, b.scale_y);
      const double to_full = MeanAbsDiff(a.pixels, b.pixels);
      EXPECT_LT(to_full, 1.5);
      EXPECT_LE(MeanAbsDiff(a.pixels, antialiased.pixels), MeanAbsDiff(b.pixels, antialiased.pixels));
    }
  }
  EXPECT_EQ(reduced, 8);
}

TEST(ReducedDecode, ExifTurnedJpegKeepsItsShownSize) {
  // 2400x1600 stored, orientation 6: shown 1600x2400.
  Image image = BigPhoto("coffee.png", 4);
  image.set_encoded(WithOrientation6(image.encoded()));
  auto fast = DecodeForInput(image, DecodeLimits{}, Classifier224());
  ASSERT_TRUE(fast.ok()) << fast.status();
  EXPECT_GT(fast->reduction, 1);
  EXPECT_EQ(fast->source_width, 1600);
  EXPECT_EQ(fast->source_height, 2400);
  EXPECT_LT(fast->rgb.cols, fast->rgb.rows);
  auto full = DecodeImage(image, DecodeLimits{});
  ASSERT_TRUE(full.ok());
  const ResizedImage a = ResizeForInput(fast->rgb, Classifier224(), fast->source_width, fast->source_height);
  const ResizedImage b = ResizeForInput(*full, Classifier224());
  EXPECT_LT(MeanAbsDiff(a.pixels, b.pixels), 1.5);
}

TEST(ReducedDecode, OnlyForJpegsAndOnlyWhenEnabled) {
  cv::Mat big;
  cv::resize(Pattern(), big, cv::Size(4000, 2400), 0, 0, cv::INTER_NEAREST);
  auto png = DecodeForInput(Encoded(big, ".png"), DecodeLimits{}, Classifier224());
  ASSERT_TRUE(png.ok());
  EXPECT_EQ(png->reduction, 1);
  EXPECT_EQ(png->rgb.cols, 4000);
  DecodeLimits off;
  off.reduced_jpeg_decode = false;
  auto jpeg = DecodeForInput(Encoded(big, ".jpg"), off, Classifier224());
  ASSERT_TRUE(jpeg.ok());
  EXPECT_EQ(jpeg->reduction, 1);
  EXPECT_EQ(jpeg->rgb.cols, 4000);
}

TEST(ReducedDecode, ACorruptLargeJpegIsRefusedWithTheReason) {
  // A real frame header (so a reduced decode is chosen), then no usable scan.
  cv::Mat big;
  cv::resize(Pattern(), big, cv::Size(4000, 2400), 0, 0, cv::INTER_NEAREST);
  std::string bytes = Encoded(big, ".jpg").encoded();
  bytes = bytes.substr(0, bytes.find("\xFF\xDA")) + std::string(64, '\x17');
  ASSERT_EQ(DecodeReduction(4000, 2400, Classifier224()), 4);
  Image image;
  image.set_encoded(bytes);
  auto decoded = DecodeForInput(image, DecodeLimits{}, Classifier224());
  ASSERT_FALSE(decoded.ok());
  EXPECT_EQ(decoded.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(decoded.status().message().find("cannot decode the JPEG file"), std::string::npos) << decoded.status();
}

TEST(ReducedDecode, ThePixelLimitStillApplies) {
  cv::Mat big;
  cv::resize(Pattern(), big, cv::Size(4000, 2400), 0, 0, cv::INTER_NEAREST);
  DecodeLimits limits;
  limits.max_pixels = 4000 * 2400 - 1;
  auto decoded = DecodeForInput(Encoded(big, ".jpg"), limits, Classifier224());
  ASSERT_FALSE(decoded.ok());
  EXPECT_EQ(decoded.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(decoded.status().message().find("4000x2400 (9600000 pixels), more than the limit of 9599999"),
            std::string::npos)
      << decoded.status();
}

}  // namespace
}  // namespace careserve
