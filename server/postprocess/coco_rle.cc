#include "server/postprocess/coco_rle.h"

#include <cstdint>

namespace careserve {

std::string EncodeRleCounts(const std::vector<uint32_t>& runs) {
  std::string out;
  for (size_t i = 0; i < runs.size(); ++i) {
    // From the third run on, the difference to the run two before (same bit), which is small.
    int64_t x = static_cast<int64_t>(runs[i]) - (i > 2 ? static_cast<int64_t>(runs[i - 2]) : 0);
    bool more = true;
    while (more) {
      int64_t c = x & 0x1f;
      x >>= 5;  // arithmetic: a negative difference ends in all ones
      more = (c & 0x10) ? x != -1 : x != 0;
      if (more) c |= 0x20;
      out.push_back(static_cast<char>(c + 48));
    }
  }
  return out;
}

bool DecodeRleCounts(const std::string& counts, std::vector<uint32_t>* runs) {
  runs->clear();
  size_t p = 0;
  while (p < counts.size()) {
    int64_t x = 0;
    int k = 0;
    bool more = true;
    int64_t c = 0;
    while (more) {
      if (p >= counts.size() || k > 12) return false;
      c = static_cast<unsigned char>(counts[p]) - 48;
      if (c < 0 || c > 63) return false;
      x |= (c & 0x1f) << (5 * k);
      more = (c & 0x20) != 0;
      ++p;
      ++k;
    }
    if (c & 0x10) x |= -(int64_t{1} << (5 * k));
    if (runs->size() > 2) x += (*runs)[runs->size() - 2];
    if (x < 0 || x > UINT32_MAX) return false;
    runs->push_back(static_cast<uint32_t>(x));
  }
  return true;
}

}  // namespace careserve
