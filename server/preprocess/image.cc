#include "server/preprocess/image.h"

#include <cstdlib>
#include <cstdint>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "opencv2/imgcodecs.hpp"
#include "opencv2/imgproc.hpp"
#include "server/preprocess/jpeg_decode.h"

namespace careserve {
namespace {

using care::vision::v1::Image;
using care::vision::v1::PixelFormat;
using care::vision::v1::RawImage;

// Sides are at most 2^32 - 1 (PNG) here: their product fits in 64 unsigned bits.
std::string SizeText(int64_t width, int64_t height) {
  return absl::StrCat(width, "x", height, " (", static_cast<uint64_t>(width) * static_cast<uint64_t>(height),
                      " pixels)");
}

// width x height > max_pixels, for positive sides, without overflowing.
bool MorePixels(int64_t width, int64_t height, int64_t max_pixels) { return width > max_pixels / height; }

absl::Status CheckPixels(int64_t width, int64_t height, const DecodeLimits& limits) {
  if (!MorePixels(width, height, limits.max_pixels)) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("image is ", SizeText(width, height), ", more than the limit of ",
                                                 limits.max_pixels, " pixels"));
}

// What a JPEG's segments before its first scan say: the frame size (0 when no frame header
// came first), and whether the scan data is followed by the end-of-image marker. libjpeg
// decodes a truncated file with a warning, filling the missing rows with grey; PIL refuses
// it ("image file is truncated"), and so do we. Segments are skipped by their lengths (an
// EXIF thumbnail has an end marker of its own); inside scan data 0xFF is always followed by
// 0x00 or a restart marker, so the first FF D9 after the first scan ends the image. A file
// that is not laid out as markers is left to libjpeg to refuse (complete = true).
struct JpegHeader {
  int width = 0;
  int height = 0;
  bool complete = true;
};

JpegHeader ScanJpegHeader(const std::string& bytes) {
  JpegHeader header;
  const auto* b = reinterpret_cast<const unsigned char*>(bytes.data());
  const size_t n = bytes.size();
  if (n < 4 || b[0] != 0xFF || b[1] != 0xD8) return header;
  size_t i = 2;
  while (i + 3 < n) {
    if (b[i] != 0xFF) {  // junk between segments: libjpeg skips it (with a warning), so do we
      ++i;
      continue;
    }
    const unsigned char marker = b[i + 1];
    if (marker == 0xFF) {  // fill byte
      ++i;
      continue;
    }
    if (marker == 0x01 || (marker >= 0xD0 && marker <= 0xD8)) {  // no length
      i += 2;
      continue;
    }
    if (marker == 0xD9) return header;
    if (marker == 0xDA) {
      header.complete = absl::string_view(bytes).substr(i + 2).find("\xFF\xD9") != absl::string_view::npos;
      return header;
    }
    const size_t length = (static_cast<size_t>(b[i + 2]) << 8) | b[i + 3];
    const bool frame = marker >= 0xC0 && marker <= 0xCF && marker != 0xC4 && marker != 0xC8 && marker != 0xCC;
    if (frame && header.width == 0) {
      if (i + 9 > n || length < 7) return header;
      header.height = (b[i + 5] << 8) | b[i + 6];
      header.width = (b[i + 7] << 8) | b[i + 8];
      if (header.width == 0 || header.height == 0) header.width = header.height = 0;
    }
    i += 2 + length;
  }
  return header;
}

bool Starts(const std::string& bytes, absl::string_view magic, size_t at = 0) {
  return bytes.size() >= at + magic.size() && absl::string_view(bytes).substr(at, magic.size()) == magic;
}

// The format, from the file's first bytes; empty if none of those served.
const char* SniffFormat(const std::string& bytes) {
  if (Starts(bytes, "\xFF\xD8\xFF")) return "JPEG";
  if (Starts(bytes, "\x89PNG\r\n\x1A\n")) return "PNG";
  if (Starts(bytes, "BM")) return "BMP";
  if (Starts(bytes, "RIFF") && Starts(bytes, "WEBP", 8)) return "WebP";
  if (Starts(bytes, absl::string_view("II*\0", 4)) || Starts(bytes, absl::string_view("MM\0*", 4))) return "TIFF";
  return "";
}

// Formats recognised only to name them in the error.
const char* UnsupportedFormat(const std::string& bytes) {
  if (Starts(bytes, "GIF87a") || Starts(bytes, "GIF89a")) return "GIF";
  if (Starts(bytes, "ftypheic", 4) || Starts(bytes, "ftypheix", 4) || Starts(bytes, "ftypmif1", 4)) return "HEIF";
  if (Starts(bytes, "ftypavif", 4)) return "AVIF";
  if (Starts(bytes, "%PDF")) return "PDF";
  return "";
}

uint32_t Big32(const unsigned char* b) { return (uint32_t{b[0]} << 24) | (b[1] << 16) | (b[2] << 8) | b[3]; }
uint32_t Little16(const unsigned char* b) { return b[0] | (b[1] << 8); }
uint32_t Little24(const unsigned char* b) { return b[0] | (b[1] << 8) | (b[2] << 16); }
int64_t Little32(const unsigned char* b) {
  return static_cast<int32_t>(b[0] | (b[1] << 8) | (b[2] << 16) | (uint32_t{b[3]} << 24));
}

// The size a PNG, JPEG (from `jpeg`, its scanned header), BMP or WebP header declares, read
// before decoding: false if the header is not there to read (OpenCV's pixel cap still
// applies when decoding).
bool DeclaredSize(const std::string& bytes, const char* format, const JpegHeader& jpeg, int64_t* width,
                  int64_t* height) {
  const auto* b = reinterpret_cast<const unsigned char*>(bytes.data());
  const size_t n = bytes.size();
  const absl::string_view f(format);
  if (f == "PNG") {
    if (n < 24 || !Starts(bytes, "IHDR", 12)) return false;
    *width = Big32(b + 16), *height = Big32(b + 20);
    return true;
  }
  if (f == "JPEG") {
    *width = jpeg.width, *height = jpeg.height;
    return jpeg.width > 0;
  }
  if (f == "BMP") {
    if (n < 26) return false;
    const int64_t header = Little32(b + 14);
    if (header == 12) {
      *width = Little16(b + 18), *height = Little16(b + 20);
    } else {
      *width = Little32(b + 18), *height = Little32(b + 22);
    }
    *width = std::abs(*width), *height = std::abs(*height);  // negative height: top-down rows
    return true;
  }
  if (f == "TIFF") {
    // The first directory's ImageWidth (256) and ImageLength (257), SHORT or LONG: the
    // image libtiff (through OpenCV) decodes.
    const bool little = b[0] == 'I';
    auto u16 = [&](size_t at) -> uint32_t { return little ? b[at] | (b[at + 1] << 8) : (b[at] << 8) | b[at + 1]; };
    auto u32 = [&](size_t at) -> uint32_t { return little ? (u16(at + 2) << 16) | u16(at) : (u16(at) << 16) | u16(at + 2); };
    if (n < 8) return false;
    const size_t ifd = u32(4);
    if (ifd + 2 > n) return false;
    const size_t entries = u16(ifd);
    *width = *height = -1;
    for (size_t e = 0; e < entries && ifd + 2 + 12 * (e + 1) <= n; ++e) {
      const size_t at = ifd + 2 + 12 * e;
      const uint32_t tag = u16(at), type = u16(at + 2);
      if ((tag != 256 && tag != 257) || (type != 3 && type != 4)) continue;
      (tag == 256 ? *width : *height) = type == 3 ? u16(at + 8) : u32(at + 8);
    }
    return *width >= 0 && *height >= 0;
  }
  if (f == "WebP") {
    if (Starts(bytes, "VP8X", 12) && n >= 30) {
      *width = Little24(b + 24) + 1, *height = Little24(b + 27) + 1;
      return true;
    }
    if (Starts(bytes, "VP8L", 12) && n >= 25 && b[20] == 0x2F) {
      const uint32_t bits = b[21] | (b[22] << 8) | (b[23] << 16) | (uint32_t{b[24]} << 24);
      *width = (bits & 0x3FFF) + 1, *height = ((bits >> 14) & 0x3FFF) + 1;
      return true;
    }
    if (Starts(bytes, "VP8 ", 12) && n >= 30) {
      *width = Little16(b + 26) & 0x3FFF, *height = Little16(b + 28) & 0x3FFF;
      return true;
    }
  }
  return false;
}

// `flags`: cv::IMREAD_COLOR, or one of the IMREAD_REDUCED_COLOR_* for a reduced decode.
absl::StatusOr<cv::Mat> DecodeEncoded(const std::string& bytes, const DecodeLimits& limits,
                                      int flags = cv::IMREAD_COLOR) {
  if (bytes.empty()) return absl::InvalidArgumentError("image.encoded is empty");
  const char* format = SniffFormat(bytes);
  if (*format == '\0') {
    const char* unsupported = UnsupportedFormat(bytes);
    return absl::InvalidArgumentError(absl::StrCat(
        "image.encoded (", bytes.size(), " bytes) is ",
        *unsupported == '\0' ? "not" : absl::StrCat("a ", unsupported, " file, not"),
        " a JPEG, PNG, BMP, WebP or TIFF file"));
  }
  // A decompression bomb (a small file declaring a huge image) is refused here, before
  // any pixel is allocated.
  const JpegHeader jpeg = absl::string_view(format) == "JPEG" ? ScanJpegHeader(bytes) : JpegHeader{};
  int64_t declared_width = 0, declared_height = 0;
  if (DeclaredSize(bytes, format, jpeg, &declared_width, &declared_height)) {
    if (declared_width < 1 || declared_height < 1) {
      return absl::InvalidArgumentError(absl::StrCat("image.encoded: the ", format, " header declares a ",
                                                     declared_width, "x", declared_height, " image"));
    }
    if (MorePixels(declared_width, declared_height, limits.max_pixels)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "image.encoded: the ", format, " header declares ", SizeText(declared_width, declared_height),
          ", more than the limit of ", limits.max_pixels, " pixels"));
    }
  }
  if (!jpeg.complete) {
    return absl::InvalidArgumentError(absl::StrCat("image.encoded: the JPEG file (", bytes.size(),
                                                   " bytes) is truncated: its scan data has no end-of-image marker"));
  }
  if (absl::string_view(format) == "JPEG") {
    // libjpeg-turbo straight to RGB: cv::imdecode's pixels in half its time. Where that
    // path declines (CMYK, errors, ...), cv::imdecode below decodes or names the error.
    const int reduction = flags == cv::IMREAD_REDUCED_COLOR_8   ? 8
                          : flags == cv::IMREAD_REDUCED_COLOR_4 ? 4
                          : flags == cv::IMREAD_REDUCED_COLOR_2 ? 2
                                                                : 1;
    cv::Mat rgb;
    const JpegDecodeResult result = DecodeJpegRgb(bytes, reduction, limits.max_pixels, &rgb);
    if (result.outcome == JpegDecodeOutcome::kTooLarge) {  // a frame header our scan did not see
      return absl::InvalidArgumentError(absl::StrCat(
          "image.encoded: the JPEG header declares ", SizeText(result.width, result.height),
          ", more than the limit of ", limits.max_pixels, " pixels"));
    }
    if (result.outcome == JpegDecodeOutcome::kDecoded) {
      if (absl::Status s = CheckPixels(rgb.cols, rgb.rows, limits); !s.ok()) return s;
      return rgb;
    }
  }
  const cv::Mat buffer(1, static_cast<int>(bytes.size()), CV_8UC1, const_cast<char*>(bytes.data()));
  cv::Mat bgr;
  try {
    // IMREAD_COLOR (and the reduced ones): 8-bit, 3 channels, EXIF orientation applied.
    bgr = cv::imdecode(buffer, flags);
  } catch (const cv::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("image.encoded: cannot decode the ", format,
                                                   " file (", bytes.size(), " bytes): ", e.what()));
  }
  if (bgr.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "image.encoded: cannot decode the ", format, " file (", bytes.size(),
        " bytes): corrupt or truncated, or larger than the limit of ", limits.max_pixels, " pixels"));
  }
  if (absl::Status s = CheckPixels(bgr.cols, bgr.rows, limits); !s.ok()) return s;
  cv::Mat rgb;
  cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
  return rgb;
}

