#include "server/preprocess/cubic_cut.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include <immintrin.h>

// The weights and the vertical pass are floating point, evaluated in the same order as
// OpenCV's; a fused multiply-add would round differently.
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#else
#pragma GCC optimize("fp-contract=off")
#endif

namespace careserve {
namespace {

constexpr int kCoefBits = 11;                 // OpenCV's INTER_RESIZE_COEF_BITS
constexpr int kCoefScale = 1 << kCoefBits;   // fixed-point weights sum to about this
constexpr int kSimdLanes = 8;                 // 16-bit lanes of a 128-bit vector: OpenCV's vertical pass
                                              // takes 8 values at a time in float, the rest in fixed point

// Keys' cubic convolution weights (a = -0.75) for the four taps around a sample at
// fraction x past the second one.
void CubicWeights(float x, float w[4]) {
  const float a = -0.75f;
  w[0] = ((a * (x + 1) - 5 * a) * (x + 1) + 8 * a) * (x + 1) - 4 * a;
  w[1] = ((a + 2) * x - (a + 3)) * x * x + 1;
  w[2] = ((a + 2) * (1 - x) - (a + 3)) * (1 - x) * (1 - x) + 1;
  w[3] = 1.f - w[0] - w[1] - w[2];
}

int16_t Fixed(float w) {
  const long v = std::lrint(w * kCoefScale);  // round half to even, as cvRound
  return static_cast<int16_t>(std::clamp<long>(v, INT16_MIN, INT16_MAX));
}

// Sampling position of output index d: the source index of the second tap and the four
// fixed-point weights (pixel centres aligned: (d + 0.5) * scale - 0.5).
struct Tap {
  int s;
  int16_t w[4];
};

Tap TapAt(int d, double scale) {
  float f = static_cast<float>((d + 0.5) * scale - 0.5);
  const int s = static_cast<int>(std::floor(f));
  f -= s;
  float w[4];
  CubicWeights(f, w);
  return Tap{s, {Fixed(w[0]), Fixed(w[1]), Fixed(w[2]), Fixed(w[3])}};
}

uint8_t Saturate(int v) { return static_cast<uint8_t>(std::clamp(v, 0, 255)); }

template <int CN>
void Horizontal(const uint8_t* row, const int* offsets, const int16_t* weights, int count, int cn_runtime,
                int32_t* out) {
  const int cn = CN > 0 ? CN : cn_runtime;
  for (int i = 0; i < count; ++i, offsets += 4, weights += 4, out += cn) {
    const uint8_t* p0 = row + offsets[0];
    const uint8_t* p1 = row + offsets[1];
    const uint8_t* p2 = row + offsets[2];
    const uint8_t* p3 = row + offsets[3];
    const int w0 = weights[0], w1 = weights[1], w2 = weights[2], w3 = weights[3];
    for (int c = 0; c < cn; ++c) out[c] = p0[c] * w0 + p1[c] * w1 + p2[c] * w2 + p3[c] * w3;
  }
}

// Three channels, SSE2: per output pixel, each tap's pixel as four 16-bit lanes (its three
// bytes and the next one), taps interleaved in pairs and multiplied-added with the pair's
// weights into four 32-bit lanes, the last of which is not kept: each pixel's store spills
// one int into the next pixel's first value, which that pixel then writes (`out` needs
// one spare int after the row's last pixel). A pixel whose last tap is the row's last
// source pixel takes the scalar path (no byte past the row is read).
void Horizontal3(const uint8_t* row, int row_bytes, const int* offsets, const int16_t* weights, int count,
                 int32_t* out) {
  const __m128i zero = _mm_setzero_si128();
  auto pixel = [&](int offset) {
    int32_t bytes;
    std::memcpy(&bytes, row + offset, 4);
    return _mm_unpacklo_epi8(_mm_cvtsi32_si128(bytes), zero);
  };
  for (int i = 0; i < count; ++i, offsets += 4, weights += 4, out += 3) {
    if (offsets[3] + 4 > row_bytes) {
      Horizontal<3>(row, offsets, weights, 1, 3, out);
      continue;
    }
    const __m128i w01 = _mm_set1_epi32(static_cast<uint16_t>(weights[0]) | (static_cast<uint32_t>(weights[1]) << 16));
    const __m128i w23 = _mm_set1_epi32(static_cast<uint16_t>(weights[2]) | (static_cast<uint32_t>(weights[3]) << 16));
    const __m128i p01 = _mm_unpacklo_epi16(pixel(offsets[0]), pixel(offsets[1]));
    const __m128i p23 = _mm_unpacklo_epi16(pixel(offsets[2]), pixel(offsets[3]));
    const __m128i sum = _mm_add_epi32(_mm_madd_epi16(p01, w01), _mm_madd_epi16(p23, w23));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out), sum);
  }
}

