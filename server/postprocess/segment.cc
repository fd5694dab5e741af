#include "server/postprocess/segment.h"

#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/status/status.h"

namespace careserve {
namespace {

// Source index pair and weight of each output coordinate along one axis.
struct Tap {
  int i0, i1;
  float w;  // weight of i1
};

std::vector<Tap> Taps(int out_size, int in_size, double scale, double stride) {
  std::vector<Tap> taps(out_size);
  const double step = scale / stride;
  for (int x = 0; x < out_size; ++x) {
    double u = (x + 0.5) * step - 0.5;
    u = std::clamp(u, 0.0, static_cast<double>(in_size - 1));
    const int i0 = std::min(static_cast<int>(std::floor(u)), in_size - 1);
    const int i1 = std::min(i0 + 1, in_size - 1);
    taps[x] = {i0, i1, static_cast<float>(u - i0)};
  }
  return taps;
}

}  // namespace

namespace {

template <typename Label>
void Fill(const float* logits, int num_classes, int height, int width, const std::vector<Tap>& xs,
          const std::vector<Tap>& ys, ClassMap* out) {
  const size_t plane = static_cast<size_t>(height) * width;
  // Candidate classes per cell (y0, x0), computed on first use.
  std::vector<std::vector<uint16_t>> candidates(plane);
  std::vector<bool> known(plane, false);
  std::vector<float> lo(num_classes), hi(num_classes);
  auto cell_candidates = [&](int y0, int y1, int x0, int x1) -> const std::vector<uint16_t>& {
    const size_t cell = static_cast<size_t>(y0) * width + x0;
    if (!known[cell]) {
      float best_lo = -INFINITY;
      for (int c = 0; c < num_classes; ++c) {
        const float* p = logits + c * plane;
        const float a = p[y0 * width + x0], b = p[y0 * width + x1], d = p[y1 * width + x0], e = p[y1 * width + x1];
        lo[c] = std::min(std::min(a, b), std::min(d, e));
        hi[c] = std::max(std::max(a, b), std::max(d, e));
        best_lo = std::max(best_lo, lo[c]);
      }
      for (int c = 0; c < num_classes; ++c) {
        if (hi[c] >= best_lo) candidates[cell].push_back(static_cast<uint16_t>(c));
      }
      known[cell] = true;
    }
    return candidates[cell];
  };
  // Runs of output columns that share their logit cell.
  struct Span {
    int begin, end;
  };
  std::vector<Span> spans;
  for (int x = 0; x < static_cast<int>(xs.size());) {
    int end = x + 1;
    while (end < static_cast<int>(xs.size()) && xs[end].i0 == xs[x].i0) ++end;
    spans.push_back({x, end});
    x = end;
  }
  std::vector<int64_t>& counts = out->pixels;
  std::vector<float> left(num_classes), right(num_classes);
  for (int y = 0; y < static_cast<int>(ys.size()); ++y) {
    const Tap ty = ys[y];
    Label* row = out->mask.ptr<Label>(y);
    for (const Span& span : spans) {
      const Tap& first = xs[span.begin];
      const std::vector<uint16_t>& cands = cell_candidates(ty.i0, ty.i1, first.i0, first.i1);
      if (cands.size() == 1) {  // the common case: one class can win in the whole cell
        std::fill(row + span.begin, row + span.end, static_cast<Label>(cands[0]));
        counts[cands[0]] += span.end - span.begin;
        continue;
      }
      // Interpolate vertically once per candidate at the cell's two columns; then each
      // pixel is a blend of two numbers per candidate.
      const int n = static_cast<int>(cands.size());
      for (int i = 0; i < n; ++i) {
        const float* p = logits + cands[i] * plane;
        left[i] = p[ty.i0 * width + first.i0] * (1 - ty.w) + p[ty.i1 * width + first.i0] * ty.w;
        right[i] = p[ty.i0 * width + first.i1] * (1 - ty.w) + p[ty.i1 * width + first.i1] * ty.w;
      }
      for (int x = span.begin; x < span.end; ++x) {
        const float wx = xs[x].w;
        float best = left[0] * (1 - wx) + right[0] * wx;
        int best_i = 0;
        for (int i = 1; i < n; ++i) {
          const float v = left[i] * (1 - wx) + right[i] * wx;
          if (v > best) {
            best = v;
            best_i = i;
          }
        }
        row[x] = static_cast<Label>(cands[best_i]);
        ++counts[cands[best_i]];
      }
    }
  }
}

}  // namespace

ClassMap ArgmaxResize(const float* logits, int num_classes, int height, int width, double scale, double stride,
                      int out_width, int out_height) {
  const std::vector<Tap> xs = Taps(out_width, width, scale, stride);
  const std::vector<Tap> ys = Taps(out_height, height, scale, stride);
  ClassMap out;
  out.pixels.assign(num_classes, 0);
  if (num_classes <= 255) {
    out.mask.create(out_height, out_width, CV_8UC1);
    Fill<uint8_t>(logits, num_classes, height, width, xs, ys, &out);
  } else {
    out.mask.create(out_height, out_width, CV_16UC1);
    Fill<uint16_t>(logits, num_classes, height, width, xs, ys, &out);
  }
  return out;
}

std::vector<ClassPixels> ClassesPresent(const std::vector<int64_t>& pixels) {
  std::vector<ClassPixels> present;
  for (int c = 0; c < static_cast<int>(pixels.size()); ++c) {
    if (pixels[c] > 0) present.push_back({c, pixels[c]});
  }
  std::stable_sort(present.begin(), present.end(),
                   [](const ClassPixels& a, const ClassPixels& b) { return a.pixels > b.pixels; });
  return present;
}

namespace {

void PutU32(std::string* out, uint32_t v) {
  const char bytes[4] = {static_cast<char>(v >> 24), static_cast<char>(v >> 16), static_cast<char>(v >> 8),
                         static_cast<char>(v)};
  out->append(bytes, 4);
}

// Appends a PNG chunk: length, type, data, CRC of type and data.
void PutChunk(std::string* out, const char type[4], const std::string& data) {
  PutU32(out, static_cast<uint32_t>(data.size()));
  const size_t start = out->size();
  out->append(type, 4);
  out->append(data);
  PutU32(out, static_cast<uint32_t>(
                  crc32(0, reinterpret_cast<const Bytef*>(out->data() + start), static_cast<uInt>(out->size() - start))));
}

}  // namespace

absl::StatusOr<std::string> EncodeMaskPng(const cv::Mat& mask) {
  // Written here rather than by cv::imencode: libpng's adaptive row filters cost ~65 ms on
  // a 12-megapixel mask whatever the compression level, and a class mask gains nothing
  // from them. Rows unfiltered, deflated with zlib's RLE strategy: ~4x faster, smaller.
  const int depth = mask.depth() == CV_16U ? 16 : 8;
  if (mask.channels() != 1 || (mask.depth() != CV_8U && mask.depth() != CV_16U)) {
    return absl::InternalError("a mask PNG needs one 8- or 16-bit channel");
  }
  z_stream zs{};
  if (deflateInit2(&zs, 1, Z_DEFLATED, 15, 9, Z_RLE) != Z_OK) return absl::InternalError("deflateInit2 failed");
  std::string idat;
  std::vector<uint8_t> row(1 + static_cast<size_t>(mask.cols) * depth / 8);
  std::vector<uint8_t> chunk(1 << 16);
  row[0] = 0;  // filter: none
  auto drain = [&](int flush) {
    do {
      zs.next_out = chunk.data();
      zs.avail_out = static_cast<uInt>(chunk.size());
      deflate(&zs, flush);
      idat.append(reinterpret_cast<char*>(chunk.data()), chunk.size() - zs.avail_out);
    } while (zs.avail_out == 0);
  };
  for (int y = 0; y < mask.rows; ++y) {
    if (depth == 8) {
      std::memcpy(row.data() + 1, mask.ptr<uint8_t>(y), mask.cols);
    } else {
      const uint16_t* src = mask.ptr<uint16_t>(y);
      for (int x = 0; x < mask.cols; ++x) {  // PNG samples are big-endian
        row[1 + 2 * x] = static_cast<uint8_t>(src[x] >> 8);
        row[2 + 2 * x] = static_cast<uint8_t>(src[x]);
      }
    }
    zs.next_in = row.data();
    zs.avail_in = static_cast<uInt>(row.size());
    drain(Z_NO_FLUSH);
  }
  zs.next_in = nullptr;
  zs.avail_in = 0;
  drain(Z_FINISH);
  deflateEnd(&zs);

  std::string png("\x89PNG\r\n\x1a\n", 8);
  std::string header;
  PutU32(&header, static_cast<uint32_t>(mask.cols));
  PutU32(&header, static_cast<uint32_t>(mask.rows));
  header += static_cast<char>(depth);
  header.append(4, '\0');  // grayscale; deflate; adaptive filtering method 0; no interlace
  PutChunk(&png, "IHDR", header);
  PutChunk(&png, "IDAT", idat);
  PutChunk(&png, "IEND", "");
  return png;
}

}  // namespace careserve
