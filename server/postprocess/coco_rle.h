// COCO's compressed run-length encoding of binary masks, the string form that
// pycocotools' mask.encode writes and mask.decode reads. Shared by the server (which
// encodes instance masks) and the clients (which draw them).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace careserve {

// Run lengths (zeros first, column-major pixels) as COCO's string (rleToString).
std::string EncodeRleCounts(const std::vector<uint32_t>& runs);
// Its inverse; false on a malformed string.
bool DecodeRleCounts(const std::string& counts, std::vector<uint32_t>* runs);

}  // namespace careserve
