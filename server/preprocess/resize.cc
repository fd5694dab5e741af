#include "server/preprocess/resize.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "absl/strings/str_cat.h"
#include "opencv2/imgproc.hpp"
#include "server/preprocess/cubic_cut.h"

namespace careserve {

absl::Status InputSpec::Validate() const {
  if (height < 1 || width < 1 || height > 8192 || width > 8192) {
    return absl::InvalidArgumentError(absl::StrCat("input.height and input.width must be in [1, 8192], got ",
                                                   height, "x", width));
  }
  if (!(crop_pct > 0.0 && crop_pct <= 1.0)) {
    return absl::InvalidArgumentError(absl::StrCat("input.crop_pct must be in (0, 1], got ", crop_pct));
  }
  for (int c = 0; c < 3; ++c) {
    if (!(std[c] > 0.0f) || !std::isfinite(std[c]) || !std::isfinite(mean[c])) {
      return absl::InvalidArgumentError(absl::StrCat("input.std must be positive and input.mean finite (channel ",
                                                     c, ": mean ", mean[c], ", std ", std[c], ")"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<ResizeMode> ParseResizeMode(const std::string& name) {
  if (name == "center_crop") return ResizeMode::kCenterCrop;
  if (name == "letterbox") return ResizeMode::kLetterbox;
  return absl::InvalidArgumentError(
      absl::StrCat("input.resize must be \"center_crop\" or \"letterbox\", got \"", name, "\""));
}

absl::StatusOr<int> ParseInterpolation(const std::string& name) {
  if (name == "bicubic") return static_cast<int>(cv::INTER_CUBIC);
  if (name == "bilinear") return static_cast<int>(cv::INTER_LINEAR);
  if (name == "nearest") return static_cast<int>(cv::INTER_NEAREST);
  if (name == "area") return static_cast<int>(cv::INTER_AREA);
  return absl::InvalidArgumentError(absl::StrCat(
      "input.interpolation must be bicubic, bilinear, nearest or area, got \"", name, "\""));
}

namespace {

// The size a w x h image is resized to before center_crop's cut.
cv::Size CoverSize(int w, int h, const InputSpec& spec) {
  const int cover_h = static_cast<int>(std::floor(spec.height / spec.crop_pct));
  const int cover_w = static_cast<int>(std::floor(spec.width / spec.crop_pct));
  // The side that binds gets exactly its cover size; the other keeps the aspect ratio,
  // truncated (torchvision's Resize(int)), and never less than its own cover size.
  int new_h, new_w;
  if (static_cast<double>(cover_h) / h >= static_cast<double>(cover_w) / w) {
    new_h = cover_h;
    new_w = std::max(cover_w, static_cast<int>(static_cast<double>(w) * cover_h / h));
  } else {
    new_w = cover_w;
    new_h = std::max(cover_h, static_cast<int>(static_cast<double>(h) * cover_w / w));
  }
  return cv::Size(new_w, new_h);
}

double LetterboxScale(int w, int h, const InputSpec& spec) {
  return std::min(static_cast<double>(spec.height) / h, static_cast<double>(spec.width) / w);
}

cv::Size LetterboxSize(int w, int h, const InputSpec& spec) {
  const double scale = LetterboxScale(w, h, spec);
  return cv::Size(std::clamp(static_cast<int>(std::lround(w * scale)), 1, spec.width),
                  std::clamp(static_cast<int>(std::lround(h * scale)), 1, spec.height));
}

// Other interpolations than bicubic: up to this many times the network input's area,
// center_crop resizes the whole image and cuts (bit for bit the reference preprocessing);
// beyond, it computes only the cut.
// 16: every aspect ratio up to about 12:1 at crop_pct 0.875.
constexpr int64_t kMaxCoverArea = 16;

// `rgb` shows the w x h source image, possibly decoded at a reduced size.
ResizedImage CenterCrop(const cv::Mat& rgb, const InputSpec& spec, int w, int h) {
  const cv::Size size = CoverSize(w, h, spec);
  const int new_w = size.width, new_h = size.height;
  // torchvision's CenterCrop: int(round((size - crop) / 2.0)), Python rounding (half to even).
  const int top = static_cast<int>(std::nearbyint((new_h - spec.height) / 2.0));
  const int left = static_cast<int>(std::nearbyint((new_w - spec.width) / 2.0));
  ResizedImage out;
  if (new_w == rgb.cols && new_h == rgb.rows) {
    out.pixels = rgb(cv::Rect(left, top, spec.width, spec.height));
  } else if (spec.interpolation == cv::INTER_CUBIC && rgb.depth() == CV_8U) {
    // Bicubic (the default): only the cut, the same bytes as the full resize and cut, at any
    // aspect ratio (cubic_cut.h); 224x224 to 256x256 and cut: 0.14 ms against 0.33.
    ResizeCubicCut(rgb, size, cv::Rect(left, top, spec.width, spec.height), &out.pixels);
  } else if (static_cast<int64_t>(new_w) * new_h <= kMaxCoverArea * spec.width * spec.height) {
    cv::Mat resized;
    cv::resize(rgb, resized, cv::Size(new_w, new_h), 0, 0, spec.interpolation);
    out.pixels = resized(cv::Rect(left, top, spec.width, spec.height));
  } else {
    // A very elongated image (a 917-byte 64811x1 JPEG would cover 16.6M x 256 pixels, 12
    // GB, at 224x224): the cut alone is computed, with the resize's own sampling
    // positions (pixel centres: (x + 0.5) * source/resized - 0.5, edges replicated).
    // warpAffine samples at 1/32 pixel and interpolates in fixed point, so pixels can
    // differ from the full resize's by a few levels; area becomes bilinear.
    const double sx = static_cast<double>(rgb.cols) / new_w, sy = static_cast<double>(rgb.rows) / new_h;
    const double x0 = (left + 0.5) * sx - 0.5, y0 = (top + 0.5) * sy - 0.5;
    // The source pixels the cut samples, with the cubic kernel's reach and one more: so
    // that only true image edges are replicated (and warpAffine takes < 32767 pixels).
    const int x_begin = std::max(0, static_cast<int>(std::floor(x0)) - 3);
    const int x_end = std::min(rgb.cols, static_cast<int>(std::ceil(x0 + spec.width * sx)) + 4);
    const int y_begin = std::max(0, static_cast<int>(std::floor(y0)) - 3);
    const int y_end = std::min(rgb.rows, static_cast<int>(std::ceil(y0 + spec.height * sy)) + 4);
    const cv::Matx23d map(sx, 0, x0 - x_begin, 0, sy, y0 - y_begin);
    const int interpolation = spec.interpolation == cv::INTER_AREA ? cv::INTER_LINEAR : spec.interpolation;
    cv::warpAffine(rgb(cv::Range(y_begin, y_end), cv::Range(x_begin, x_end)), out.pixels, map,
                   cv::Size(spec.width, spec.height), interpolation | cv::WARP_INVERSE_MAP, cv::BORDER_REPLICATE);
  }
  out.width = spec.width;
  out.height = spec.height;
  out.source_width = w;
  out.source_height = h;
  out.scale_x = static_cast<double>(new_w) / w;
  out.scale_y = static_cast<double>(new_h) / h;
  return out;
}

ResizedImage Letterbox(const cv::Mat& rgb, const InputSpec& spec, int w, int h) {
  const double scale = LetterboxScale(w, h, spec);
  const cv::Size size = LetterboxSize(w, h, spec);
  const int new_w = size.width, new_h = size.height;
  ResizedImage out;
  if (new_w == rgb.cols && new_h == rgb.rows) {
    out.pixels = rgb;
  } else {
    cv::resize(rgb, out.pixels, cv::Size(new_w, new_h), 0, 0, spec.interpolation);
  }
  out.width = new_w;
  out.height = new_h;
  out.source_width = w;
  out.source_height = h;
  out.scale_x = scale;
  out.scale_y = scale;
  return out;
}

}  // namespace

cv::Size ResizedSize(int width, int height, const InputSpec& spec) {
  return spec.resize == ResizeMode::kCenterCrop ? CoverSize(width, height, spec) : LetterboxSize(width, height, spec);
}

ResizedImage ResizeForInput(const cv::Mat& rgb, const InputSpec& spec, int source_width, int source_height) {
  const int w = source_width > 0 ? source_width : rgb.cols;
  const int h = source_height > 0 ? source_height : rgb.rows;
  return spec.resize == ResizeMode::kCenterCrop ? CenterCrop(rgb, spec, w, h) : Letterbox(rgb, spec, w, h);
}

namespace {

// One row: interleaved RGB bytes -> three float planes, value * scale[c] + shift[c] (the
// multiply and the add each rounded, as written: no fused multiply-add).
void NormalizeRow(const uint8_t* src, int cols, const float* scale, const float* shift, float* r, float* g,
                  float* b) {
  for (int x = 0; x < cols; ++x) {
    r[x] = src[3 * x] * scale[0] + shift[0];
    g[x] = src[3 * x + 1] * scale[1] + shift[1];
    b[x] = src[3 * x + 2] * scale[2] + shift[2];
  }
}

#if defined(__x86_64__)
// The same, 16 pixels at a time: SSSE3 byte shuffles split the channels, then the same
// float multiply and add per value (bit for bit the scalar loop's results).
__attribute__((target("ssse3"))) void StoreNormalized(__m128i bytes, __m128 scale, __m128 shift, float* out) {
  const __m128i zero = _mm_setzero_si128();
  const __m128i lo = _mm_unpacklo_epi8(bytes, zero), hi = _mm_unpackhi_epi8(bytes, zero);
  const __m128i words[4] = {_mm_unpacklo_epi16(lo, zero), _mm_unpackhi_epi16(lo, zero),
                            _mm_unpacklo_epi16(hi, zero), _mm_unpackhi_epi16(hi, zero)};
  for (int i = 0; i < 4; ++i) {
    _mm_storeu_ps(out + 4 * i, _mm_add_ps(_mm_mul_ps(_mm_cvtepi32_ps(words[i]), scale), shift));
  }
}

__attribute__((target("ssse3"))) void NormalizeRowSsse3(const uint8_t* src, int cols, const float* scale,
                                                          const float* shift, float* r, float* g, float* b) {
  // Byte k of 16 pixels' 48 bytes (a: 0-15, b: 16-31, c: 32-47) -> its channel's lane.
  const __m128i ra = _mm_setr_epi8(0, 3, 6, 9, 12, 15, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
  const __m128i rb = _mm_setr_epi8(-1, -1, -1, -1, -1, -1, 2, 5, 8, 11, 14, -1, -1, -1, -1, -1);
  const __m128i rc = _mm_setr_epi8(-1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 1, 4, 7, 10, 13);
  const __m128i ga = _mm_setr_epi8(1, 4, 7, 10, 13, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
  const __m128i gb = _mm_setr_epi8(-1, -1, -1, -1, -1, 0, 3, 6, 9, 12, 15, -1, -1, -1, -1, -1);
  const __m128i gc = _mm_setr_epi8(-1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 2, 5, 8, 11, 14);
  const __m128i ba = _mm_setr_epi8(2, 5, 8, 11, 14, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
  const __m128i bb = _mm_setr_epi8(-1, -1, -1, -1, -1, 1, 4, 7, 10, 13, -1, -1, -1, -1, -1, -1);
  const __m128i bc = _mm_setr_epi8(-1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 0, 3, 6, 9, 12, 15);
  const __m128 scales[3] = {_mm_set1_ps(scale[0]), _mm_set1_ps(scale[1]), _mm_set1_ps(scale[2])};
  const __m128 shifts[3] = {_mm_set1_ps(shift[0]), _mm_set1_ps(shift[1]), _mm_set1_ps(shift[2])};
  int x = 0;
  for (; x + 16 <= cols; x += 16) {
    const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 3 * x));
    const __m128i b16 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 3 * x + 16));
    const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 3 * x + 32));
    const __m128i red = _mm_or_si128(_mm_or_si128(_mm_shuffle_epi8(a, ra), _mm_shuffle_epi8(b16, rb)),
                                     _mm_shuffle_epi8(c, rc));
    const __m128i green = _mm_or_si128(_mm_or_si128(_mm_shuffle_epi8(a, ga), _mm_shuffle_epi8(b16, gb)),
                                       _mm_shuffle_epi8(c, gc));
    const __m128i blue = _mm_or_si128(_mm_or_si128(_mm_shuffle_epi8(a, ba), _mm_shuffle_epi8(b16, bb)),
                                      _mm_shuffle_epi8(c, bc));
    StoreNormalized(red, scales[0], shifts[0], r + x);
    StoreNormalized(green, scales[1], shifts[1], g + x);
    StoreNormalized(blue, scales[2], shifts[2], b + x);
  }
  NormalizeRow(src + 3 * x, cols - x, scale, shift, r + x, g + x, b + x);
}

const bool kHaveSsse3 = __builtin_cpu_supports("ssse3");
#endif

}  // namespace

void NormalizeInto(const ResizedImage& image, const InputSpec& spec, float* chw) {
  const int H = spec.height, W = spec.width;
  const int rows = std::min(image.pixels.rows, H), cols = std::min(image.pixels.cols, W);
  const size_t plane = static_cast<size_t>(H) * W;
  float scale[3], shift[3];
  for (int c = 0; c < 3; ++c) {
    scale[c] = 1.0f / (255.0f * spec.std[c]);
    shift[c] = -spec.mean[c] / spec.std[c];
  }
  if (rows < H || cols < W) std::memset(chw, 0, 3 * plane * sizeof(float));
  for (int y = 0; y < rows; ++y) {
    const uint8_t* src = image.pixels.ptr<uint8_t>(y);
    float* r = chw + static_cast<size_t>(y) * W;
#if defined(__x86_64__)
    if (kHaveSsse3) {
      NormalizeRowSsse3(src, cols, scale, shift, r, r + plane, r + 2 * plane);
      continue;
    }
#endif
    NormalizeRow(src, cols, scale, shift, r, r + plane, r + 2 * plane);
  }
}

}  // namespace careserve