absl::StatusOr<cv::Mat> DecodeRaw(const RawImage& raw, const DecodeLimits& limits) {
  if (raw.width() <= 0 || raw.height() <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("image.raw: width and height must be positive, got ",
                                                   raw.width(), "x", raw.height()));
  }
  const int64_t pixels = static_cast<int64_t>(raw.width()) * raw.height();
  if (absl::Status s = CheckPixels(raw.width(), raw.height(), limits); !s.ok()) return s;
  int channels = 0;
  switch (raw.format()) {
    case care::vision::v1::RGB8:
    case care::vision::v1::BGR8: channels = 3; break;
    case care::vision::v1::GRAY8: channels = 1; break;
    default:
    {
      const std::string name = care::vision::v1::PixelFormat_Name(raw.format());
      return absl::InvalidArgumentError(absl::StrCat(
          "image.raw.format must be RGB8, BGR8 or GRAY8, got ",
          name.empty() ? absl::StrCat(static_cast<int>(raw.format()), " (not a PixelFormat)")
                       : absl::StrCat(name, " (", static_cast<int>(raw.format()), ")")));
    }
  }
  const int64_t expected = pixels * channels;
  if (static_cast<int64_t>(raw.data().size()) != expected) {
    return absl::InvalidArgumentError(absl::StrCat(
        "image.raw.data has ", raw.data().size(), " bytes; a ", raw.width(), "x", raw.height(), " ",
        care::vision::v1::PixelFormat_Name(raw.format()), " image needs exactly ", expected));
  }
  const cv::Mat view(raw.height(), raw.width(), channels == 3 ? CV_8UC3 : CV_8UC1,
                     const_cast<char*>(raw.data().data()));
  cv::Mat rgb;
  switch (raw.format()) {
    case care::vision::v1::RGB8: rgb = view.clone(); break;
    case care::vision::v1::BGR8: cv::cvtColor(view, rgb, cv::COLOR_BGR2RGB); break;
    default: cv::cvtColor(view, rgb, cv::COLOR_GRAY2RGB); break;
  }
  return rgb;
}

}  // namespace