// Horizontal3 with SSSE3, for the usual case: an output pixel whose four taps are four
// consecutive source pixels (every pixel but those whose taps the image edges clamp) takes
// one 16-byte load and two byte shuffles instead of four loads and unpacks. The same
// products and sums as Horizontal3, so the same values (the spilled fourth lane is zero
// here; the next pixel or the spare int takes it either way).
__attribute__((target("ssse3"))) void Horizontal3Ssse3(const uint8_t* row, int row_bytes, const int* offsets,
                                                      const int16_t* weights, int count, int32_t* out) {
  // Taps 0 and 1 (bytes 0-5), then taps 2 and 3 (bytes 6-11), channel by channel, as
  // 16-bit lanes: (t0 c0, t1 c0, t0 c1, t1 c1, t0 c2, t1 c2, 0, 0).
  const __m128i taps01 = _mm_setr_epi8(0, -1, 3, -1, 1, -1, 4, -1, 2, -1, 5, -1, -1, -1, -1, -1);
  const __m128i taps23 = _mm_setr_epi8(6, -1, 9, -1, 7, -1, 10, -1, 8, -1, 11, -1, -1, -1, -1, -1);
  int i = 0;
  for (; i < count; ++i) {
    const int* o = offsets + 4 * i;
    if (o[1] != o[0] + 3 || o[2] != o[0] + 6 || o[3] != o[0] + 9 || o[0] + 16 > row_bytes) {
      Horizontal3(row, row_bytes, o, weights + 4 * i, 1, out + 3 * i);
      continue;
    }
    const int16_t* w = weights + 4 * i;
    const __m128i w01 = _mm_set1_epi32(static_cast<uint16_t>(w[0]) | (static_cast<uint32_t>(w[1]) << 16));
    const __m128i w23 = _mm_set1_epi32(static_cast<uint16_t>(w[2]) | (static_cast<uint32_t>(w[3]) << 16));
    const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + o[0]));
    const __m128i sum = _mm_add_epi32(_mm_madd_epi16(_mm_shuffle_epi8(bytes, taps01), w01),
                                      _mm_madd_epi16(_mm_shuffle_epi8(bytes, taps23), w23));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 3 * i), sum);
  }
}

// Horizontal3Ssse3 two output pixels at a time with AVX2: one pixel per 128-bit lane, the
// same shuffles, products and sums, the pair's six values then moved together and stored
// as eight ints, the last two spilled into what the next pixels write (`out` needs two
// spare ints after the row's last pixel). A pair with a pixel the SSSE3 version would not
// take its fast path for goes to it whole.
__attribute__((target("avx2"))) void Horizontal3Avx2(const uint8_t* row, int row_bytes, const int* offsets,
                                                    const int16_t* weights, int count, int32_t* out) {
  const __m256i taps01 =
      _mm256_broadcastsi128_si256(_mm_setr_epi8(0, -1, 3, -1, 1, -1, 4, -1, 2, -1, 5, -1, -1, -1, -1, -1));
  const __m256i taps23 =
      _mm256_broadcastsi128_si256(_mm_setr_epi8(6, -1, 9, -1, 7, -1, 10, -1, 8, -1, 11, -1, -1, -1, -1, -1));
  const __m256i together = _mm256_setr_epi32(0, 1, 2, 4, 5, 6, 3, 7);
  auto consecutive = [row_bytes](const int* o) {
    return o[1] == o[0] + 3 && o[2] == o[0] + 6 && o[3] == o[0] + 9 && o[0] + 16 <= row_bytes;
  };
  auto pair = [](int16_t lo, int16_t hi) {
    return static_cast<int>(static_cast<uint16_t>(lo) | (static_cast<uint32_t>(static_cast<uint16_t>(hi)) << 16));
  };
  int i = 0;
  for (; i + 2 <= count; i += 2) {
    const int* a = offsets + 4 * i;
    const int16_t* w = weights + 4 * i;
    if (!consecutive(a) || !consecutive(a + 4)) {
      Horizontal3Ssse3(row, row_bytes, a, w, 2, out + 3 * i);
      continue;
    }
    const int a01 = pair(w[0], w[1]), a23 = pair(w[2], w[3]), b01 = pair(w[4], w[5]), b23 = pair(w[6], w[7]);
    const __m256i w01 = _mm256_setr_epi32(a01, a01, a01, a01, b01, b01, b01, b01);
    const __m256i w23 = _mm256_setr_epi32(a23, a23, a23, a23, b23, b23, b23, b23);
    const __m256i bytes =
        _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + a[0]))),
                                _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + a[4])), 1);
    const __m256i sum = _mm256_add_epi32(_mm256_madd_epi16(_mm256_shuffle_epi8(bytes, taps01), w01),
                                         _mm256_madd_epi16(_mm256_shuffle_epi8(bytes, taps23), w23));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 3 * i), _mm256_permutevar8x32_epi32(sum, together));
  }
  if (i < count) Horizontal3Ssse3(row, row_bytes, offsets + 4 * i, weights + 4 * i, count - i, out + 3 * i);
}

