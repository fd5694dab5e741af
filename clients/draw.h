// Pictures of answers, for people: boxes with labels and scores on the image, or the
// image blended with a class-coloured mask and a legend. Same size as the input image.
#pragma once

#include <string>

#include "care/vision/v1/vision.pb.h"
#include "opencv2/core.hpp"

namespace careserve {

// `label`, or "class N" for an answer without labels (the Open Inference Protocol's).
std::string DisplayLabel(const std::string& label, int class_index);

// A distinct, stable colour per class (BGR).
cv::Scalar ClassColor(int class_index);

// A detection's instance mask (COCO RLE) as a 0/255 image of its size; empty when the
// detection has none or it is malformed.
cv::Mat DecodeInstanceMask(const care::vision::v1::CocoRle& rle);

// `bgr`: the image the request sent. Boxes in its pixels; instance masks, where the
// answer has them, tinted in the box's colour.
cv::Mat DrawDetections(const cv::Mat& bgr, const care::vision::v1::DetectResponse& response);

// `mask`: the response's decoded mask (class per pixel, the image's size).
cv::Mat DrawSegmentation(const cv::Mat& bgr, const cv::Mat& mask, const care::vision::v1::SegmentResponse& response);

}  // namespace careserve