bool JpegFrameSize(const std::string& bytes, int* width, int* height) {
  const JpegHeader header = ScanJpegHeader(bytes);
  if (header.width == 0) return false;
  *width = header.width, *height = header.height;
  return true;
}

int DecodeReduction(int width, int height, const InputSpec& spec) {
  for (int k : {8, 4, 2}) {
    bool fits = true;
    for (const auto& [w, h] : {std::pair<int, int>{width, height}, std::pair<int, int>{height, width}}) {
      const cv::Size resized = ResizedSize(w, h, spec);
      const int rw = (w + k - 1) / k, rh = (h + k - 1) / k;  // libjpeg rounds up
      fits = fits && rw >= kReducedDecodeMargin * resized.width && rh >= kReducedDecodeMargin * resized.height;
    }
    if (fits) return k;
  }
  return 1;
}

absl::StatusOr<DecodedImage> DecodeForInput(const Image& image, const DecodeLimits& limits, const InputSpec& spec) {
  int width = 0, height = 0;
  if (limits.reduced_jpeg_decode && image.source_case() == Image::kEncoded &&
      JpegFrameSize(image.encoded(), &width, &height)) {
    const int k = DecodeReduction(width, height, spec);
    if (k > 1) {
      const int flag = k == 8 ? cv::IMREAD_REDUCED_COLOR_8 : k == 4 ? cv::IMREAD_REDUCED_COLOR_4 : cv::IMREAD_REDUCED_COLOR_2;
      // The full size counts against the limit (DecodeEncoded checks the header's).
      absl::StatusOr<cv::Mat> rgb = DecodeEncoded(image.encoded(), limits, flag);
      if (!rgb.ok()) return rgb.status();
      // EXIF orientation may have turned the image: which way round tells the source size
      // (a square reduced image is taken as not turned: the sides differ by under k pixels).
      const int rw = (width + k - 1) / k, rh = (height + k - 1) / k;  // libjpeg rounds up
      DecodedImage out;
      if (rgb->cols == rw && rgb->rows == rh) {
        out.source_width = width, out.source_height = height;
      } else if (rgb->cols == rh && rgb->rows == rw) {
        out.source_width = height, out.source_height = width;
      }
      if (out.source_width > 0) {
        out.rgb = std::move(*rgb);
        out.reduction = k;
        return out;
      }
    }
  }
  absl::StatusOr<cv::Mat> rgb = DecodeImage(image, limits);
  if (!rgb.ok()) return rgb.status();
  DecodedImage out;
  out.rgb = std::move(*rgb);
  out.source_width = out.rgb.cols;
  out.source_height = out.rgb.rows;
  return out;
}

absl::StatusOr<cv::Mat> DecodeImage(const Image& image, const DecodeLimits& limits) {
  switch (image.source_case()) {
    case Image::kEncoded: return DecodeEncoded(image.encoded(), limits);
    case Image::kRaw: return DecodeRaw(image.raw(), limits);
    default: return absl::InvalidArgumentError("image is missing: set image.encoded or image.raw");
  }
}

}  // namespace careserve