// Eight ints as floats.
__attribute__((target("avx2"), always_inline)) inline __m256 LoadFloats(const int32_t* p) {
  return _mm256_cvtepi32_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

// The vertical pass's float part, 16 values at a time with AVX2: per value the same
// products and sums in the same order as the SSE2 loop, so the same bytes. Returns how
// many values it did (a multiple of 16); the caller does the rest.
__attribute__((target("avx2"))) int VerticalFloatAvx2(const int32_t* const s[4], const float b[4], int count,
                                                     uint8_t* out) {
  const __m256 b0 = _mm256_set1_ps(b[0]), b1 = _mm256_set1_ps(b[1]), b2 = _mm256_set1_ps(b[2]),
               b3 = _mm256_set1_ps(b[3]);
  int x = 0;
  for (; x + 16 <= count; x += 16) {
    __m256i rounded[2];
    for (int half = 0; half < 2; ++half) {
      const int at = x + 8 * half;
      __m256 v = _mm256_mul_ps(LoadFloats(s[3] + at), b3);
      v = _mm256_add_ps(_mm256_mul_ps(LoadFloats(s[2] + at), b2), v);
      v = _mm256_add_ps(_mm256_mul_ps(LoadFloats(s[1] + at), b1), v);
      v = _mm256_add_ps(_mm256_mul_ps(LoadFloats(s[0] + at), b0), v);
      rounded[half] = _mm256_cvtps_epi32(v);  // rounds half to even (MXCSR's default mode)
    }
    // packs works within 128-bit lanes: (0-3, 8-11 | 4-7, 12-15) -> (0-7 | 8-15).
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packs_epi32(rounded[0], rounded[1]), 0xD8);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + x),
                     _mm_packus_epi16(_mm256_castsi256_si128(packed), _mm256_extracti128_si256(packed, 1)));
  }
  return x;
}

int BestSimdLevel() {
  if (__builtin_cpu_supports("avx2")) return 2;
  if (__builtin_cpu_supports("ssse3")) return 1;
  return 0;
}

}  // namespace

namespace internal {
int cubic_cut_simd_level = BestSimdLevel();
int CubicCutBestSimdLevel() { return BestSimdLevel(); }
}  // namespace internal

