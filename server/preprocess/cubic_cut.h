// A bicubic resize that computes only the part of the result that is kept, bit for bit
// what OpenCV's cv::resize(INTER_CUBIC) gives for 8-bit images.
//
// center_crop resizes the image to cover the input and cuts the centre out: for a 224x224
// input at crop_pct 0.875 the resize makes 256x256 pixels and 224x224 are kept. This
// computes only the kept ones (and only the source rows they need) with the sampling
// positions, fixed-point horizontal weights and floating-point vertical pass of OpenCV
// 4.6's 8-bit cubic resize (SSE2 baseline build, as Debian's), so the result is the same
// bytes as resizing the whole image and cutting (tests/cpp/preprocess/cubic_cut_test.cc
// compares the two over many sizes, both directions, and every cut position).
#pragma once

#include "opencv2/core.hpp"

namespace careserve {

// Sets *dst to cv::resize(src, full, 0, 0, cv::INTER_CUBIC)(cut). `src`: 8-bit, 1 to 4
// channels, non-empty; `cut` inside `full`.
void ResizeCubicCut(const cv::Mat& src, cv::Size full, cv::Rect cut, cv::Mat* dst);

namespace internal {
// The instructions ResizeCubicCut uses: 2 AVX2, 1 SSSE3, 0 SSE2 (x86-64's baseline). It
// starts as the best the CPU has; tests lower it to check every path against OpenCV. Not
// to be changed while a resize runs.
extern int cubic_cut_simd_level;
int CubicCutBestSimdLevel();
}  // namespace internal

}  // namespace careserve
