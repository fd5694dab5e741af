// Classification answers: softmax over a row of logits, then the top-k classes.
#pragma once

#include <string>
#include <vector>

namespace careserve {

struct ClassScore {
  int index;
  float score;  // softmax probability
};

// The `k` most probable classes of `logits` (length `num_classes`), most probable first;
// equal scores in class order. 1 <= k <= num_classes.
std::vector<ClassScore> SoftmaxTopK(const float* logits, int num_classes, int k);

// The probability of every class, in class order; the same values SoftmaxTopK gives.
std::vector<float> Softmax(const float* logits, int num_classes);

}  // namespace careserve