void ResizeCubicCut(const cv::Mat& src, cv::Size full, cv::Rect cut, cv::Mat* dst) {
  const int cn = src.channels();
  const int sw = src.cols, sh = src.rows;
  const int level = internal::cubic_cut_simd_level;
  const double scale_x = 1.0 / (static_cast<double>(full.width) / sw);
  const double scale_y = 1.0 / (static_cast<double>(full.height) / sh);

  // Columns: per kept output pixel, the four source pixels (edges replicated) and weights.
  std::vector<int> offsets(static_cast<size_t>(cut.width) * 4);
  std::vector<int16_t> alpha(static_cast<size_t>(cut.width) * 4);
  for (int i = 0; i < cut.width; ++i) {
    const Tap t = TapAt(cut.x + i, scale_x);
    for (int k = 0; k < 4; ++k) {
      offsets[4 * i + k] = std::clamp(t.s - 1 + k, 0, sw - 1) * cn;
      alpha[4 * i + k] = t.w[k];
    }
  }
  // Rows: per kept output row, the four source rows and weights.
  std::vector<Tap> rows(cut.height);
  int first = sh, last = -1;
  for (int j = 0; j < cut.height; ++j) {
    rows[j] = TapAt(cut.y + j, scale_y);
    first = std::min(first, std::clamp(rows[j].s - 1, 0, sh - 1));
    last = std::max(last, std::clamp(rows[j].s + 2, 0, sh - 1));
  }

  // The horizontal pass of every source row the kept rows need, in fixed point.
  const int width = cut.width * cn;
  // Not zeroed: every value is written before it is read (+2: the SIMD versions' spill).
  std::unique_ptr<int32_t[]> horizontal(new int32_t[static_cast<size_t>(last - first + 1) * width + 2]);
  for (int y = first; y <= last; ++y) {
    int32_t* out = horizontal.get() + static_cast<size_t>(y - first) * width;
    const uint8_t* row = src.ptr<uint8_t>(y);
    switch (cn) {
      case 1: Horizontal<1>(row, offsets.data(), alpha.data(), cut.width, cn, out); break;
      case 3:
        (level >= 2   ? Horizontal3Avx2
         : level == 1 ? Horizontal3Ssse3
                      : Horizontal3)(row, sw * 3, offsets.data(), alpha.data(), cut.width, out);
        break;
      default: Horizontal<0>(row, offsets.data(), alpha.data(), cut.width, cn, out); break;
    }
  }

  // The vertical pass. OpenCV runs it over whole rows of the full-size result, the first
  // multiple-of-8 values in float (weights / 2^22, summed last tap first, rounded half to
  // even), the rest in fixed point (rounded half up); a kept value takes the path its
  // position in the full row took.
  const int full_row = full.width * cn;
  const int simd_end = full_row / kSimdLanes * kSimdLanes;
  const int x0 = cut.x * cn;
  const int float_count = std::clamp(simd_end - x0, 0, width);
  const float unscale = 1.f / (kCoefScale * kCoefScale);
  dst->create(cut.height, cut.width, src.type());
  for (int j = 0; j < cut.height; ++j) {
    const Tap& t = rows[j];
    const int32_t* s[4];
    for (int k = 0; k < 4; ++k) {
      s[k] = horizontal.get() + static_cast<size_t>(std::clamp(t.s - 1 + k, 0, sh - 1) - first) * width;
    }
    uint8_t* out = dst->ptr<uint8_t>(j);
    const float b0 = t.w[0] * unscale, b1 = t.w[1] * unscale, b2 = t.w[2] * unscale, b3 = t.w[3] * unscale;
    const float b[4] = {b0, b1, b2, b3};
    int x = level >= 2 ? VerticalFloatAvx2(s, b, float_count, out) : 0;
    const __m128 vb0 = _mm_set1_ps(b0), vb1 = _mm_set1_ps(b1), vb2 = _mm_set1_ps(b2), vb3 = _mm_set1_ps(b3);
    auto sum4 = [&](int at) {
      __m128 v = _mm_mul_ps(_mm_cvtepi32_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s[3] + at))), vb3);
      v = _mm_add_ps(_mm_mul_ps(_mm_cvtepi32_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s[2] + at))), vb2), v);
      v = _mm_add_ps(_mm_mul_ps(_mm_cvtepi32_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s[1] + at))), vb1), v);
      v = _mm_add_ps(_mm_mul_ps(_mm_cvtepi32_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s[0] + at))), vb0), v);
      return _mm_cvtps_epi32(v);  // rounds half to even (MXCSR's default mode)
    };
    for (; x + 8 <= float_count; x += 8) {
      const __m128i packed = _mm_packs_epi32(sum4(x), sum4(x + 4));
      _mm_storel_epi64(reinterpret_cast<__m128i*>(out + x), _mm_packus_epi16(packed, packed));
    }
    for (; x < float_count; ++x) {
      float v = static_cast<float>(s[3][x]) * b3;
      v = static_cast<float>(s[2][x]) * b2 + v;
      v = static_cast<float>(s[1][x]) * b1 + v;
      v = static_cast<float>(s[0][x]) * b0 + v;
      out[x] = Saturate(_mm_cvtss_si32(_mm_set_ss(v)));
    }
    const int c0 = t.w[0], c1 = t.w[1], c2 = t.w[2], c3 = t.w[3];
    constexpr int kShift = 2 * kCoefBits;
    for (int x = float_count; x < width; ++x) {
      const int v = s[0][x] * c0 + s[1][x] * c1 + s[2][x] * c2 + s[3][x] * c3;
      out[x] = Saturate((v + (1 << (kShift - 1))) >> kShift);
    }
  }
}

}  // namespace careserve
