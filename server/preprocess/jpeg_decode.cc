#include "server/preprocess/jpeg_decode.h"

#include <algorithm>
#include <csetjmp>
#include <cstdint>
#include <cstdio>  // jpeglib.h needs FILE
#include <cstring>
#include <vector>

#include <jpeglib.h>
#include <jerror.h>

#include "opencv2/core.hpp"
#include "opencv2/imgcodecs.hpp"

namespace careserve {
namespace {

constexpr int kApp1 = JPEG_APP0 + 1;

// libjpeg's errors return here (its default handler would exit the process).
struct ErrorManager {
  jpeg_error_mgr pub;
  jmp_buf jump;
};

[[noreturn]] void ErrorExit(j_common_ptr info) { longjmp(reinterpret_cast<ErrorManager*>(info->err)->jump, 1); }

void NoOutput(j_common_ptr) {}

// Warnings (corrupt but decodable data) decode on, as in OpenCV, except running out of data:
// libjpeg's memory source then makes up an end marker and fills the rest with grey, where
// OpenCV's source stops and repeats the last row. That file is left to cv::imdecode. (The
// server refuses JPEGs without an end-of-image marker before decoding.)
void EmitMessage(j_common_ptr info, int level) {
  if (level < 0 && info->err->msg_code == JWRN_JPEG_EOF) ErrorExit(info);
}

jpeg_saved_marker_ptr FirstApp1(j_decompress_ptr info) {
  for (jpeg_saved_marker_ptr m = info->marker_list; m != nullptr; m = m->next) {
    if (m->marker == kApp1) return m;
  }
  return nullptr;
}

// The libjpeg part. No object with a destructor lives in this frame (longjmp skips them).
// `app1` gets the payload of the first APP1 segment before the first scan, if any.
JpegDecodeOutcome DecodeRgb(const std::string& bytes, int reduction, int64_t max_pixels, cv::Mat* rgb,
                            std::vector<unsigned char>* app1, int* width, int* height) {
  jpeg_decompress_struct info;
  std::memset(&info, 0, sizeof info);  // jpeg_destroy_decompress is safe on it from here
  ErrorManager error;
  info.err = jpeg_std_error(&error.pub);
  error.pub.error_exit = ErrorExit;
  error.pub.output_message = NoOutput;
  error.pub.emit_message = EmitMessage;
  if (setjmp(error.jump) != 0) {
    jpeg_destroy_decompress(&info);
    return JpegDecodeOutcome::kDeclined;
  }
  jpeg_create_decompress(&info);
  jpeg_mem_src(&info, reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size());
  jpeg_save_markers(&info, kApp1, 0xFFFF);
  jpeg_read_header(&info, TRUE);
  const bool no_huffman_tables = info.ac_huff_tbl_ptrs[0] == nullptr && info.ac_huff_tbl_ptrs[1] == nullptr &&
                                 info.dc_huff_tbl_ptrs[0] == nullptr && info.dc_huff_tbl_ptrs[1] == nullptr;
  // OpenCV reads the orientation from the first APP1 segment before the first scan (libjpeg
  // keeps saved markers only until jpeg_finish_decompress).
  if (const jpeg_saved_marker_ptr marker = FirstApp1(&info); marker != nullptr) {
    app1->assign(marker->data, marker->data + marker->data_length);
  }
  *width = static_cast<int>(info.image_width), *height = static_cast<int>(info.image_height);
  if (static_cast<int64_t>(info.image_width) * info.image_height > max_pixels) {
    jpeg_destroy_decompress(&info);
    return JpegDecodeOutcome::kTooLarge;
  }
  if (info.num_components == 4 || no_huffman_tables) {
    jpeg_destroy_decompress(&info);
    return JpegDecodeOutcome::kDeclined;
  }
  info.scale_num = 1;
  info.scale_denom = static_cast<unsigned int>(reduction);
  info.out_color_space = JCS_RGB;
  jpeg_start_decompress(&info);
  if (info.output_components != 3) {
    jpeg_destroy_decompress(&info);
    return JpegDecodeOutcome::kDeclined;
  }
  rgb->create(static_cast<int>(info.output_height), static_cast<int>(info.output_width), CV_8UC3);
  JSAMPROW rows[16];
  while (info.output_scanline < info.output_height) {
    const JDIMENSION first = info.output_scanline;
    const JDIMENSION count = std::min<JDIMENSION>(16, info.output_height - first);
    for (JDIMENSION i = 0; i < count; ++i) rows[i] = rgb->ptr<unsigned char>(static_cast<int>(first + i));
    jpeg_read_scanlines(&info, rows, count);
  }
  jpeg_finish_decompress(&info);
  jpeg_destroy_decompress(&info);
  return JpegDecodeOutcome::kDecoded;
}

// The tiny image whose turn tells the orientation: 16x8 (w x h), four quadrants of different
// colours, so each of the eight flips/transposes gives different pixels.
struct Probe {
  std::vector<unsigned char> after_soi;  // the JPEG file without its first two bytes (SOI)
  std::vector<cv::Mat> turned;           // its decoded pixels under each transform
  bool ok = false;
};

// The eight transforms: transpose or not, then flip code 0 (vertical), 1 (horizontal), -1
// (both) or none (2).
constexpr int kFlips[4] = {2, 0, 1, -1};

void Turn(const cv::Mat& in, int index, cv::Mat* out) {
  cv::Mat t = in;
  if (index >= 4) cv::transpose(in, t);
  if (kFlips[index % 4] != 2) {
    cv::flip(t, *out, kFlips[index % 4]);
  } else {
    *out = t.data == in.data ? t.clone() : t;
  }
}

const Probe& OrientationProbe() {
  static const Probe probe = [] {
    Probe p;
    cv::Mat image(8, 16, CV_8UC3);
    image(cv::Rect(0, 0, 8, 4)).setTo(cv::Scalar(0, 0, 255));
    image(cv::Rect(8, 0, 8, 4)).setTo(cv::Scalar(0, 255, 0));
    image(cv::Rect(0, 4, 8, 4)).setTo(cv::Scalar(255, 0, 0));
    image(cv::Rect(8, 4, 8, 4)).setTo(cv::Scalar(255, 255, 255));
    std::vector<unsigned char> jpeg;
    if (!cv::imencode(".jpg", image, jpeg, {cv::IMWRITE_JPEG_QUALITY, 100}) || jpeg.size() < 4) return p;
    const cv::Mat plain = cv::imdecode(jpeg, cv::IMREAD_COLOR);
    if (plain.empty()) return p;
    p.after_soi.assign(jpeg.begin() + 2, jpeg.end());
    for (int i = 0; i < 8; ++i) {
      cv::Mat turned;
      Turn(plain, i, &turned);
      p.turned.push_back(turned);
    }
    p.ok = true;
    return p;
  }();
  return probe;
}

bool SamePixels(const cv::Mat& a, const cv::Mat& b) {
  return a.size() == b.size() && a.type() == b.type() && cv::norm(a, b, cv::NORM_INF) == 0;
}

// Which transform OpenCV applies to a JPEG whose first APP1 segment has `payload`: 0-7 (see
// Turn), or -1 if the tiny image does not tell.
int OrientationOf(const std::vector<unsigned char>& payload) {
  const Probe& probe = OrientationProbe();
  if (!probe.ok || payload.size() + 2 > 0xFFFF) return -1;
  const size_t length = payload.size() + 2;
  std::vector<unsigned char> file = {0xFF, 0xD8, 0xFF, static_cast<unsigned char>(kApp1),
                                     static_cast<unsigned char>(length >> 8), static_cast<unsigned char>(length & 0xFF)};
  file.insert(file.end(), payload.begin(), payload.end());
  file.insert(file.end(), probe.after_soi.begin(), probe.after_soi.end());
  cv::Mat decoded;
  try {
    decoded = cv::imdecode(file, cv::IMREAD_COLOR);
  } catch (const cv::Exception&) {
    return -1;
  }
  if (decoded.empty()) return -1;
  for (int i = 0; i < 8; ++i) {
    if (SamePixels(decoded, probe.turned[i])) return i;
  }
  return -1;
}

}  // namespace

JpegDecodeResult DecodeJpegRgb(const std::string& bytes, int reduction, int64_t max_pixels, cv::Mat* rgb) {
  JpegDecodeResult result;
  if (reduction != 1 && reduction != 2 && reduction != 4 && reduction != 8) return result;
  // OpenCV takes a file for JPEG by these three bytes (libjpeg also takes FF D8 then junk).
  if (bytes.size() < 3 || bytes.compare(0, 3, "\xFF\xD8\xFF") != 0) return result;
  std::vector<unsigned char> app1;
  cv::Mat decoded;
  result.outcome = DecodeRgb(bytes, reduction, max_pixels, &decoded, &app1, &result.width, &result.height);
  if (result.outcome != JpegDecodeOutcome::kDecoded) return result;
  int orientation = 0;
  if (!app1.empty()) {
    orientation = OrientationOf(app1);
    if (orientation < 0) {
      result.outcome = JpegDecodeOutcome::kDeclined;
      return result;
    }
  }
  if (orientation == 0) {
    *rgb = decoded;
  } else {
    Turn(decoded, orientation, rgb);
  }
  return result;
}

}  // namespace careserve
