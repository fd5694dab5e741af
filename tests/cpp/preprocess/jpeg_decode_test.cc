// The direct libjpeg-turbo decode gives cv::imdecode's pixels (then BGR->RGB) exactly: real
// photos, every JPEG layout OpenCV writes, every reduction, every EXIF orientation in both
// byte orders, malformed EXIF; and it declines (so cv::imdecode decides) where it cannot be
// sure.
#include "server/preprocess/jpeg_decode.h"

#include <cstdint>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "opencv2/imgcodecs.hpp"
#include "opencv2/imgproc.hpp"

namespace careserve {
namespace {

constexpr int64_t kMaxPixels = 40'000'000;
const std::string kSkimageDir = "/usr/lib/python3/dist-packages/skimage/data/";

std::string Encode(const cv::Mat& bgr, std::vector<int> params) {
  std::vector<uchar> bytes;
  EXPECT_TRUE(cv::imencode(".jpg", bgr, bytes, params));
  return std::string(bytes.begin(), bytes.end());
}

bool Decodes(const std::string& bytes, int reduction, int64_t max_pixels, cv::Mat* rgb) {
  return DecodeJpegRgb(bytes, reduction, max_pixels, rgb).outcome == JpegDecodeOutcome::kDecoded;
}

int ReducedFlag(int reduction) {
  switch (reduction) {
    case 2: return cv::IMREAD_REDUCED_COLOR_2;
    case 4: return cv::IMREAD_REDUCED_COLOR_4;
    case 8: return cv::IMREAD_REDUCED_COLOR_8;
    default: return cv::IMREAD_COLOR;
  }
}

// What the server decoded before: cv::imdecode, then BGR -> RGB. Empty if OpenCV fails.
cv::Mat OpenCvRgb(const std::string& bytes, int reduction) {
  const cv::Mat buffer(1, static_cast<int>(bytes.size()), CV_8UC1, const_cast<char*>(bytes.data()));
  const cv::Mat bgr = cv::imdecode(buffer, ReducedFlag(reduction));
  cv::Mat rgb;
  if (!bgr.empty()) cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
  return rgb;
}

// Decodes both ways; the direct path must take the file and match OpenCV exactly.
void ExpectSameAsOpenCv(const std::string& bytes, int reduction, const std::string& what) {
  cv::Mat direct;
  ASSERT_TRUE(Decodes(bytes, reduction, kMaxPixels, &direct)) << what << " 1/" << reduction;
  const cv::Mat expected = OpenCvRgb(bytes, reduction);
  ASSERT_FALSE(expected.empty()) << what;
  ASSERT_EQ(direct.size(), expected.size()) << what << " 1/" << reduction;
  ASSERT_EQ(direct.type(), CV_8UC3) << what;
  EXPECT_EQ(cv::norm(direct, expected, cv::NORM_INF), 0) << what << " 1/" << reduction;
}

cv::Mat Photo(const std::string& name) {
  const cv::Mat photo = cv::imread(kSkimageDir + name, cv::IMREAD_COLOR);
  EXPECT_FALSE(photo.empty()) << name;
  return photo;
}

TEST(JpegDecode, PhotosAtEveryQualityAndReductionMatchOpenCv) {
  for (const char* name : {"astronaut.png", "chelsea.png", "coffee.png"}) {
    const cv::Mat photo = Photo(name);
    cv::Mat small;
    cv::resize(photo, small, cv::Size(224, 224), 0, 0, cv::INTER_AREA);
    for (int quality : {50, 75, 90, 100}) {
      const std::string jpeg = Encode(photo, {cv::IMWRITE_JPEG_QUALITY, quality});
      for (int reduction : {1, 2, 4, 8}) ExpectSameAsOpenCv(jpeg, reduction, std::string(name) + " q" + std::to_string(quality));
      ExpectSameAsOpenCv(Encode(small, {cv::IMWRITE_JPEG_QUALITY, quality}), 1, std::string(name) + " 224");
    }
  }
}

TEST(JpegDecode, ProgressiveRestartsOddSizesAndGreyMatchOpenCv) {
  const cv::Mat photo = Photo("coffee.png");
  ExpectSameAsOpenCv(Encode(photo, {cv::IMWRITE_JPEG_PROGRESSIVE, 1}), 1, "progressive");
  ExpectSameAsOpenCv(Encode(photo, {cv::IMWRITE_JPEG_PROGRESSIVE, 1}), 4, "progressive");
  ExpectSameAsOpenCv(Encode(photo, {cv::IMWRITE_JPEG_OPTIMIZE, 1}), 1, "optimised Huffman tables");
  ExpectSameAsOpenCv(Encode(photo, {cv::IMWRITE_JPEG_RST_INTERVAL, 3}), 1, "restart markers");
  // Different luma and chroma quality: no chroma subsampling (4:4:4).
  ExpectSameAsOpenCv(Encode(photo, {cv::IMWRITE_JPEG_LUMA_QUALITY, 90, cv::IMWRITE_JPEG_CHROMA_QUALITY, 70}), 1, "4:4:4");
  for (const cv::Size size : {cv::Size(1, 1), cv::Size(17, 5), cv::Size(333, 61), cv::Size(5, 301)}) {
    cv::Mat odd;
    cv::resize(photo, odd, size, 0, 0, cv::INTER_AREA);
    for (int reduction : {1, 2, 8}) ExpectSameAsOpenCv(Encode(odd, {}), reduction, "odd size");
  }
  cv::Mat grey;
  cv::cvtColor(photo, grey, cv::COLOR_BGR2GRAY);
  ExpectSameAsOpenCv(Encode(grey, {}), 1, "greyscale");
  ExpectSameAsOpenCv(Encode(grey, {}), 2, "greyscale");
}

// An APP1 segment with a TIFF header in `order` ("II" or "MM") and one IFD0 entry: tag 0x0112
// (orientation), type `type`, count 1, value `value`; `ifd_offset` where IFD0 is said to be.
std::string ExifApp1(const char* order, uint16_t value, uint16_t type = 3, uint32_t ifd_offset = 8) {
  const bool little = order[0] == 'I';
  std::string tiff(order, 2);
  auto put16 = [&](uint16_t v) {
    tiff += static_cast<char>(little ? v & 0xFF : v >> 8);
    tiff += static_cast<char>(little ? v >> 8 : v & 0xFF);
  };
  auto put32 = [&](uint32_t v) {
    if (little) {
      put16(v & 0xFFFF), put16(v >> 16);
    } else {
      put16(v >> 16), put16(v & 0xFFFF);
    }
  };
  put16(42);
  put32(ifd_offset);
  put16(1);
  put16(0x0112), put16(type), put32(1), put16(value), put16(0);
  put32(0);
  const std::string payload = std::string("Exif\0\0", 6) + tiff;
  const size_t length = payload.size() + 2;
  return std::string("\xFF\xE1", 2) + static_cast<char>(length >> 8) + static_cast<char>(length & 0xFF) + payload;
}

std::string WithSegments(const std::string& jpeg, const std::string& segments) {
  return jpeg.substr(0, 2) + segments + jpeg.substr(2);
}

TEST(JpegDecode, EveryExifOrientationIsAppliedAsOpenCvDoes) {
  cv::Mat photo;
  cv::resize(Photo("astronaut.png"), photo, cv::Size(120, 80), 0, 0, cv::INTER_AREA);
  const std::string jpeg = Encode(photo, {cv::IMWRITE_JPEG_QUALITY, 95});
  cv::Mat plain;
  ASSERT_TRUE(Decodes(jpeg, 1, kMaxPixels, &plain));
  for (const char* order : {"II", "MM"}) {
    for (uint16_t orientation = 0; orientation <= 9; ++orientation) {
      const std::string what = std::string(order) + " orientation " + std::to_string(orientation);
      const std::string file = WithSegments(jpeg, ExifApp1(order, orientation));
      for (int reduction : {1, 2}) ExpectSameAsOpenCv(file, reduction, what);
      cv::Mat turned;
      ASSERT_TRUE(Decodes(file, 1, kMaxPixels, &turned));
      // Orientations 5-8 swap width and height; the others (and the invalid 0 and 9) do not.
      const bool swaps = orientation >= 5 && orientation <= 8;
      EXPECT_EQ(turned.cols, swaps ? plain.rows : plain.cols) << what;
      if (orientation == 3) {  // rotated 180 degrees
        cv::Mat back;
        cv::flip(turned, back, -1);
        EXPECT_EQ(cv::norm(back, plain, cv::NORM_INF), 0) << what;
      }
    }
  }
}

TEST(JpegDecode, UnusualAndMalformedExifIsReadAsOpenCvReadsIt) {
  cv::Mat photo;
  cv::resize(Photo("chelsea.png"), photo, cv::Size(64, 48), 0, 0, cv::INTER_AREA);
  const std::string jpeg = Encode(photo, {});
  const std::string xmp_payload = "http://ns.adobe.com/xap/1.0/" + std::string(1, '\0') + "<x:xmpmeta/>";
  const std::string xmp = std::string("\xFF\xE1", 2) + static_cast<char>(0) +
                          static_cast<char>(xmp_payload.size() + 2) + xmp_payload;
  const std::string cases[] = {
      WithSegments(jpeg, ExifApp1("II", 6, /*type=*/4)),                   // orientation stored as LONG
      WithSegments(jpeg, ExifApp1("II", 6, 3, /*ifd_offset=*/4000)),     // IFD0 outside the segment
      WithSegments(jpeg, ExifApp1("IM", 6)),                              // no byte order
      WithSegments(jpeg, xmp + ExifApp1("II", 8)),                        // EXIF in the second APP1
      WithSegments(jpeg, ExifApp1("MM", 6) + ExifApp1("II", 3)),          // two EXIF segments
      WithSegments(jpeg, std::string("\xFF\xE1\x00\x02", 4)),             // an empty APP1
      WithSegments(jpeg, std::string("\xFF\xE1\x00\x08" "Exif\0\0", 10)), // EXIF header only
  };
  for (size_t i = 0; i < std::size(cases); ++i) ExpectSameAsOpenCv(cases[i], 1, "case " + std::to_string(i));
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << path;
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

const std::string kBadInputs = CARE_SOURCE_DIR "/tests/data/bad_inputs/";

TEST(JpegDecode, OddFilesTheServerAcceptsMatchOpenCv) {
  for (const char* name : {"gray.jpg", "300x1.jpg", "64811x1.jpg", "good.jpg"}) {
    for (int reduction : {1, 8}) ExpectSameAsOpenCv(ReadFile(kBadInputs + name), reduction, name);
  }
  // Scan data cut short but ended by an end-of-image marker: libjpeg's own repair, in both.
  const std::string jpeg = Encode(Photo("coffee.png"), {});
  ExpectSameAsOpenCv(jpeg.substr(0, jpeg.size() / 2) + "\xFF\xD9", 1, "half the scan, then EOI");
}

TEST(JpegDecode, DeclinesWhatOnlyOpenCvDecodesOrNobodyDoes) {
  cv::Mat rgb;
  // CMYK: OpenCV converts it to BGR itself; cv::imdecode decodes it.
  const std::string cmyk = ReadFile(kBadInputs + "cmyk.jpg");
  EXPECT_FALSE(Decodes(cmyk, 1, kMaxPixels, &rgb));
  EXPECT_FALSE(OpenCvRgb(cmyk, 1).empty());
  // Errors: cv::imdecode fails too, and the server names the file as undecodable.
  for (const char* name : {"corrupt_huffman_table.jpg", "magic_only.jpg"}) {
    EXPECT_FALSE(Decodes(ReadFile(kBadInputs + name), 1, kMaxPixels, &rgb)) << name;
    EXPECT_TRUE(OpenCvRgb(ReadFile(kBadInputs + name), 1).empty()) << name;
  }
  const std::string jpeg = Encode(Photo("coffee.png"), {});
  EXPECT_FALSE(Decodes(jpeg.substr(0, 100), 1, kMaxPixels, &rgb)) << "cut inside the headers";
  // Cut inside the scan data, no end marker: libjpeg's memory source would fill the rest with
  // grey where OpenCV repeats the last row (the server refuses such files before decoding).
  EXPECT_FALSE(Decodes(jpeg.substr(0, jpeg.size() / 2), 1, kMaxPixels, &rgb)) << "cut in half";
  EXPECT_FALSE(Decodes("not a jpeg", 1, kMaxPixels, &rgb));
  // Junk between SOI and the next marker: libjpeg skips it, OpenCV does not take the file for
  // a JPEG (it wants FF D8 FF).
  EXPECT_FALSE(Decodes(jpeg.substr(0, 2) + std::string(2, '\0') + jpeg.substr(2), 1, kMaxPixels, &rgb));
  EXPECT_FALSE(Decodes(jpeg, 3, kMaxPixels, &rgb)) << "reduced decodes are 1/2, 1/4 and 1/8";
}

TEST(JpegDecode, AFrameOverThePixelLimitIsNeverDecoded) {
  const cv::Mat photo = Photo("coffee.png");
  const std::string jpeg = Encode(photo, {});
  const int64_t pixels = static_cast<int64_t>(photo.cols) * photo.rows;
  cv::Mat rgb;
  // The full size counts, even for a reduced decode.
  const JpegDecodeResult over = DecodeJpegRgb(jpeg, 8, pixels - 1, &rgb);
  EXPECT_EQ(over.outcome, JpegDecodeOutcome::kTooLarge);
  EXPECT_EQ(over.width, photo.cols);
  EXPECT_EQ(over.height, photo.rows);
  EXPECT_TRUE(rgb.empty());
  EXPECT_TRUE(Decodes(jpeg, 1, pixels, &rgb));
}

}  // namespace
}  // namespace careserve
