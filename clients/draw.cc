#include "clients/draw.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "opencv2/imgproc.hpp"
#include "server/postprocess/coco_rle.h"

namespace careserve {
namespace {

// Text size and line width that read well on this image.
struct Style {
  double font_scale;
  int thickness;
  int line;
};

Style StyleFor(const cv::Mat& image) {
  const double size = std::max(image.cols, image.rows);
  return {std::clamp(size / 1000.0, 0.3, 1.5), std::max(1, static_cast<int>(size / 600)),
          std::max(1, static_cast<int>(size / 300))};
}

// Text on a filled background whose top-left is `at`, kept inside the image.
void Label(cv::Mat& image, const std::string& text, cv::Point at, const cv::Scalar& background, const Style& style) {
  int baseline = 0;
  const cv::Size size = cv::getTextSize(text, cv::FONT_HERSHEY_SIMPLEX, style.font_scale, style.thickness, &baseline);
  at.x = std::clamp(at.x, 0, std::max(0, image.cols - size.width - 4));
  at.y = std::clamp(at.y, 0, std::max(0, image.rows - size.height - baseline - 4));
  cv::rectangle(image, cv::Rect(at.x, at.y, size.width + 4, size.height + baseline + 4), background, cv::FILLED);
  const double luma = 0.114 * background[0] + 0.587 * background[1] + 0.299 * background[2];
  cv::putText(image, text, cv::Point(at.x + 2, at.y + 2 + size.height), cv::FONT_HERSHEY_SIMPLEX, style.font_scale,
              luma > 140 ? cv::Scalar(0, 0, 0) : cv::Scalar(255, 255, 255), style.thickness, cv::LINE_AA);
}

}  // namespace

std::string DisplayLabel(const std::string& label, int class_index) {
  return label.empty() ? "class " + std::to_string(class_index) : label;
}

cv::Scalar ClassColor(int class_index) {
  // Hues a golden angle apart: neighbouring class indices get distant colours.
  const double hue = std::fmod(class_index * 0.61803398875, 1.0) * 180.0;
  const double saturation = 160 + (class_index * 37) % 96;
  cv::Mat hsv(1, 1, CV_8UC3, cv::Scalar(hue, saturation, 235)), bgr;
  cv::cvtColor(hsv, bgr, cv::COLOR_HSV2BGR);
  const cv::Vec3b c = bgr.at<cv::Vec3b>(0, 0);
  return cv::Scalar(c[0], c[1], c[2]);
}

cv::Mat DecodeInstanceMask(const care::vision::v1::CocoRle& rle) {
  std::vector<uint32_t> runs;
  if (rle.size_size() != 2 || rle.size(0) <= 0 || rle.size(1) <= 0 || !DecodeRleCounts(rle.counts(), &runs)) {
    return cv::Mat();
  }
  const int height = rle.size(0), width = rle.size(1);
  cv::Mat columns(width, height, CV_8UC1, cv::Scalar(0));  // row x holds image column x
  const uint64_t total = static_cast<uint64_t>(width) * height;
  uint64_t at = 0;
  for (size_t i = 0; i < runs.size(); ++i) {
    if (at + runs[i] > total) return cv::Mat();
    if (i % 2 == 1) std::fill(columns.data + at, columns.data + at + runs[i], 255);
    at += runs[i];
  }
  if (at != total) return cv::Mat();
  return columns.t();
}

cv::Mat DrawDetections(const cv::Mat& bgr, const care::vision::v1::DetectResponse& response) {
  cv::Mat out = bgr.clone();
  const Style style = StyleFor(out);
  for (int i = response.detections_size() - 1; i >= 0; --i) {
    const auto& d = response.detections(i);
    if (!d.has_mask()) continue;
    const cv::Mat mask = DecodeInstanceMask(d.mask());
    if (mask.size() != out.size()) continue;
    cv::Mat tinted(out.size(), out.type(), ClassColor(d.class_index()));
    cv::addWeighted(out, 0.5, tinted, 0.5, 0.0, tinted);
    tinted.copyTo(out, mask);
  }
  // Worst first, so the best boxes and labels end up on top.
  for (int i = response.detections_size() - 1; i >= 0; --i) {
    const auto& d = response.detections(i);
    const cv::Scalar color = ClassColor(d.class_index());
    const cv::Point p1(static_cast<int>(std::lround(d.box().x_min())), static_cast<int>(std::lround(d.box().y_min())));
    const cv::Point p2(static_cast<int>(std::lround(d.box().x_max())), static_cast<int>(std::lround(d.box().y_max())));
    cv::rectangle(out, p1, p2, color, style.line, cv::LINE_AA);
    char text[160];
    std::snprintf(text, sizeof(text), "%s %.2f", DisplayLabel(d.label(), d.class_index()).c_str(), d.score());
    int baseline = 0;
    const int text_height =
        cv::getTextSize(text, cv::FONT_HERSHEY_SIMPLEX, style.font_scale, style.thickness, &baseline).height;
    Label(out, text, cv::Point(p1.x, p1.y - text_height - baseline - 4), color, style);
  }
  return out;
}

cv::Mat DrawSegmentation(const cv::Mat& bgr, const cv::Mat& mask, const care::vision::v1::SegmentResponse& response) {
  // One colour per class, looked up per pixel (ClassColor converts HSV: once per class).
  cv::Mat classes;
  mask.convertTo(classes, CV_32S);
  double max_class = 0;
  cv::minMaxLoc(classes, nullptr, &max_class);
  std::vector<cv::Vec3b> palette(static_cast<size_t>(max_class) + 1);
  for (size_t c = 0; c < palette.size(); ++c) {
    const cv::Scalar color = ClassColor(static_cast<int>(c));
    palette[c] = cv::Vec3b(static_cast<uchar>(color[0]), static_cast<uchar>(color[1]), static_cast<uchar>(color[2]));
  }
  cv::Mat colored(mask.size(), CV_8UC3);
  for (int y = 0; y < classes.rows; ++y) {
    const int* row = classes.ptr<int>(y);
    cv::Vec3b* dst = colored.ptr<cv::Vec3b>(y);
    for (int x = 0; x < classes.cols; ++x) dst[x] = palette[row[x]];
  }
  cv::Mat out;
  cv::addWeighted(bgr, 0.5, colored, 0.5, 0.0, out);

  // Legend: the largest classes, top-left, on a darkened panel.
  const Style style = StyleFor(out);
  int baseline = 0;
  const int line_height =
      cv::getTextSize("Ag", cv::FONT_HERSHEY_SIMPLEX, style.font_scale, style.thickness, &baseline).height + baseline + 8;
  const int entries = std::min({response.classes_size(), 12, std::max(0, (out.rows - 8) / line_height)});
  int width = 0;
  std::vector<std::string> texts;
  for (int i = 0; i < entries; ++i) {
    const auto& c = response.classes(i);
    char text[160];
    std::snprintf(text, sizeof(text), "%s %.1f%%", DisplayLabel(c.label(), c.class_index()).c_str(),
                  100.0 * c.fraction());
    texts.push_back(text);
    width = std::max(width, cv::getTextSize(text, cv::FONT_HERSHEY_SIMPLEX, style.font_scale, style.thickness,
                                            &baseline).width);
  }
  if (entries > 0) {
    const cv::Rect panel =
        cv::Rect(0, 0, width + line_height + 12, entries * line_height + 8) & cv::Rect(0, 0, out.cols, out.rows);
    cv::Mat region = out(panel);
    region *= 0.35;
    for (int i = 0; i < entries; ++i) {
      const int y = 4 + i * line_height;
      cv::rectangle(out, cv::Rect(4, y + 2, line_height - 6, line_height - 6), ClassColor(response.classes(i).class_index()),
                    cv::FILLED);
      cv::putText(out, texts[i], cv::Point(line_height + 4, y + line_height - baseline - 6), cv::FONT_HERSHEY_SIMPLEX,
                  style.font_scale, cv::Scalar(255, 255, 255), style.thickness, cv::LINE_AA);
    }
  }
  return out;
}

}  // namespace careserve
