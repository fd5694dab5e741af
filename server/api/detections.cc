#include "server/api/detections.h"

#include "absl/strings/str_cat.h"

namespace careserve {

absl::StatusOr<ImageDetections> SelectImageDetections(const ModelSpec& spec, const RowOutputs& outputs,
                                                      const ResizedImage& image, const DetectOptions& options,
                                                      bool paste_masks) {
  const bool instances = spec.task == Task::kInstanceSegmentation;
  const int64_t k = outputs[1].shape[0];
  for (int64_t i = 0; i < k; ++i) {
    const int64_t label = outputs[2].i64[i];
    if ((label < 0 && !instances) || label >= spec.num_classes) {
      return absl::InternalError(absl::StrCat("model \"", spec.name, "\" produced class ", label, ", outside [0, ",
                                              spec.num_classes, ")"));
    }
  }
  const LetterboxGeometry geometry{image.scale_x, static_cast<float>(image.width), static_cast<float>(image.height),
                                   image.source_width, image.source_height};
  ImageDetections answer;
  answer.boxes = SelectDetections(outputs[0].f32.data(), outputs[1].f32.data(), outputs[2].i64.data(), k, options,
                                  geometry);
  if (instances && paste_masks) {
    const int m = static_cast<int>(outputs[3].shape[1]);
    answer.masks.reserve(answer.boxes.size());
    for (const BoxDetection& d : answer.boxes) {
      answer.masks.push_back(PasteMask(outputs[3].f32.data() + static_cast<int64_t>(d.index) * m * m, m, d,
                                       image.source_width, image.source_height));
    }
  }
  return answer;
}

}  // namespace careserve
