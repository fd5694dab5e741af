#include "server/postprocess/classify.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace careserve {

std::vector<ClassScore> SoftmaxTopK(const float* logits, int num_classes, int k) {
  k = std::clamp(k, 1, num_classes);
  std::vector<int> order(num_classes);
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + k, order.end(), [logits](int a, int b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  });
  // Softmax in double, shifted by the maximum: exact enough for any logit range.
  const double max_logit = logits[order[0]];
  double sum = 0.0;
  for (int i = 0; i < num_classes; ++i) sum += std::exp(static_cast<double>(logits[i]) - max_logit);
  std::vector<ClassScore> top(k);
  for (int i = 0; i < k; ++i) {
    top[i] = {order[i], static_cast<float>(std::exp(static_cast<double>(logits[order[i]]) - max_logit) / sum)};
  }
  return top;
}

std::vector<float> Softmax(const float* logits, int num_classes) {
  const double max_logit = *std::max_element(logits, logits + num_classes);
  double sum = 0.0;
  for (int i = 0; i < num_classes; ++i) sum += std::exp(static_cast<double>(logits[i]) - max_logit);
  std::vector<float> probabilities(num_classes);
  for (int i = 0; i < num_classes; ++i) {
    probabilities[i] = static_cast<float>(std::exp(static_cast<double>(logits[i]) - max_logit) / sum);
  }
  return probabilities;
}

}  // namespace careserve
